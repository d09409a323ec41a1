"""What a recomputing dense-block kernel receives: the block as data.

`MemoryEfficientDenseBlock` hands its training step to a kernel
(`tensorflow_dense_block.py`, `remat_dense_block.py`) as a
`DenseBlockSpec`: the weights of every dense layer as tensors, the
BatchNorm settings, the dropout rate and seed, the recomputation policy and
the data format. A kernel sees no Layer object and no variable: it returns
the block's output and the batch statistics of every BatchNorm, and the
layer updates its moving statistics from them
(`batch_norm_relu.update_moving_statistics`). So a kernel can be read,
tested and changed without knowing how the layer stores its sublayers, and
the layer's sublayers can change without touching a kernel.

Each dense layer computes, on the concatenation `c` of the block's input
and the earlier layers' outputs (along the channel axis):

    h = relu(BatchNorm_0(c))                      # gamma0, beta0
    h = relu(BatchNorm_1(conv(h, kernel1)))       # only with a bottleneck
    f = dropout(conv(h, kernel2), dropout_rate)   # 'same' padding

and the block returns the concatenation of its input and every `f` (with
`return_new_features`, of every `f` only).
`kernel1` is 1x1 (no padding); `kernel2` has `growth_rate` output
channels. Every convolution has stride 1, no bias and the block's data
format.
"""

import dataclasses

from keras import ops


@dataclasses.dataclass(frozen=True)
class BatchNormSpec:
    """The settings shared by every BatchNorm of a block.

    Attributes:
        epsilon: added to the variance, as `BatchNormalization(epsilon=...)`.
        synchronized: whether the batch statistics are computed over all
            replicas of a `tf.distribute` strategy (TensorFlow only).
    """

    epsilon: float
    synchronized: bool


@dataclasses.dataclass(frozen=True)
class DenseLayerSpec:
    """The weights, dropout rate and seed of one dense layer.

    Attributes:
        gamma0: scale of the first BatchNorm, shape `(channels_in,)`.
        beta0: offset of the first BatchNorm, shape `(channels_in,)`.
        kernel1: the 1x1 bottleneck convolution's kernel, in the compute
            dtype, or `None` without a bottleneck.
        gamma1: scale of the BatchNorm after the bottleneck, or `None`.
        beta1: offset of the BatchNorm after the bottleneck, or `None`.
        kernel2: the 3x3 convolution's kernel, in the compute dtype; its
            last dimension is the growth rate.
        dropout_rate: the fraction of the new features dropped in
            training; `0.0` for none.
        dropout_seed: the `keras.random.SeedGenerator` that the plain
            block's `Dropout` layer draws from (`None` without dropout). A
            kernel draws from it once per training step, so the mask is the
            plain block's and a recomputation reuses it.
    """

    gamma0: object
    beta0: object
    kernel1: object
    gamma1: object
    beta1: object
    kernel2: object
    dropout_rate: float = 0.0
    dropout_seed: object = None

    @property
    def has_bottleneck(self):
        return self.kernel1 is not None

    @property
    def growth_rate(self):
        return self.kernel2.shape[-1]

    @property
    def num_batch_norms(self):
        return 2 if self.has_bottleneck else 1

    def weights(self):
        """The layer's weight tensors, in a fixed order, `None`s left out
        (what a kernel differentiates with respect to)."""
        values = (
            self.gamma0,
            self.beta0,
            self.kernel1,
            self.gamma1,
            self.beta1,
            self.kernel2,
        )
        return tuple(v for v in values if v is not None)

    def with_weights(self, weights):
        """This spec with its weights replaced by `weights`, in the order
        and number that `weights()` returns."""
        if self.has_bottleneck:
            gamma0, beta0, kernel1, gamma1, beta1, kernel2 = weights
        else:
            gamma0, beta0, kernel2 = weights
            kernel1 = gamma1 = beta1 = None
        return dataclasses.replace(
            self,
            gamma0=gamma0,
            beta0=beta0,
            kernel1=kernel1,
            gamma1=gamma1,
            beta1=beta1,
            kernel2=kernel2,
        )


@dataclasses.dataclass(frozen=True)
class DenseBlockSpec:
    """A whole block, as a kernel receives it.

    Attributes:
        layers: one `DenseLayerSpec` per dense layer, in order.
        batch_norm: the `BatchNormSpec` of every BatchNorm in the block.
        policy: `"full"` (keep each layer's new features only) or
            `"concat_bn"` (keep the bottleneck convolutions' outputs too).
        data_format: `"channels_last"` or `"channels_first"`.
        return_new_features: whether the block returns only the layers'
            new features, without its input.
    """

    layers: tuple
    batch_norm: BatchNormSpec
    policy: str
    data_format: str
    return_new_features: bool = False


def convolution(x, kernel, data_format):
    """A dense layer's convolution, as `keras.layers.Conv*D` runs it:
    'valid' padding for the 1x1 kernel (the Keras layer's default), 'same'
    for the 3x3 one; stride 1, no bias."""
    is_1x1 = all(k == 1 for k in kernel.shape[:-2])
    return ops.conv(
        x,
        kernel,
        strides=1,
        padding="valid" if is_1x1 else "same",
        data_format=data_format,
    )
