"""Throughput and model FLOPs utilisation (MFU) of a train step, shared by the training log and the benchmarks.

MFU = analytic model FLOPs of the step (`models.flops.train_step_flops`: forward + backward, matmuls and
attention, no rematerialisation counted) / step time / (peak FLOP/s of one device x devices). The peak is the
device's dense matmul peak for the compute dtype, looked up from `jax.Device.device_kind` in `PEAK_TFLOPS` (public
data-sheet figures), or given with `config.peak_tflops` (per device; required on CPUs and unlisted chips, else
MFU is not logged).
"""
from __future__ import annotations

from typing import Any

import jax

from spectralgpt_jax.models.config import ModelConfig
from spectralgpt_jax.models.flops import train_step_flops

# Dense peak TFLOP/s per device (a jax device: one TPU chip, v4's megacore included; one GPU), bf16 and fp32.
# fp32 matmuls run as one bf16 pass at JAX's default precision on TPU and as TF32 on Ampere/Hopper GPUs.
# Matched in order against device_kind (lower case): "tpu v5 lite" must come before "tpu v5".
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("tpu v4", {"bfloat16": 275.0, "float32": 275.0}),
    ("tpu v5 lite", {"bfloat16": 197.0, "float32": 197.0}),     # v5e
    ("tpu v5e", {"bfloat16": 197.0, "float32": 197.0}),
    ("tpu v5p", {"bfloat16": 459.0, "float32": 459.0}),
    ("tpu v5", {"bfloat16": 459.0, "float32": 459.0}),          # v5p reports "TPU v5"
    ("tpu v6 lite", {"bfloat16": 918.0, "float32": 918.0}),     # v6e (Trillium)
    ("tpu v6e", {"bfloat16": 918.0, "float32": 918.0}),
    ("a100", {"bfloat16": 312.0, "float32": 156.0}),
    ("h100 pcie", {"bfloat16": 756.0, "float32": 378.0}),
    ("h100", {"bfloat16": 989.0, "float32": 494.0}),            # SXM
    ("h200", {"bfloat16": 989.0, "float32": 494.0}),
)


def peak_tflops(device: Any, dtype: str, override: float = 0.0) -> float | None:
  """Peak dense TFLOP/s of one `device` for `dtype` matmuls: `override` if > 0, else the table, else None."""
  if override and override > 0:
    return float(override)
  kind = str(getattr(device, "device_kind", "")).lower()
  for pattern, peaks in PEAK_TFLOPS:
    if pattern in kind:
      return peaks.get(dtype, peaks["bfloat16"])
  return None


def tokens_per_example(cfg: ModelConfig) -> int:
  """Tokens one training example puts through the patch embedding (change detection: both dates)."""
  return cfg.num_tokens * (2 if cfg.kind == "cd" else 1)


def step_stats(cfg: ModelConfig, *, batch_size: int, step_s: float, mask_ratio: float = 0.9,
               devices: list | None = None, override_tflops: float = 0.0,
               trained_layers: list[bool] | None = None) -> dict[str, float]:
  """img_per_s, tokens_per_s, model_tflops_per_s (per device) and, when the peak is known, mfu; `trained_layers`:
  see `train_step_flops` (frozen parameters)."""
  devices = devices if devices is not None else jax.devices()
  flops = train_step_flops(cfg, mask_ratio, trained_layers) * batch_size
  stats = {"img_per_s": batch_size / step_s, "tokens_per_s": batch_size * tokens_per_example(cfg) / step_s,
           "model_tflops_per_s": flops / step_s / len(devices) / 1e12}
  peak = peak_tflops(devices[0], cfg.dtype, override_tflops)
  if peak is not None:
    stats["mfu"] = stats["model_tflops_per_s"] / peak
  return stats
