import contextlib
import os

import h5py
import keras
import numpy as np
import pytest
from keras.src.backend.common import dtypes as keras_dtypes

from keras_fusion import MemoryEfficientDenseBlock
from keras_fusion import TransitionBlock
from keras_fusion.layers._densenet_stem import DenseNetStem
from keras_fusion.models import DenseNet
from keras_fusion.models import DenseNet121
from keras_fusion.models import DenseNet169
from keras_fusion.models import DenseNet201
from keras_fusion.models import DenseNet264
from keras_fusion.models import DenseNetBC
from keras_fusion.models import copy_keras_application_weights
from keras_fusion.models import from_keras_application
from tests.backend_utils import BACKEND
from tests.backend_utils import BUILT_THE_SAME_ON_EVERY_BACKEND
from tests.backend_utils import FULL_SIZE_ON_TENSORFLOW
from tests.backend_utils import TF_KERNEL
from tests.backend_utils import record_recomputations
from tests.backend_utils import tensorflow_only
from tests.backend_utils import to_numpy
from tests.backend_utils import value_and_grads
from tests.layer_test_case import EXPORT_FORMATS
from tests.layer_test_case import check_distinct_initial_kernels
from tests.layer_test_case import export_limit
from tests.layer_test_case import run_model_export_test
from tests.layer_test_case import skip_unless_channels_first_convolution_runs
from tests.models.sublayers import batch_normalizations

SHAPE = (32, 32, 3)
# The stem's names in the Keras 2 keras.applications that wrote the ImageNet
# files it downloads; Keras 3 names these layers `conv1_conv` ...
KERAS_2_NAMES = {
    "conv1_conv": "conv1/conv",
    "conv1_bn": "conv1/bn",
    "conv1_relu": "conv1/relu",
}


