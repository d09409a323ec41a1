import os

# Keep TensorFlow's C++ start-up chatter out of test output; it is set before
# the first import of TensorFlow, which happens when the tests collect.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
