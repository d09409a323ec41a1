"""Weights of the DenseNet builders: `keras.applications`' ImageNet files,
Keras weight files, and the copy by layer name they all go through.

Our DenseNets name their layers as `keras.applications.densenet` does, so
that a `keras.applications` DenseNet's weights map one to one:
`conv2_block1_0_bn` to sublayer `block1_0_bn` of our dense block `conv2`,
`pool2_conv` to sublayer `conv` of our transition `pool2`, `conv1_bn` to
sublayer `bn` of our stem `conv1`, and the stem's convolution, final
BatchNorm and classifier to the layers of the same name. Our layers are the
same whatever `recompute` is, so a Keras 3 file of one of our DenseNets
loads into any other of the same blocks and top.
"""

import contextlib
import os
import zipfile

import keras
import numpy as np

from keras_fusion.layers._densenet_stem import DenseNetStem
from keras_fusion.layers.dense_block import MemoryEfficientDenseBlock
from keras_fusion.layers.transition_block import TransitionBlock

_WEIGHTS_FORMS = (
    "None, 'imagenet', or the path to a weights file: a Keras `.weights.h5` "
    "or `.keras` file of this model or of the keras.applications DenseNet "
    "of the same depth and top, or a legacy HDF5 file (`.h5`, `.hdf5`) of "
    "that keras.applications model (the files it downloads) or of this one"
)
_IMAGENET_BLOCKS = {
    (6, 12, 24, 16): "DenseNet121",
    (6, 12, 32, 32): "DenseNet169",
    (6, 12, 48, 32): "DenseNet201",
}
# The ImageNet weights keras.applications.densenet downloads (its file
# names and hashes): legacy HDF5 files keyed by layer name.
_IMAGENET_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
)
_IMAGENET_FILES = {
    ("DenseNet121", True): "9d60b8095a5708f2dcce2bca79d332c7",
    ("DenseNet121", False): "30ee3e1110167f948a6b9946edeeb738",
    ("DenseNet169", True): "d699b8f76981ab1b30698df4c175e90b",
    ("DenseNet169", False): "b8c4d4c20dd625c148057b9ff1c1176b",
    ("DenseNet201", True): "1ceb130c1ea1b78c3bf6114dbdfd8807",
    ("DenseNet201", False): "c13680b51ded0fb44dff2d8f86ac8bb1",
}


def copy_keras_application_weights(source, target):
    """Copy a `keras.applications` DenseNet's weights into ours.

    Every weight is copied by layer name: `conv2_block1_0_bn` to sublayer
    `block1_0_bn` of our dense block `conv2`, `pool2_conv` to sublayer
    `conv` of our transition `pool2`, `conv1_bn` to sublayer `bn` of our
    stem `conv1`, and the stem's convolution, final BatchNorm and
    classifier to the layers of the same name.

    Example:

    >>> import keras
    >>> import numpy as np
    >>> from keras_fusion.models import DenseNet121
    >>> from keras_fusion.models import copy_keras_application_weights
    >>> kwargs = {"weights": None, "input_shape": (64, 64, 3), "classes": 10}
    >>> source = keras.applications.DenseNet121(**kwargs)
    >>> target = DenseNet121(**kwargs)
    >>> copy_keras_application_weights(source, target)
    >>> x = np.random.rand(2, 64, 64, 3).astype("float32")
    >>> np.testing.assert_allclose(
    ...     keras.ops.convert_to_numpy(target(x)),
    ...     keras.ops.convert_to_numpy(source(x)),
    ...     atol=1e-5,
    ... )

    Args:
        source: a `keras.applications.DenseNet121`, `DenseNet169` or
            `DenseNet201` model.
        target: a model built by `keras_fusion.models.DenseNet` with the
            same blocks, input channels and top.

    Raises:
        ValueError: naming the first weight of `target` with no
            counterpart of the same shape in `source`.
    """
    _copy_weights_by_name(
        {layer.name: layer.get_weights() for layer in source.layers},
        target,
        f"a model named {source.name!r}",
    )