def _randomized(model, seed=0):
    """`model` with random weights everywhere, BN statistics included."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if weight.path.endswith(("gamma", "moving_variance")):
            value = rng.uniform(0.5, 1.5, weight.shape)
        else:
            value = rng.normal(0.0, 0.05, weight.shape)
        weight.assign(value.astype("float32"))
    return model


@pytest.fixture(scope="module")
def source():
    """keras.applications.DenseNet121 with random weights, 32x32 inputs."""
    model = keras.applications.DenseNet121(
        weights=None, input_shape=SHAPE, classes=10
    )
    return _randomized(model)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).normal(size=(4, *SHAPE)).astype("float32")


def _class_weighted_sum(y):
    return keras.ops.sum(y * keras.ops.arange(10, dtype=y.dtype))


def _training_step(model, x):
    y, grads = value_and_grads(model, x, loss_fn=_class_weighted_sum)
    return y, grads[1:]


@contextlib.contextmanager
def _float64():
    """Models built and run in this context compute in float64 throughout.

    On JAX and PyTorch, Keras promotes float64 with float32 to float32 (as
    JAX does without x64), so `keras.layers.BatchNormalization`, and our
    kernels with it, would normalize float64 inputs in float32; JAX also
    needs x64 on to hold float64 at all.
    """
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    with contextlib.ExitStack() as stack:
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.setitem(keras_dtypes.BIT64_TO_BIT32_DTYPE, "float64", "float64")
        if BACKEND == "jax":
            import jax

            stack.enter_context(jax.enable_x64(True))
        # Both: Keras fixes its default dtype policy from floatx when it
        # first needs one.
        keras.config.set_floatx("float64")
        keras.config.set_dtype_policy("float64")
        try:
            yield
        finally:
            keras.config.set_floatx(floatx)
            keras.config.set_dtype_policy(policy)


@pytest.fixture(scope="module")
def float64_training_step(source):
    """`source` in float64, and its training step on 16 images: `(model,
    inputs, outputs, gradients)`."""
    images = np.random.default_rng(1).normal(size=(16, *SHAPE))
    with _float64():
        model = keras.applications.DenseNet121(
            weights=None, input_shape=SHAPE, classes=10
        )
        model.set_weights(source.get_weights())
        return model, images, *_training_step(model, images)


@BUILT_THE_SAME_ON_EVERY_BACKEND
@pytest.mark.parametrize(
    "ours, theirs, trainable",
    [
        (DenseNet121, keras.applications.DenseNet121, 7_978_856),
        (DenseNet169, keras.applications.DenseNet169, None),
        (DenseNet201, keras.applications.DenseNet201, None),
    ],
)
def test_parameter_counts_equal_keras_applications(ours, theirs, trainable):
    model = ours(weights=None)
    reference = theirs(weights=None)
    assert model.count_params() == reference.count_params()
    count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    expected = sum(int(np.prod(w.shape)) for w in reference.trainable_weights)
    assert count == expected
    if trainable is not None:
        assert count == trainable


@BUILT_THE_SAME_ON_EVERY_BACKEND
def test_densenet264_has_the_papers_blocks():
    model = DenseNet264(weights=None, input_shape=SHAPE, classes=10)
    blocks = [model.get_layer(f"conv{i}").num_layers for i in range(2, 6)]
    assert blocks == [6, 12, 64, 48]
    assert model.get_layer("conv5").growth_rate == 32


@FULL_SIZE_ON_TENSORFLOW
@pytest.mark.parametrize("recompute", [True, "concat_bn", False])
def test_converted_model_predicts_as_keras_applications(
    source, images, recompute
):
    ours = from_keras_application(source, recompute=recompute)
    np.testing.assert_allclose(
        to_numpy(ours(images, training=False)),
        to_numpy(source(images, training=False)),
        rtol=0,
        atol=1e-5,
    )


@FULL_SIZE_ON_TENSORFLOW
@pytest.mark.parametrize("recompute", [True, "concat_bn"])
def test_converted_model_trains_as_keras_applications(
    float64_training_step, recompute
):
    # In float64, where the two models agree to 1e-14 of the largest
    # gradient (outputs to 7e-15; Keras's plain layers to 2e-15). In float32
    # they can differ by 1e-2 of it without either being wrong: two of this
    # step's 5.1 million ReLU inputs lie within float32 rounding of zero
    # (-5e-8 and -3e-6 where float64 gives 5e-7 and 3e-6) and take the
    # other branch, which moves the gradient of every weight before them.
    # Which inputs flip follows the last bits of the forward pass, so how
    # XLA compiled it: under JAX on an AMX CPU keras.applications' own
    # float32 gradient is 7.0e-3 of the largest gradient from its float64
    # one, the recomputing model's 5.2e-3, in other places; with the
    # images moved by one float32 ulp the two agree to 1.6e-5. A float32
    # computation anywhere (Keras's float32 BatchNorm in a float64 model)
    # shows at 4e-6, 40,000 times this tolerance.
    source, images, y_theirs, g_theirs = float64_training_step
    tolerance = 1e-10
    with _float64():
        ours = from_keras_application(source, recompute=recompute)
        y_ours, g_ours = _training_step(ours, images)
    np.testing.assert_allclose(y_ours, y_theirs, rtol=0, atol=tolerance)
    paths = [w.path.replace("/", "_") for w in ours.trainable_weights]
    assert paths == [w.path.replace("/", "_") for w in source.trainable_weights]
    scale = max(np.max(np.abs(g)) for g in g_theirs)
    for mine, theirs, path in zip(g_ours, g_theirs, paths, strict=True):
        assert mine.dtype == theirs.dtype == "float64", path
        np.testing.assert_allclose(
            mine, theirs, rtol=0, atol=tolerance * scale, err_msg=path
        )


def test_keras_applications_weights_file_loads_through_the_mapping(
    source, images, tmp_path
):
    path = os.path.join(tmp_path, "densenet121.weights.h5")
    source.save_weights(path)
    ours = DenseNet121(weights=path, input_shape=SHAPE, classes=10)
    np.testing.assert_allclose(
        to_numpy(ours(images)), to_numpy(source(images)), atol=1e-5
    )


def _write_legacy_h5(model, path, names=None):
    """`model`'s weights in the layout Keras 2's `save_weights("x.h5")`
    wrote, that of the files keras.applications downloads.

    The root's `layer_names` attribute lists the layers; each layer's group
    lists its `weight_names` (`{layer}/{weight}:0`, trainable weights first)
    and holds each weight under its name. `names` maps a layer's name to
    the one written (`KERAS_2_NAMES`).
    """
    names = names or {}
    with h5py.File(path, "w") as f:
        layer_names = [
            names.get(layer.name, layer.name) for layer in model.layers
        ]
        f.attrs["layer_names"] = [name.encode("utf8") for name in layer_names]
        for layer, layer_name in zip(model.layers, layer_names, strict=True):
            group = f.create_group(layer_name)
            weights = layer.trainable_weights + layer.non_trainable_weights
            weight_names = [f"{layer_name}/{w.name}:0" for w in weights]
            group.attrs["weight_names"] = [
                name.encode("utf8") for name in weight_names
            ]
            for name, weight in zip(weight_names, weights, strict=True):
                group[name] = to_numpy(weight)


@pytest.mark.parametrize(
    "write",
    [
        lambda model, path: _write_legacy_h5(model, path, KERAS_2_NAMES),
        _write_legacy_h5,
        lambda model, path: model.save(path),
    ],
    ids=["keras-2-names", "keras-3-names", "keras-3-model-file"],
)
def test_legacy_h5_weights_file_loads_through_the_mapping(
    source, images, tmp_path, write
):
    # The layout of the files keras.applications downloads, with the layer
    # names of the Keras 2 model that wrote them or of Keras 3's; and a
    # whole model saved to `.h5` by Keras 3 (its weights in `model_weights`).
    path = os.path.join(tmp_path, "densenet121_notop.h5")
    notop = keras.applications.DenseNet121(
        weights=None, include_top=False, input_shape=SHAPE
    )
    notop.set_weights(source.get_weights()[:-2])
    write(notop, path)
    ours = DenseNet121(
        weights=path, include_top=False, input_shape=SHAPE, pooling=None
    )
    np.testing.assert_allclose(
        to_numpy(ours(images)), to_numpy(notop(images)), atol=1e-5
    )


def test_imagenet_weights_are_keras_applications_files(
    source, images, tmp_path, monkeypatch
):
    notop = keras.applications.DenseNet121(
        weights=None, include_top=False, input_shape=SHAPE
    )
    notop.set_weights(source.get_weights()[:-2])
    path = os.path.join(tmp_path, "downloaded.h5")
    _write_legacy_h5(notop, path, KERAS_2_NAMES)
    calls = []

    def fake_get_file(fname, origin, **kwargs):
        calls.append((fname, origin, kwargs))
        return path

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    ours = DenseNet121(weights="imagenet", include_top=False, input_shape=SHAPE)
    # keras.applications.DenseNet121's own file, name and hash.
    fname, origin, kwargs = calls[0]
    assert fname == "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert origin.endswith("/keras-applications/densenet/" + fname)
    assert kwargs == {
        "cache_subdir": "models",
        "file_hash": "30ee3e1110167f948a6b9946edeeb738",
    }
    np.testing.assert_allclose(
        to_numpy(ours(images)), to_numpy(notop(images)), atol=1e-5
    )


def test_weights_load_without_changing_the_image_data_format(
    source, images, tmp_path, monkeypatch
):
    # A user whose Keras is configured channels_first loads a
    # keras.applications file into a channels_last model: keras.applications
    # builds DenseNet in channels_last only, so this must not go through it.
    path = os.path.join(tmp_path, "densenet121.h5")
    _write_legacy_h5(source, path)

    def refuse(value):
        raise AssertionError(f"set_image_data_format({value!r}) was called")

    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        monkeypatch.setattr(keras.config, "set_image_data_format", refuse)
        monkeypatch.setattr(keras.backend, "set_image_data_format", refuse)
        ours = DenseNet121(
            weights=path,
            input_shape=SHAPE,
            classes=10,
            data_format="channels_last",
        )
        assert keras.config.image_data_format() == "channels_first"
    finally:
        monkeypatch.undo()
        keras.config.set_image_data_format(previous)
    np.testing.assert_allclose(
        to_numpy(ours(images)), to_numpy(source(images)), atol=1e-5
    )


def test_keras_files_of_either_model_load(source, images, tmp_path):
    theirs = os.path.join(tmp_path, "keras_applications.keras")
    source.save(theirs)
    loaded = DenseNet121(weights=theirs, input_shape=SHAPE, classes=10)
    np.testing.assert_allclose(
        to_numpy(loaded(images)), to_numpy(source(images)), atol=1e-5
    )
    ours = os.path.join(tmp_path, "ours.keras")
    from_keras_application(source).save(ours)
    reloaded = DenseNet121(weights=ours, input_shape=SHAPE, classes=10)
    np.testing.assert_allclose(
        to_numpy(reloaded(images)), to_numpy(source(images)), atol=1e-5
    )


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("weights.bin", b"", "`weights` should be None, 'imagenet'.*\\.bin"),
        ("weights.h5", b"not hdf5", "which is not an HDF5 file"),
    ],
    ids=["unknown-extension", "not-hdf5"],
)
def test_densenet_errors_if_weights_file_has_another_form(
    name, content, message, tmp_path
):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        DenseNet121(weights=str(path), input_shape=SHAPE, classes=10)
    assert ".weights.h5" in str(info.value) and ".keras" in str(info.value)


def test_own_weights_file_round_trips(source, images, tmp_path):
    ours = from_keras_application(source)
    path = os.path.join(tmp_path, "ours.weights.h5")
    ours.save_weights(path)
    reloaded = DenseNet121(weights=path, input_shape=SHAPE, classes=10)
    np.testing.assert_array_equal(
        to_numpy(reloaded(images)), to_numpy(ours(images))
    )


@EXPORT_FORMATS
@pytest.mark.slow
def test_converted_model_export_runs_without_keras_fusion(
    export_format, source, images, tmp_path
):
    # DenseNet-121 converted from keras.applications (32x32 inputs, fixed
    # as keras.applications builds it): its export gives the source
    # model's predictions.
    ours = from_keras_application(source)
    np.testing.assert_allclose(
        ours.predict(images, verbose=0),
        source.predict(images, verbose=0),
        rtol=0,
        atol=1e-5,
    )
    run_model_export_test(
        ours,
        [images],
        tmp_path,
        export_format,
        atol=1e-5,
        fails_with=export_limit(export_format, max_pooling=True),
    )


@EXPORT_FORMATS
@pytest.mark.parametrize("recompute", [False, True])
def test_densenet_bc_export_runs_without_keras_fusion(
    export_format, recompute, tmp_path
):
    # DenseNet-BC (the CIFAR stem: no max pooling) with `None` spatial
    # sizes, run at two sizes.
    keras.utils.set_random_seed(0)
    model = DenseNetBC(
        depth=16,
        growth_rate=4,
        input_shape=(None, None, 3),
        classes=10,
        recompute=recompute,
    )
    rng = np.random.default_rng(3)
    run_model_export_test(
        model,
        [
            rng.normal(size=s).astype("float32")
            for s in [(2, 32, 32, 3), (1, 24, 40, 3)]
        ],
        tmp_path,
        export_format,
        atol=1e-5,
    )


@FULL_SIZE_ON_TENSORFLOW
def test_channels_first_model_matches_channels_last(source, images):
    skip_unless_channels_first_convolution_runs()
    ours = from_keras_application(source)
    first = DenseNet121(
        weights=None,
        input_shape=(3, *SHAPE[:2]),
        classes=10,
        data_format="channels_first",
    )
    first.set_weights(ours.get_weights())
    np.testing.assert_allclose(
        to_numpy(first(np.transpose(images, (0, 3, 1, 2)))),
        to_numpy(ours(images)),
        atol=1e-5,
    )


@BUILT_THE_SAME_ON_EVERY_BACKEND
@pytest.mark.parametrize(
    "builder, kwargs",
    [
        (DenseNet121, {"weights": None, "input_shape": SHAPE}),
        (DenseNet264, {"input_shape": SHAPE}),
        (DenseNetBC, {"depth": 40}),
        (DenseNetBC, {"depth": 40, "bottleneck": False}),
    ],
    ids=["densenet121", "densenet264", "densenet-bc-40", "densenet-c-40"],
)
def test_fresh_models_start_with_distinct_kernels(builder, kwargs):
    # As keras.applications, which gives every convolution its own
    # initializer: a shared one would start same-shaped kernels equal.
    keras.utils.set_random_seed(0)
    check_distinct_initial_kernels(builder(**kwargs))


def _small_densenet(recompute):
    return DenseNet(
        (1, 2, 1, 1),
        weights=None,
        input_shape=SHAPE,
        classes=10,
        growth_rate=8,
        recompute=recompute,
    )


def _small_densenet_bc(recompute):
    return DenseNetBC(depth=16, growth_rate=4, recompute=recompute)


def _keras_applications_paths(weights):
    """The weights' paths as `keras.applications` names them: our
    sublayers' paths (`pool2/bn/gamma`, `conv1/bn/gamma`) with `_` for `/`
    are its layers' (`pool2_bn/gamma`, `conv1_bn/gamma`) likewise."""
    return [w.path.replace("/", "_") for w in weights]


