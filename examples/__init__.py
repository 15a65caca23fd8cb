"""Runnable examples (TensorState's tutorials on offline data) and the shared LeNet-5."""
