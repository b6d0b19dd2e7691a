"""Synthetic data: moving-shapes clips with captions (used to train the built-in ``tiny-shapes`` model)."""
