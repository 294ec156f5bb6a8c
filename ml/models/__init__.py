"""Trainable models (plain PyTorch; importing this never imports ml.training or Django)."""
