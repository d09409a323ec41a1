"""Tooling of the demo, the notebooks, the benchmarks and the tests: not the
library, and not public API (names here may change in any release).

- `profiling.py`: a training step's peak allocator bytes and time, measured
  in a fresh process.
- `serving.py`: an exported model served in a fresh process that never
  imports keras_fusion.
- `residuals.py`: what a layer's backward pass keeps from its forward pass.
- `reference_densenet.py`: the hand-wired Keras DenseNet blocks that the
  memory-efficient ones are compared with.

Nothing in `keras_fusion` below the demo imports this package.
"""
