"""The recomputing training step of `MemoryEfficientDenseBlock`.

- `dense_block_spec.py`: what a kernel receives, the block as data
  (weights, BatchNorm settings, dropout rates and seeds; no Layer).
- `batch_norm_relu.py`: relu(BatchNorm(x)) forward, recomputation, analytic
  gradient and moving-statistics update, in `keras.ops`, written once for
  both kernels.
- `tensorflow_dense_block.py`: the TensorFlow kernel (a custom gradient;
  why it is TensorFlow code is said there).
- `remat_dense_block.py`: the JAX and PyTorch kernel (`keras.remat`).
- `size_checks.py`: run-time size checks of the cropping and padding ops
  (TensorFlow graphs need an assertion op; why is said there).
"""
