"""Check a pretraining config before anything is compiled, and derive the numbers the loop needs.

Every failure raises `ConfigError` whose message starts with the offending key (`config.mesh.fsdp=3: ...`), so a
typo or an impossible mesh/batch combination costs seconds, not a compile.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Mapping

from spectralgpt_jax import models, sharding

TOP_KEYS = {
    "task", "seed", "batch_size", "eval_batch_size", "total_steps", "total_epochs", "warmup_steps", "warmup_epochs",
    "num_train_examples", "log_every", "checkpoint_every", "keep_checkpoints", "async_checkpoints", "eval_every",
    "image_every", "num_preview", "compute_dtype", "skip_nonfinite", "init_from", "export", "progress_bar",
    "tensorboard", "mesh", "model", "data", "optimizer",
}
OPTIMIZER_KEYS = {"blr", "lr", "min_lr", "b1", "b2", "eps", "weight_decay", "clip_grad_norm", "accum_steps"}
MODEL_EXTRA_KEYS = {"name", "mask_ratio"}
# Fields of ModelConfig that the training config sets elsewhere (kind is fixed by the task, dtype = compute_dtype).
MODEL_FIXED_FIELDS = {"kind", "dtype"}
COMPUTE_DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class Plan:
  """Numbers derived from a valid config."""
  mesh_shape: tuple[int, int, int]
  model: models.ModelConfig
  total_steps: int
  warmup_steps: float
  steps_per_epoch: float | None
  peak_lr: float
  micro_batch: int


def _unknown(keys, known, where: str) -> None:
  for key in sorted(set(keys) - set(known)):
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean {where}.{close[0]}?)" if close else ""
    raise ConfigError(f"{where}.{key}: unknown key{hint}")


def model_overrides(model_cfg: Mapping[str, Any], compute_dtype: str) -> dict[str, Any]:
  overrides = {k: v for k, v in dict(model_cfg).items() if k not in MODEL_EXTRA_KEYS}
  overrides["dtype"] = compute_dtype
  return overrides


def model_config(config) -> models.ModelConfig:
  if config.model.name not in models.VARIANTS:
    raise ConfigError(f"config.model.name={config.model.name!r}: unknown; known: {', '.join(models.names())}")
  try:
    cfg = models.get_config(config.model.name, **model_overrides(config.model, config.compute_dtype))
  except ValueError as e:      # ModelConfig reports "model.<field>=...: why"
    raise ConfigError(f"config.{e}") from None
  if cfg.kind != "mae":
    raise ConfigError(f"config.model.name={config.model.name!r}: pretraining needs a masked autoencoder (mae_*)")
  return cfg


def check(config, *, device_count: int, process_count: int = 1, num_train_examples: int | None = None) -> Plan:
  """Validate `config` for `device_count` devices; returns the derived Plan or raises ConfigError."""
  _unknown(config.keys(), TOP_KEYS, "config")
  _unknown(config.optimizer.keys(), OPTIMIZER_KEYS, "config.optimizer")
  model_fields = {f.name for f in dataclasses.fields(models.ModelConfig)} - MODEL_FIXED_FIELDS
  _unknown(config.model.keys(), model_fields | MODEL_EXTRA_KEYS, "config.model")

  if config.compute_dtype not in COMPUTE_DTYPES:
    raise ConfigError(f"config.compute_dtype={config.compute_dtype!r}: must be one of {COMPUTE_DTYPES}")
  model = model_config(config)
  if not 0.0 <= config.model.mask_ratio < 1.0:
    raise ConfigError(f"config.model.mask_ratio={config.model.mask_ratio}: must be in [0, 1)")
  if int(model.num_tokens * (1 - config.model.mask_ratio)) < 1:
    raise ConfigError(f"config.model.mask_ratio={config.model.mask_ratio}: keeps no token of {model.num_tokens}")
  if config.data.get("image_size", model.img_size) != model.img_size:
    raise ConfigError(f"config.data.image_size={config.data.image_size} differs from config.model.img_size="
                      f"{model.img_size}")

  try:
    mesh_shape = sharding.resolve_mesh_shape(config.mesh, device_count)
  except sharding.MeshError as e:
    raise ConfigError(str(e)) from None
  data_parallel = mesh_shape[0] * mesh_shape[1]

  accum = config.optimizer.accum_steps
  if accum < 1:
    raise ConfigError(f"config.optimizer.accum_steps={accum}: must be >= 1")
  if config.batch_size < 1 or config.batch_size % accum:
    raise ConfigError(f"config.batch_size={config.batch_size}: must be a positive multiple of "
                      f"config.optimizer.accum_steps={accum}")
  micro = config.batch_size // accum
  if micro % data_parallel:
    raise ConfigError(f"config.batch_size={config.batch_size}: each of the {accum} micro-batch(es) has {micro} "
                      f"examples, not divisible by the {data_parallel} data-parallel devices "
                      f"(config.mesh.data x config.mesh.fsdp = {mesh_shape[0]} x {mesh_shape[1]})")
  if config.batch_size % process_count:
    raise ConfigError(f"config.batch_size={config.batch_size}: not divisible by the {process_count} processes")
  if config.eval_every and config.eval_batch_size % data_parallel:
    raise ConfigError(f"config.eval_batch_size={config.eval_batch_size}: not divisible by the {data_parallel} "
                      "data-parallel devices")
  if config.eval_every and config.eval_batch_size % process_count:
    raise ConfigError(f"config.eval_batch_size={config.eval_batch_size}: not divisible by the {process_count} "
                      "processes")

  for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
    if config[key] < 1:
      raise ConfigError(f"config.{key}={config[key]}: must be >= 1")
  for key in ("eval_every", "image_every"):
    if config[key] < 0:
      raise ConfigError(f"config.{key}={config[key]}: must be >= 0 (0 = off)")
  if config.image_every and config.num_preview < 1:
    raise ConfigError(f"config.num_preview={config.num_preview}: must be >= 1 when image_every > 0")

  steps_per_epoch = None
  examples = config.num_train_examples or num_train_examples
  if examples:
    steps_per_epoch = examples / config.batch_size     # drop_remainder: fractional epochs as the reference
  if config.total_steps > 0:
    total_steps = int(config.total_steps)
  elif config.total_epochs > 0:
    if steps_per_epoch is None:
      raise ConfigError("config.total_epochs needs the training set size: set config.num_train_examples "
                        "or config.total_steps")
    total_steps = int(math.floor(config.total_epochs * examples / config.batch_size))
  else:
    raise ConfigError("config.total_steps / config.total_epochs: one of them must be > 0")
  if total_steps < 1:
    raise ConfigError(f"config.total_epochs={config.total_epochs}: gives {total_steps} steps")

  if config.warmup_steps > 0:
    warmup = float(config.warmup_steps)
  elif config.warmup_epochs > 0:
    if steps_per_epoch is None:
      raise ConfigError("config.warmup_epochs needs the training set size: set config.num_train_examples or use "
                        "config.warmup_steps")
    warmup = config.warmup_epochs * steps_per_epoch
  else:
    warmup = 0.0
  if warmup >= total_steps:
    raise ConfigError(f"config.warmup_steps/warmup_epochs: warmup of {warmup:g} steps is not shorter than the "
                      f"{total_steps} total steps")

  opt = config.optimizer
  peak_lr = opt.lr if opt.lr > 0 else opt.blr * config.batch_size / 256
  if peak_lr <= 0:
    raise ConfigError("config.optimizer.blr / config.optimizer.lr: one must be > 0")
  if config.init_from and not isinstance(config.init_from, str):
    raise ConfigError(f"config.init_from={config.init_from!r}: must be a path")
  return Plan(mesh_shape=mesh_shape, model=model, total_steps=total_steps, warmup_steps=warmup,
              steps_per_epoch=steps_per_epoch, peak_lr=peak_lr, micro_batch=micro)
