"""Retrieval metrics and the street-to-shop evaluation command (plain PyTorch / NumPy, no Django)."""
