"""Interoperability with the official PyTorch SpectralGPT checkpoints (read without torch, without running pickled
code)."""
from spectralgpt_jax.interop.keymap import export_state_dict
from spectralgpt_jax.interop.loader import LoadReport, load_reference_checkpoint, read_reference_params
from spectralgpt_jax.interop.torch_pickle import CheckpointError, UnsafeCheckpointError, load_pth
# `interop.transfer` stays the module (its function is `interop.transfer.transfer`).
from spectralgpt_jax.interop.transfer import CheckpointMismatchError, TransferReport, infer_kind

__all__ = ["CheckpointError", "CheckpointMismatchError", "LoadReport", "TransferReport", "UnsafeCheckpointError",
           "export_state_dict", "infer_kind", "load_pth", "load_reference_checkpoint", "read_reference_params"]
