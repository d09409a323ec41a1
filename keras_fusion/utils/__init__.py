"""Helpers shared by the demo, the benchmarks and the tests."""

from keras_fusion.utils.export import serve_in_fresh_process
from keras_fusion.utils.memory import measure_step

__all__ = ["measure_step", "serve_in_fresh_process"]
