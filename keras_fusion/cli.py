"""The `keras-fusion` command (also `python -m keras_fusion`)."""

import argparse
import time


def main(argv=None):
    from keras_fusion import demo

    parser = argparse.ArgumentParser(
        prog="keras-fusion",
        description="keras_fusion: Keras 3 layers for feature fusion.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser(
        "demo",
        help="train and export models built from keras_fusion's layers",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo_parser.add_argument(
        "--output",
        default="keras_fusion_demo",
        help="directory for the artifacts (default: ./keras_fusion_demo)",
    )
    demo_parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run (under a minute) that exercises every step",
    )
    args = parser.parse_args(argv)
    try:
        demo.check_backend()
        output = demo.check_output_dir(args.output)
    except ValueError as error:
        demo_parser.exit(2, f"keras-fusion demo: error: {error}\n")
    start = time.perf_counter()
    demo.run(output, quick=args.quick)
    print(f"\nDemo finished in {time.perf_counter() - start:.0f} s")
    return 0