@pytest.mark.parametrize(
    "build, recompute",
    [
        (_small_densenet, True),
        (_small_densenet, "concat_bn"),
        (_small_densenet_bc, True),
    ],
    ids=["densenet-full", "densenet-concat-bn", "densenet-bc"],
)
def test_recomputing_model_trains_as_the_plain_model(build, recompute):
    # Dense blocks, transitions and (DenseNet) the stem recompute; outputs,
    # gradients and moving statistics are the plain layers' step after
    # step. Both models take the plain model's SGD update, so that their
    # weights stay equal and each step compares the same function.
    keras.utils.set_random_seed(0)
    plain = _randomized(build(False))
    ours = build(recompute)
    ours.set_weights(plain.get_weights())
    assert _keras_applications_paths(ours.weights) == (
        _keras_applications_paths(plain.weights)
    )
    optimizer = keras.optimizers.SGD(0.01)
    rng = np.random.default_rng(2)
    for _ in range(3):
        x = rng.normal(size=(4, *SHAPE)).astype("float32")
        y_plain, g_plain = _training_step(plain, x)
        y_ours, g_ours = _training_step(ours, x)
        np.testing.assert_allclose(y_ours, y_plain, rtol=1e-5, atol=1e-6)
        # To 1e-5 of the largest gradient, in float32: under JAX, XLA
        # compiles the two models' steps differently, which moves these
        # gradients by up to 5e-6 of it (6e-8 for DenseNet-BC), measured on
        # an x86 CPU. A ReLU input within that rounding of zero would take
        # the other branch and move them by about 1e-3: see
        # test_converted_model_trains_as_keras_applications.
        scale = max(np.max(np.abs(g)) for g in g_plain)
        paths = _keras_applications_paths(plain.trainable_weights)
        for mine, reference, path in zip(g_ours, g_plain, paths, strict=True):
            np.testing.assert_allclose(
                mine, reference, rtol=1e-5, atol=1e-5 * scale, err_msg=path
            )
        # Updated once per step: a second update would move them about
        # 1e-2 further.
        for mine, reference in zip(
            ours.non_trainable_weights, plain.non_trainable_weights, strict=True
        ):
            np.testing.assert_allclose(
                to_numpy(mine),
                to_numpy(reference),
                rtol=0,
                atol=1e-6,
                err_msg=reference.path,
            )
        optimizer.apply(
            [keras.ops.convert_to_tensor(g) for g in g_plain],
            plain.trainable_variables,
        )
        ours.set_weights(plain.get_weights())


