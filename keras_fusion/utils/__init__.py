"""Helpers shared by the demo, the benchmarks and the tests."""

from keras_fusion.utils.export import serve_in_fresh_process
from keras_fusion.utils.memory import AllocatorStatsUnavailableError
from keras_fusion.utils.memory import measure_in_fresh_process
from keras_fusion.utils.memory import measure_step
from keras_fusion.utils.memory import saved_residual_bytes
from keras_fusion.utils.memory import saved_residuals

__all__ = [
    "AllocatorStatsUnavailableError",
    "measure_in_fresh_process",
    "measure_step",
    "saved_residual_bytes",
    "saved_residuals",
    "serve_in_fresh_process",
]
