"""TF-free tfds builders of the five datasets (importing this registers them with tfds)."""

from spectralgpt_jax.data.builders.datasets import BUILDERS

__all__ = ["BUILDERS"]