def check_weights(
    weights, blocks, growth_rate, include_top, classes, input_shape, data_format
):
    """Check a DenseNet builder's `weights` against its other arguments."""
    imagenet = weights == "imagenet"
    if imagenet and (blocks not in _IMAGENET_BLOCKS or growth_rate != 32):
        raise ValueError(
            "`weights='imagenet'` exists for DenseNet-121, -169 and -201 "
            f"only. Received: weights='imagenet' with blocks={blocks}, "
            f"growth_rate={growth_rate}"
        )
    if imagenet and include_top and classes != 1000:
        raise ValueError(
            "`weights='imagenet'` with `include_top=True` has 1000 classes. "
            f"Received: classes={classes}"
        )
    if weights is not None and not imagenet:
        if not str(weights).endswith((".weights.h5", ".keras", ".h5", ".hdf5")):
            raise ValueError(
                f"`weights` should be {_WEIGHTS_FORMS}. Received: "
                f"weights={weights!r}"
            )
        if not os.path.isfile(str(weights)):
            raise ValueError(
                f"`weights` should be {_WEIGHTS_FORMS}. Received: "
                f"weights={weights!r} (no such file)"
            )
    if not imagenet:
        return
    channels = input_shape[0 if data_format == "channels_first" else -1]
    if channels != 3:
        raise ValueError(
            "`weights='imagenet'` needs 3 input channels. "
            f"Received: input_shape={input_shape!r}"
        )
    default = (
        (3, 224, 224) if data_format == "channels_first" else (224, 224, 3)
    )
    if include_top and input_shape != default:
        raise ValueError(
            f"`weights='imagenet'` with `include_top=True` needs "
            f"input_shape={default}. Received: input_shape={input_shape!r}"
        )


def load_weights(model, weights, blocks, include_top, classes, data_format):
    """Load `weights` (checked by `check_weights`) into `model`, a DenseNet
    built with these `blocks`, `include_top`, `classes` and
    `data_format`."""
    if weights == "imagenet":
        path = _download_imagenet_weights(blocks, include_top)
        _copy_weights_by_name(
            _legacy_h5_weights(path), model, f"weights={weights!r}"
        )
        return
    path = str(weights)
    if path.endswith((".weights.h5", ".keras")):
        _load_keras_weights_file(
            model, path, blocks, include_top, classes, data_format
        )
        return
    legacy = _legacy_h5_weights(path)
    if legacy is not None:
        _copy_weights_by_name(legacy, model, f"weights={weights!r}")
        return
    # A legacy HDF5 file of this model (`save_weights("x.h5")` in Keras 2).
    model.load_weights(path)


def _copy_weights_by_name(weights, target, source):
    """Copy `weights` ({keras.applications layer name: arrays}) into
    `target`; `source` describes where they come from, for errors."""
    for layer in target.layers:
        for ours, source_name in _weight_sources(layer):
            if source_name not in weights:
                raise ValueError(
                    f"The source has no layer {source_name!r} for "
                    f"{layer.name}/{ours.name}: it should be the "
                    "keras.applications DenseNet of the same depth. "
                    f"Received: {source}"
                )
            values = weights[source_name]
            expected = [tuple(w.shape) for w in ours.get_weights()]
            received = [tuple(v.shape) for v in values]
            if expected != received:
                raise ValueError(
                    f"Weights of {source_name!r} have shapes {received}, "
                    f"{layer.name}/{ours.name} expects {expected}: the "
                    "source should have the same input channels and "
                    f"classes. Received: {source}"
                )
            ours.set_weights(values)


def _weight_sources(layer):
    """(our layer with weights, keras.applications layer name) pairs."""
    if isinstance(layer, MemoryEfficientDenseBlock):
        return [
            (sublayer, f"{layer.name}_{sublayer.name}")
            for parts in layer.dense_layers
            for sublayer in parts.layers()
            if sublayer.weights
        ]
    if isinstance(layer, TransitionBlock):
        return [
            (layer.bn, f"{layer.name}_bn"),
            (layer.conv, f"{layer.name}_conv"),
        ]
    if isinstance(layer, DenseNetStem):
        return [(layer.bn, f"{layer.name}_bn")]
    if layer.weights:
        return [(layer, layer.name)]
    return []