def test_recompute_switches_the_kernels_not_the_structure():
    # The stem is one layer, `conv1`, whatever `recompute` is (unlike
    # keras.applications' `conv1_bn`, `conv1_relu`, `pool1`), so that
    # weights map one to one; `recompute` switches its kernel and the
    # transitions'.
    plain = _small_densenet(False)
    paths = [w.path for w in plain.weights]
    for recompute, expected in (
        (False, False),
        (True, True),
        ("full", True),
        ("concat_bn", True),
    ):
        ours = _small_densenet(recompute)
        stem = ours.get_layer("conv1")
        assert isinstance(stem, DenseNetStem)
        assert stem.recompute is expected and stem.return_features is True
        assert stem.bn.momentum == 0.99 and stem.bn.epsilon == 1.001e-5
        assert not {"conv1_bn", "conv1_relu", "pool1"} & {
            layer.name for layer in ours.layers
        }
        assert ours.count_params() == plain.count_params()
        assert [w.path for w in ours.weights] == paths
        # The stride-2 feature, keras.applications' `conv1_relu` output.
        assert stem.output[1].shape == (None, 16, 16, 64)
        encoder = keras.Model(ours.input, stem.output[1])
        assert encoder.output_shape == (None, 16, 16, 64)
    for model, expected in (
        (plain, False),
        (ours, True),
        (_small_densenet_bc(False), False),
        (_small_densenet_bc("concat_bn"), True),
    ):
        transitions = [
            layer
            for layer in model.layers
            if isinstance(layer, TransitionBlock)
        ]
        assert transitions
        assert all(layer.recompute is expected for layer in transitions)


