"""Private helpers under every other package of keras_fusion: argument
checks (`checks.py`) and static shape helpers with the TorchScript refusal
(`shapes.py`). They import nothing of keras_fusion. Not public API: names
here may change in any release."""
