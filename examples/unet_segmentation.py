"""Train a small valid-convolution U-Net built with CropAndConcat.

Prints the spatial size at every level of the paper's 572x572 U-Net, then
trains a narrowed U-Net to segment bright discs in noisy images that the
script generates, and reports pixel accuracy and IoU on held-out images.

    python examples/unet_segmentation.py [--epochs N] [--samples N]
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_fusion.models import UNet  # noqa: E402
from keras_fusion.models import unet_level_sizes  # noqa: E402
from keras_fusion.ops import center_crop  # noqa: E402


def make_discs(num_images, size, seed):
    """Noisy images with 1-3 bright discs, and their foreground masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.empty((num_images, size, size, 1), "float32")
    masks = np.zeros((num_images, size, size), "int32")
    for i in range(num_images):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.2, 0.8, 2) * size
            radius = rng.uniform(0.08, 0.2) * size
            masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = 1
        noise = rng.normal(0.0, 0.35, (size, size))
        images[i, :, :, 0] = 0.6 * masks[i] + noise
    return images, masks


def print_paper_sizes():
    sizes = unet_level_sizes(572, depth=4)
    print("U-Net (Ronneberger et al. 2015) spatial sizes for a 572x572 input:")
    for level, (size_in, size_out) in enumerate(sizes["encoder"]):
        print(f"  encoder level {level}: {size_in} -> {size_out}")
    top, bottom = sizes["bottleneck"]
    print(f"  bottleneck:      {top} -> {bottom}")
    for (up, out), (crop_from, crop_to) in zip(
        sizes["decoder"], sizes["crop"], strict=True
    ):
        print(
            f"  decoder: up-conv to {up}, skip cropped {crop_from} -> "
            f"{crop_to}, convolutions -> {out}"
        )
    print(f"  output: {sizes['output']}x{sizes['output']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=192)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    print_paper_sizes()

    size = 132
    model = UNet(input_shape=(size, size, 1), depth=2, filters=8)
    out = model.output_shape[1]
    print(f"\nTraining a depth-2 U-Net: {size}x{size} input -> {out}x{out}")
    images, masks = make_discs(args.samples + 32, size, seed=0)
    # The valid convolutions predict the centre of the input only.
    masks = np.asarray(center_crop(masks[..., None], (out, out)))[..., 0]
    split = args.samples
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(images[:split], masks[:split], batch_size=16, epochs=args.epochs)
    seconds = time.perf_counter() - start
    predicted = np.argmax(model.predict(images[split:], verbose=0), axis=-1)
    truth = masks[split:]
    accuracy = float(np.mean(predicted == truth))
    union = np.logical_or(predicted == 1, truth == 1).sum()
    iou = float(np.logical_and(predicted == 1, truth == 1).sum() / union)
    print(f"\nHeld-out pixel accuracy: {accuracy:.3f}")
    print(f"Held-out foreground IoU: {iou:.3f}")
    print(f"Training time: {seconds:.1f} s")


if __name__ == "__main__":
    main()
