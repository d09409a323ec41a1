"""Backend-specific kernels, each isolated in its own module.

Layers use `keras.ops` everywhere except where a backend-specific path buys
something measurable; those paths live here, with the reason stated in the
module.
"""
