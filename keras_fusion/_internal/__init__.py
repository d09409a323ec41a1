"""Private helpers of keras_fusion: argument and shape checks, mask fusion,
serving an export in a fresh process. Not public API: names here may change
in any release."""