def _load_keras_weights_file(
    model, path, blocks, include_top, classes, data_format
):
    """Load a Keras 3 `.weights.h5` or `.keras` file: of this model, or of
    the `keras.applications` DenseNet of the same depth and top."""
    layer_keys = _keras_file_layer_keys(path)
    ours = any(k.startswith("memory_efficient_dense_block") for k in layer_keys)
    if ours and not any(k.startswith("dense_net_stem") for k in layer_keys):
        raise ValueError(
            "`weights` is a weights file of a DenseNet that an earlier "
            "keras_fusion built with `recompute=False`, whose stem was the "
            "top-level layers `conv1_bn`, `conv1_relu` and `pool1`; the stem "
            "is now one layer, `conv1`, whatever `recompute` is. Load the "
            "file with that version into a model built with "
            "`recompute=True`, whose files load here, and save that model's "
            f"weights. Received: weights={path!r}"
        )
    if ours or blocks not in _IMAGENET_BLOCKS:
        model.load_weights(path)
        return
    # Keras 3 files are keyed by the model's structure, not by layer names:
    # a keras.applications model's file loads into that model only, and is
    # mapped from there.
    name = _IMAGENET_BLOCKS[blocks]
    if keras.config.image_data_format() != "channels_last":
        raise ValueError(
            f"`weights` is a file of keras.applications.{name}, which can "
            "only be read by building that model, and keras.applications "
            "builds DenseNet only with keras.config.image_data_format() == "
            f"'channels_last' (it is {keras.config.image_data_format()!r}). "
            "Set that format, or convert the model with "
            f"`from_keras_application`. Received: weights={path!r}"
        )
    input_shape = tuple(model.input_shape[1:])
    if data_format == "channels_first":
        input_shape = (*input_shape[1:], input_shape[0])
    try:
        source = getattr(keras.applications, name)(
            include_top=include_top,
            weights=path,
            input_shape=input_shape,
            classes=classes,
            classifier_activation=None,
        )
    except ValueError as error:
        raise ValueError(
            f"`weights` should be a weights file of this model or of "
            f"keras.applications.{name} with the same top. Received: "
            f"weights={path!r}, which fits neither"
        ) from error
    copy_keras_application_weights(source, model)


def _keras_file_layer_keys(path):
    """The keys of a Keras 3 `.weights.h5` or `.keras` file's top-level
    layers: Keras 3 files key each layer's weights by its class
    (`layers/memory_efficient_dense_block_1/...`)."""
    import h5py

    try:
        with contextlib.ExitStack() as stack:
            weights = path
            if path.endswith(".keras"):
                archive = stack.enter_context(zipfile.ZipFile(path))
                weights = stack.enter_context(archive.open("model.weights.h5"))
            layers = stack.enter_context(h5py.File(weights, "r")).get("layers")
            return [] if layers is None else list(layers)
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"`weights` should be {_WEIGHTS_FORMS}. Received: "
            f"weights={path!r}, which is not a Keras 3 weights file "
            f"({error})"
        ) from error


def _download_imagenet_weights(blocks, include_top):
    """The path of keras.applications' ImageNet weights file for `blocks`,
    downloaded by Keras into its cache on first use."""
    name = _IMAGENET_BLOCKS[blocks]
    file_name = (
        f"{name.lower()}_weights_tf_dim_ordering_tf_kernels"
        f"{'' if include_top else '_notop'}.h5"
    )
    return keras.utils.get_file(
        file_name,
        _IMAGENET_WEIGHTS_URL + file_name,
        cache_subdir="models",
        file_hash=_IMAGENET_FILES[(name, include_top)],
    )


def _legacy_h5_weights(path):
    """{layer name: arrays} of a legacy HDF5 weights file keyed by layer
    name, as keras.applications' downloads are, if `path` is one of a
    keras.applications DenseNet; `None` for another HDF5 file.

    Names are those of Keras 3's keras.applications: the Keras 2 model that
    wrote the downloaded files named its stem `conv1/conv` and `conv1/bn`
    where Keras 3 names them `conv1_conv` and `conv1_bn`.
    """
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(
            f"`weights` should be {_WEIGHTS_FORMS}. Received: "
            f"weights={path!r}, which is not an HDF5 file ({error})"
        ) from error
    with f:
        group = f["model_weights"] if "model_weights" in f else f
        if "conv2_block1_0_bn" not in group:
            return None
        weights = {}
        for layer_name in group.attrs["layer_names"]:
            layer = group[_text(layer_name)]
            weights[_text(layer_name).replace("/", "_")] = [
                np.asarray(layer[_text(weight_name)])
                for weight_name in layer.attrs["weight_names"]
            ]
        return weights


def _text(name):
    return name.decode("utf8") if isinstance(name, bytes) else name