def _stride_2_encoder(model, layer_name, index=None):
    """The model from `model`'s input to a layer's output (its output
    `index` when it has several)."""
    output = model.get_layer(layer_name).output
    return keras.Model(model.input, output if index is None else output[index])


@pytest.mark.parametrize("recompute", [True, False])
def test_stride_2_feature_equals_keras_applications_conv1_relu(
    source, images, recompute
):
    # What a U-Net on DenseNet takes as its first skip: the same tensor,
    # and the same gradients when a loss uses it alone (the stem's pooled
    # output then has no gradient).
    ours = _stride_2_encoder(
        from_keras_application(source, recompute=recompute), "conv1", 1
    )
    # A copy: a training step updates moving statistics, and `source` is
    # shared.
    theirs = keras.models.clone_model(_stride_2_encoder(source, "conv1_relu"))
    theirs.set_weights(_stride_2_encoder(source, "conv1_relu").get_weights())
    np.testing.assert_allclose(
        to_numpy(ours(images, training=False)),
        to_numpy(theirs(images, training=False)),
        rtol=0,
        atol=1e-6,
    )
    y_ours, g_ours = value_and_grads(ours, images)
    y_theirs, g_theirs = value_and_grads(theirs, images)
    np.testing.assert_allclose(y_ours, y_theirs, rtol=0, atol=1e-6)
    assert len(g_ours) == len(g_theirs) == 4  # input, kernel, gamma, beta
    for mine, reference in zip(g_ours, g_theirs, strict=True):
        scale = np.max(np.abs(reference))
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("recompute", [True, "concat_bn"])
def test_recomputing_model_with_stride_2_feature_trains_as_the_plain_model(
    recompute,
):
    # A loss on the classifier and on the stride-2 feature, as a U-Net's
    # training sends gradients to both: the feature's gradient joins the
    # pooling's in the recomputing stem's backward pass.
    def with_feature(model):
        return keras.Model(
            model.input, [model.output, model.get_layer("conv1").output[1]]
        )

    def loss(outputs):
        y, features = outputs
        return _class_weighted_sum(y) + keras.ops.sum(
            features * keras.ops.sin(features)
        )

    keras.utils.set_random_seed(0)
    plain = _randomized(_small_densenet(False))
    ours = _small_densenet(recompute)
    ours.set_weights(plain.get_weights())
    x = np.random.default_rng(2).normal(size=(4, *SHAPE)).astype("float32")
    y_plain, g_plain = value_and_grads(with_feature(plain), x, loss)
    y_ours, g_ours = value_and_grads(with_feature(ours), x, loss)
    for mine, reference in zip(y_ours, y_plain, strict=True):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-6)
    paths = ["input"] + [w.path for w in plain.trainable_weights]
    scale = max(np.max(np.abs(g)) for g in g_plain)
    for mine, reference, path in zip(g_ours, g_plain, paths, strict=True):
        np.testing.assert_allclose(
            mine, reference, rtol=1e-5, atol=1e-5 * scale, err_msg=path
        )


@tensorflow_only(TF_KERNEL)
def test_training_step_recomputes_the_stem_and_the_transitions(monkeypatch):
    # Every recomputation of BatchNorm-ReLU goes through the shared
    # function, counted here by the shape of its input.
    recomputed = record_recomputations(monkeypatch)
    model = _small_densenet(True)
    x = np.random.default_rng(3).normal(size=(2, *SHAPE)).astype("float32")
    _training_step(model, x)
    # The stem's input: 64 channels at 16x16; the transitions': 64 + 8,
    # 36 + 2 * 8 and 26 + 8 channels at 8x8, 4x4 and 2x2.
    for shape in [(2, 16, 16, 64), (2, 8, 8, 72), (2, 4, 4, 52), (2, 2, 2, 34)]:
        assert recomputed.count(shape) == 1, (shape, recomputed)


