"""spectralgpt-jax: SpectralGPT (IEEE TPAMI 2024) in JAX / Flax NNX.

Subpackages: `models` (the MAE and classifiers), `interop` (official .pth checkpoints), `data` (Sentinel-2 bands,
readers, pipelines), `train` (sharded training system). Import what you use; this top level stays light.
"""
__version__ = "0.1.0"
