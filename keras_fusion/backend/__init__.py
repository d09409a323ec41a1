"""The recomputing training steps of `MemoryEfficientDenseBlock`,
`TransitionBlock` and the DenseNet builders' stem.

- `dense_block_spec.py`: what a kernel receives, the block as data
  (weights, BatchNorm settings, dropout rates and seeds; no Layer).
- `batch_norm_relu.py`: relu(BatchNorm(x)) forward, recomputation, analytic
  gradient and moving-statistics update, in `keras.ops`, written once for
  every kernel.
- `tensorflow_dense_block.py`: the TensorFlow dense-block kernel (a custom
  gradient; why it is TensorFlow code is said there).
- `jax_dense_block.py`: the JAX dense-block kernel (a `jax.custom_vjp`
  written so that XLA keeps its memory plan; why is said there).
- `remat_dense_block.py`: the PyTorch dense-block kernel (`keras.remat`;
  it runs under JAX too, where the tests compare it with the JAX kernel).
- `tensorflow_transition.py`, `remat_transition.py`: the same two kinds
  of kernel for the transition (BatchNorm -> ReLU -> 1x1 convolution ->
  average pooling) and the stem (BatchNorm -> ReLU -> max pooling).
- `tensorflow_ops.py`: what the TensorFlow kernels share (convolution
  gradients without the forward convolution, BatchNorm's gradient in one
  op on a CPU, the `tf.distribute` replica sum).
- `size_checks.py`: run-time size checks of the cropping and padding ops
  (TensorFlow graphs need an assertion op; why is said there).

The kernels are chosen here, once, for the backend Keras runs on (as
`keras/src/backend/__init__.py` chooses its backend): the layers call
`recomputing_dense_block`, `recomputing_transition`, `recomputing_stem` and
`recomputing_call` from this package and never ask which backend it is.
The TensorFlow kernels are imported only on TensorFlow.
"""

import keras

if keras.backend.backend() == "tensorflow":
    from keras_fusion.backend.tensorflow_dense_block import (
        recomputing_dense_block,
    )
    from keras_fusion.backend.tensorflow_recompute import recomputing_call
    from keras_fusion.backend.tensorflow_transition import recomputing_stem
    from keras_fusion.backend.tensorflow_transition import (
        recomputing_transition,
    )
else:
    from keras_fusion.backend.remat_recompute import recomputing_call
    from keras_fusion.backend.remat_transition import recomputing_stem
    from keras_fusion.backend.remat_transition import recomputing_transition

    if keras.backend.backend() == "jax":
        from keras_fusion.backend.jax_dense_block import recomputing_dense_block
    else:
        from keras_fusion.backend.remat_dense_block import (
            recomputing_dense_block,
        )

__all__ = [
    "recomputing_call",
    "recomputing_dense_block",
    "recomputing_stem",
    "recomputing_transition",
]