def test_recomputing_model_keras_file_loads(images, tmp_path):
    model = _randomized(_small_densenet(True))
    path = os.path.join(tmp_path, "densenet.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("conv1"), DenseNetStem)
    np.testing.assert_array_equal(
        to_numpy(loaded(images, training=False)),
        to_numpy(model(images, training=False)),
    )


@pytest.mark.parametrize(
    "saved, loaded", [(False, True), (True, False)], ids=["to-ours", "to-plain"]
)
def test_weights_files_load_whatever_recompute_either_model_has(
    images, tmp_path, saved, loaded
):
    # Keras 3 files are keyed by the model's structure, which `recompute`
    # does not change.
    source = _randomized(_small_densenet(saved))
    path = os.path.join(tmp_path, "densenet.weights.h5")
    source.save_weights(path)
    target = DenseNet(
        (1, 2, 1, 1),
        weights=path,
        input_shape=SHAPE,
        classes=10,
        growth_rate=8,
        recompute=loaded,
    )
    np.testing.assert_array_equal(
        to_numpy(target(images, training=False)),
        to_numpy(source(images, training=False)),
    )


def test_densenet_errors_if_weights_file_has_the_old_plain_stem(tmp_path):
    # An earlier keras_fusion built the stem of `recompute=False` from the
    # plain Keras layers: its files have our dense blocks but no stem layer.
    inputs = keras.Input(SHAPE)
    model = keras.Model(inputs, MemoryEfficientDenseBlock(1, 8)(inputs))
    path = os.path.join(tmp_path, "old.weights.h5")
    model.save_weights(path)
    with pytest.raises(
        ValueError, match="earlier keras_fusion.*recompute=True"
    ):
        DenseNet121(weights=path, input_shape=SHAPE, classes=10)


def test_weights_module_does_not_import_the_builders():
    # `densenet` imports `densenet_weights`; no cycle back.
    import ast
    import inspect

    from keras_fusion.models import densenet_weights

    tree = ast.parse(inspect.getsource(densenet_weights))
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not {
        name for name in imported if name.startswith("keras_fusion.models")
    }


def test_models_use_the_memory_efficient_layers():
    model = DenseNet121(weights=None, input_shape=SHAPE, recompute="concat_bn")
    block = model.get_layer("conv4")
    assert isinstance(block, MemoryEfficientDenseBlock)
    assert block.recompute == "concat_bn"
    assert isinstance(model.get_layer("pool3"), TransitionBlock)


@BUILT_THE_SAME_ON_EVERY_BACKEND
@pytest.mark.parametrize(
    "kwargs, layers, bottleneck, compression",
    [
        ({}, 16, 4, 0.5),
        ({"depth": 40, "compression_ratio": 1.0}, 6, 4, 1.0),
        ({"depth": 40, "bottleneck": False}, 12, None, 0.5),
    ],
    ids=["densenet-bc-100", "densenet-b-40", "densenet-c-40"],
)
def test_densenet_bc_variants(kwargs, layers, bottleneck, compression):
    model = DenseNetBC(**kwargs)
    for i in (1, 2, 3):
        block = model.get_layer(f"block{i}")
        assert block.num_layers == layers
        assert block.growth_rate == 12
        assert block.bottleneck_factor == bottleneck
    assert model.get_layer("transition1").compression_ratio == compression
    assert model.output_shape == (None, 10)


@BUILT_THE_SAME_ON_EVERY_BACKEND
@pytest.mark.parametrize(
    "model",
    [
        lambda: DenseNetBC(depth=40),
        lambda: DenseNet121(weights=None, input_shape=SHAPE),
    ],
    ids=["densenet-bc", "densenet121"],
)
def test_every_batch_norm_has_keras_applications_epsilon(model):
    epsilons = set()
    for layer in batch_normalizations(model()):
        epsilons.add(layer.epsilon)
    assert epsilons == {1.001e-5}


BATCH_NORM = {"batch_norm_momentum": 0.9, "batch_norm_epsilon": 1e-3}


@BUILT_THE_SAME_ON_EVERY_BACKEND
@pytest.mark.parametrize(
    "build",
    [
        lambda: DenseNet(
            (1, 2, 1, 1), weights=None, input_shape=SHAPE, **BATCH_NORM
        ),
        lambda: DenseNet121(weights=None, input_shape=SHAPE, **BATCH_NORM),
        lambda: DenseNet169(weights=None, input_shape=SHAPE, **BATCH_NORM),
        lambda: DenseNet201(weights=None, input_shape=SHAPE, **BATCH_NORM),
        lambda: DenseNet264(input_shape=SHAPE, **BATCH_NORM),
        lambda: DenseNetBC(depth=40, **BATCH_NORM),
        lambda: DenseNetBC(depth=40, bottleneck=False, **BATCH_NORM),
    ],
    ids=[
        "densenet",
        "densenet121",
        "densenet169",
        "densenet201",
        "densenet264",
        "densenet-bc",
        "densenet-c",
    ],
)
def test_batch_norm_settings_reach_every_batch_norm(build):
    model = build()
    norms = batch_normalizations(model)
    assert {bn.momentum for bn in norms} == {0.9}
    assert {bn.epsilon for bn in norms} == {1e-3}
    blocks = [
        layer
        for layer in model.layers
        if isinstance(layer, (MemoryEfficientDenseBlock, TransitionBlock))
    ]
    assert blocks
    for block in blocks:
        assert block.batch_norm_momentum == 0.9
        assert block.batch_norm_epsilon == 1e-3


def test_conversion_passes_batch_norm_settings_to_every_batch_norm(source):
    ours = from_keras_application(source, **BATCH_NORM)
    norms = batch_normalizations(ours)
    assert {bn.momentum for bn in norms} == {0.9}
    assert {bn.epsilon for bn in norms} == {1e-3}
    # The weights are still keras.applications' ones (`conv1_bn`'s are in
    # sublayer `bn` of the recomputing stem `conv1`).
    np.testing.assert_array_equal(
        to_numpy(ours.get_layer("conv1").bn.moving_variance),
        to_numpy(source.get_layer("conv1_bn").moving_variance),
    )


def test_builders_default_to_keras_applications_batch_norm_settings(source):
    expected = {
        (bn.momentum, bn.epsilon) for bn in batch_normalizations(source)
    }
    assert expected == {(0.99, 1.001e-5)}
    for model in (
        DenseNet121(weights=None, input_shape=SHAPE),
        DenseNetBC(depth=16),
        from_keras_application(source),
    ):
        norms = batch_normalizations(model)
        assert {(bn.momentum, bn.epsilon) for bn in norms} == expected


def test_builders_accept_numpy_numbers():
    model = DenseNetBC(
        depth=np.int64(40),
        growth_rate=np.int32(12),
        compression_ratio=np.float32(0.5),
        classes=np.int64(10),
        dropout_rate=np.float32(0.2),
        batch_norm_momentum=np.float64(0.9),
        batch_norm_epsilon=np.float32(1e-3),
    )
    reference = DenseNetBC(
        depth=40,
        growth_rate=12,
        compression_ratio=0.5,
        classes=10,
        dropout_rate=0.2,
        batch_norm_momentum=0.9,
        batch_norm_epsilon=float(np.float32(1e-3)),
    )
    assert model.name == reference.name
    assert model.count_params() == reference.count_params()
    block = model.get_layer("block1")
    assert type(block.dropout_rate) is float
    assert block.dropout_rate == float(np.float32(0.2))
    assert type(block.num_layers) is int
    assert type(block.batch_norm_momentum) is float
    assert type(block.batch_norm_epsilon) is float
    assert type(model.get_layer("transition1").compression_ratio) is float
    densenet = DenseNet121(
        weights=None, input_shape=SHAPE, classes=np.int64(10)
    )
    assert densenet.output_shape == (None, 10)
    custom = DenseNet(
        [np.int64(n) for n in (1, 2, 1, 1)], weights=None, input_shape=SHAPE
    )
    assert [custom.get_layer(f"conv{i}").num_layers for i in (2, 3)] == [1, 2]


@BUILT_THE_SAME_ON_EVERY_BACKEND
def test_densenet_bc_100_has_the_papers_parameter_count():
    # Huang et al. 2017, Table 2: DenseNet-BC (L=100, k=12), 0.8M.
    assert round(DenseNetBC(depth=100).count_params() / 1e6, 1) == 0.8


def test_densenet_bc_trains():
    model = DenseNetBC(depth=40, dropout_rate=0.2)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(2).random((8, 32, 32, 3), "float32")
    y = np.arange(8) % 10
    history = model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.parametrize(
    "builder, kwargs, message",
    [
        (DenseNet121, {"classes": 10}, "1000 classes.*classes=10"),
        (DenseNet264, {"weights": "imagenet"}, "DenseNet-121, -169 and -201"),
        (DenseNet121, {"weights": "nowhere.h5"}, "no such file"),
        (DenseNet121, {"weights": None, "pooling": "sum"}, "`pooling`.*'sum'"),
        (
            DenseNet121,
            {"weights": None, "input_shape": (16, 16, 3)},
            "at least 32.*16, 16, 3",
        ),
        (
            DenseNet121,
            {"input_shape": (64, 64, 3)},
            "needs input_shape=\\(224, 224, 3\\)",
        ),
        (DenseNetBC, {"depth": 50}, "`depth` should be 3 \\* n \\* 2 \\+ 4"),
        (DenseNetBC, {"depth": True}, "`depth` should be a positive int"),
        (DenseNetBC, {"classes": 0}, "`classes` should be a positive int"),
        (
            DenseNetBC,
            {"dropout_rate": True},
            "`dropout_rate` should be a float in",
        ),
    ],
)
def test_densenet_errors_if_arguments_are_invalid(builder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        builder(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"batch_norm_momentum": 1.5},
            "`batch_norm_momentum` should be a float in \\[0, 1\\]. "
            "Received: batch_norm_momentum=1.5",
        ),
        (
            {"batch_norm_momentum": "0.9"},
            "`batch_norm_momentum` should be a float in \\[0, 1\\]. "
            "Received: batch_norm_momentum='0.9'",
        ),
        (
            {"batch_norm_momentum": True},
            "`batch_norm_momentum` should be a float in \\[0, 1\\]. "
            "Received: batch_norm_momentum=True",
        ),
        (
            {"batch_norm_epsilon": 0.0},
            "`batch_norm_epsilon` should be a positive, finite float. "
            "Received: batch_norm_epsilon=0.0",
        ),
        (
            {"batch_norm_epsilon": -1e-5},
            "`batch_norm_epsilon` should be a positive, finite float. "
            "Received: batch_norm_epsilon=-1e-05",
        ),
    ],
    ids=[
        "momentum-above-1",
        "momentum-string",
        "momentum-bool",
        "epsilon-zero",
        "epsilon-negative",
    ],
)
@pytest.mark.parametrize(
    "builder",
    [
        lambda **kwargs: DenseNet(
            (1, 1, 1, 1), weights=None, input_shape=SHAPE, **kwargs
        ),
        lambda **kwargs: DenseNet121(weights=None, input_shape=SHAPE, **kwargs),
        lambda **kwargs: DenseNet264(input_shape=SHAPE, **kwargs),
        lambda **kwargs: DenseNetBC(depth=16, **kwargs),
    ],
    ids=["densenet", "densenet121", "densenet264", "densenet-bc"],
)
def test_builders_error_if_batch_norm_settings_are_invalid(
    builder, kwargs, message
):
    with pytest.raises(ValueError, match=message):
        builder(**kwargs)


