"""Step 5: the summary table and where each artifact was written."""

import os

from keras_fusion.demo.export import EXPORTS


def print_summary(rows, output):
    print("\nSummary")
    header = ("task", "metric", "value", "time s")
    table = [
        (task, metric, f"{value:.4g}", f"{seconds:.1f}")
        for task, metric, value, seconds in rows
    ]
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(4)]
    for row in [header, *table]:
        print(
            "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
        )
    print("\nArtifacts")
    print(f"  {os.path.join(output, 'unet_predictions.png')}")
    for _, filename, _, _ in EXPORTS:
        print(f"  {os.path.join(output, filename)}")
