"""Interoperability with the official PyTorch SpectralGPT checkpoints (read without torch, without running pickled
code)."""
from spectralgpt_jax.interop.keymap import export_state_dict
from spectralgpt_jax.interop.loader import CheckpointMismatchError, LoadReport, load_reference_checkpoint
from spectralgpt_jax.interop.torch_pickle import CheckpointError, UnsafeCheckpointError, load_pth

__all__ = ["CheckpointError", "CheckpointMismatchError", "LoadReport", "UnsafeCheckpointError", "export_state_dict",
           "load_pth", "load_reference_checkpoint"]