def test_conversion_errors_if_batch_norm_settings_are_invalid(source):
    with pytest.raises(
        ValueError,
        match="`batch_norm_momentum` should be a float in \\[0, 1\\]. "
        "Received: batch_norm_momentum=-0.1",
    ):
        from_keras_application(source, batch_norm_momentum=-0.1)


@pytest.mark.parametrize(
    "compression_ratio, received",
    [(0, "0"), (1.5, "1.5"), ("0.5", "'0.5'"), (True, "True")],
)
def test_densenet_bc_errors_if_compression_ratio_is_invalid(
    compression_ratio, received
):
    with pytest.raises(
        ValueError,
        match="`compression_ratio` should be a float in \\(0, 1\\]. "
        f"Received: compression_ratio={received}",
    ):
        DenseNetBC(depth=16, compression_ratio=compression_ratio)


def test_conversion_errors_if_model_is_not_a_densenet():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs), name="mlp")
    with pytest.raises(ValueError, match="keras.applications DenseNet.*'mlp'"):
        from_keras_application(model)


def test_variants_are_public_functions_with_their_own_docstring():
    variants = {
        DenseNet121: (6, 12, 24, 16),
        DenseNet169: (6, 12, 32, 32),
        DenseNet201: (6, 12, 48, 32),
        DenseNet264: (6, 12, 64, 48),
    }
    for builder, blocks in variants.items():
        name = builder.__name__
        assert builder.__module__ == "keras_fusion.models.densenet"
        assert f"from keras_fusion.models import {name}\n" in builder.__doc__
        assert f"    {list(blocks)}\n" in builder.__doc__
    assert len({builder.__doc__ for builder in variants}) == 4


def test_copy_errors_if_target_has_other_blocks(source):
    target = DenseNet(
        (6, 12, 24, 17), weights=None, input_shape=SHAPE, classes=10
    )
    with pytest.raises(ValueError, match="no layer 'conv5_block17_0_bn'"):
        copy_keras_application_weights(source, target)


def test_densenet_bc_default_input_shape_follows_data_format():
    first = DenseNetBC(depth=16, data_format="channels_first")
    assert first.input_shape == (None, 3, 32, 32)
    assert DenseNetBC(depth=16).input_shape == (None, 32, 32, 3)


@pytest.mark.parametrize(
    "builder",
    [
        lambda x: DenseNetBC(depth=16, input_tensor=x),
        lambda x: DenseNet(
            (1, 1, 1, 1), weights=None, input_tensor=x, classes=10
        ),
    ],
    ids=["densenet-bc", "densenet"],
)
def test_input_tensor_keeps_the_layers_before_it(builder):
    inputs = keras.Input(SHAPE)
    x = keras.layers.Rescaling(1 / 255.0, name="rescaling")(inputs)
    model = builder(x)
    assert model.inputs[0] is inputs
    assert isinstance(model.get_layer("rescaling"), keras.layers.Rescaling)
    assert model.output_shape == (None, 10)
