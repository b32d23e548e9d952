"""Check a training / evaluation config before anything is compiled, and derive the numbers the loop needs.

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
    "task", "mode", "seed", "strict_init", "strict_resume", "loss", "metrics",
    "batch_size", "eval_batch_size", "total_steps", "total_epochs", "warmup_steps", "warmup_epochs",
    "num_train_examples", "log_every", "checkpoint_every", "keep_checkpoints", "async_checkpoints", "eval_every",
    "image_every", "num_preview", "compute_dtype", "skip_nonfinite", "init_from", "export", "progress_bar",
    "tensorboard", "mesh", "model", "data", "optimizer", "peak_tflops",
}
OPTIMIZER_KEYS = {"blr", "lr", "min_lr", "b1", "b2", "eps", "weight_decay", "clip_grad_norm", "accum_steps",
                  "schedule", "layer_decay", "decay_1d", "decay_pos_embed", "poly_power", "warmup_start",
                  "decay_rate", "freeze"}
MODEL_EXTRA_KEYS = {"name", "mask_ratio"}
MODES = ("train", "eval")
# Fields of ModelConfig that the training config sets elsewhere (kind is fixed by the task, dtype = compute_dtype).
MODEL_FIXED_FIELDS = {"kind", "dtype"}
COMPUTE_DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class Plan:
  """Numbers derived from a valid config."""
  task: Any                      # spectralgpt_jax.tasks.base.Task
  mesh_shape: tuple[int, int, int]
  model: models.ModelConfig
  total_steps: int
  warmup_steps: float
  steps_per_epoch: float | None
  peak_lr: float
  micro_batch: int
  freeze: tuple[str, ...] = ()   # config.optimizer.freeze, parsed (train/freezing.py)


def _unknown(keys, known, where: str) -> None:
  for key in sorted(set(keys) - set(known)):
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean {where}.{close[0]}?)" if close else ""
    raise ConfigError(f"{where}.{key}: unknown key{hint}")


def model_overrides(model_cfg: Mapping[str, Any], compute_dtype: str) -> dict[str, Any]:
  overrides = {k: v for k, v in dict(model_cfg).items() if k not in MODEL_EXTRA_KEYS}
  overrides["dtype"] = compute_dtype
  return overrides


def model_config(config, task_fields: Mapping[str, Any] | None = None) -> models.ModelConfig:
  """config.model (a variant name + field overrides) -> ModelConfig; `task_fields` are set by the task (e.g. the
  class count of the data) and win over the config."""
  if config.model.name not in models.VARIANTS:
    raise ConfigError(f"config.model.name={config.model.name!r}: unknown; known: {', '.join(models.names())}")
  try:
    return models.get_config(config.model.name, **{**model_overrides(config.model, config.compute_dtype),
                                                   **(task_fields or {})})
  except ValueError as e:      # ModelConfig reports "model.<field>=...: why"
    raise ConfigError(f"config.{e}") from None


def make_task(config):
  """The config's task plug-in, with its own checks run (their errors become ConfigErrors)."""
  from spectralgpt_jax import tasks
  from spectralgpt_jax.tasks.base import TaskConfigError
  try:
    task = tasks.get(config)
    task.check()
    return task, task.model_config()
  except TaskConfigError as e:
    raise ConfigError(str(e)) from None


def _task_model(task) -> models.ModelConfig:
  from spectralgpt_jax.tasks.base import TaskConfigError
  try:
    return task.model_config()
  except TaskConfigError as e:
    raise ConfigError(str(e)) from None


def check(config, *, device_count: int, process_count: int = 1, num_train_examples: int | None = None,
          task=None) -> Plan:
  """Validate `config` for `device_count` devices; returns the derived Plan or raises ConfigError. `task` is the
  config's task when the caller already made it (`make_task`)."""
  _unknown(config.keys(), TOP_KEYS, "config")
  _unknown(config.optimizer.keys(), OPTIMIZER_KEYS, "config.optimizer")
  model_fields = {f.name for f in dataclasses.fields(models.ModelConfig)} - MODEL_FIXED_FIELDS
  _unknown(config.model.keys(), model_fields | MODEL_EXTRA_KEYS, "config.model")
  if config.get("mode", "train") not in MODES:
    raise ConfigError(f"config.mode={config.mode!r}: must be one of {MODES}")
  evaluating = config.get("mode", "train") == "eval"

  if config.compute_dtype not in COMPUTE_DTYPES:
    raise ConfigError(f"config.compute_dtype={config.compute_dtype!r}: must be one of {COMPUTE_DTYPES}")
  if config.get("peak_tflops", 0.0) < 0:
    raise ConfigError(f"config.peak_tflops={config.peak_tflops}: must be >= 0 (0: look the device up)")
  task, model = make_task(config) if task is None else (task, _task_model(task))
  if config.data.get("image_size", model.img_size) != model.img_size:
    raise ConfigError(f"config.data.image_size={config.data.image_size} differs from config.model.img_size="
                      f"{model.img_size}")
  try:
    mesh_shape = sharding.resolve_mesh_shape(config.mesh, device_count)
  except sharding.MeshError as e:
    raise ConfigError(str(e)) from None
  micro = _check_batches(config, mesh_shape, process_count, evaluating)
  _check_intervals(config)
  if config.init_from and not isinstance(config.init_from, str):
    raise ConfigError(f"config.init_from={config.init_from!r}: must be a path")
  if evaluating:       # no schedule: nothing is trained
    return Plan(task=task, mesh_shape=mesh_shape, model=model, total_steps=0, warmup_steps=0.0,
                steps_per_epoch=None, peak_lr=0.0, micro_batch=micro)
  examples = config.num_train_examples or num_train_examples
  total_steps, warmup, steps_per_epoch = _schedule_lengths(config, examples)
  opt = config.optimizer
  peak_lr = opt.lr if opt.lr > 0 else opt.blr * config.batch_size / 256
  if peak_lr <= 0:
    raise ConfigError("config.optimizer.blr / config.optimizer.lr: one must be > 0")
  _check_optimizer(opt, steps_per_epoch)
  from spectralgpt_jax.train import freezing     # here: freezing raises this module's ConfigError
  return Plan(task=task, mesh_shape=mesh_shape, model=model, total_steps=total_steps, warmup_steps=warmup,
              steps_per_epoch=steps_per_epoch, peak_lr=peak_lr, micro_batch=micro,
              freeze=freezing.parse(opt.get("freeze", "")))


def _check_batches(config, mesh_shape, process_count: int, evaluating: bool) -> int:
  """Batch sizes against the data-parallel devices and processes; returns the micro-batch size."""
  data_parallel = mesh_shape[0] * mesh_shape[1]
  accum = config.optimizer.accum_steps
  if accum < 1:
    raise ConfigError(f"config.optimizer.accum_steps={accum}: must be >= 1")
  if config.batch_size < 1 or config.batch_size % accum:
    raise ConfigError(f"config.batch_size={config.batch_size}: must be a positive multiple of "
                      f"config.optimizer.accum_steps={accum}")
  micro = config.batch_size // accum
  if micro % data_parallel and not evaluating:
    raise ConfigError(f"config.batch_size={config.batch_size}: each of the {accum} micro-batch(es) has {micro} "
                      f"examples, not divisible by the {data_parallel} data-parallel devices "
                      f"(config.mesh.data x config.mesh.fsdp = {mesh_shape[0]} x {mesh_shape[1]})")
  if config.batch_size % process_count and not evaluating:
    raise ConfigError(f"config.batch_size={config.batch_size}: not divisible by the {process_count} processes")
  if config.eval_every or evaluating:
    for devices, what in ((data_parallel, "data-parallel devices"), (process_count, "processes")):
      if config.eval_batch_size < 1 or config.eval_batch_size % devices:
        raise ConfigError(f"config.eval_batch_size={config.eval_batch_size}: not divisible by the {devices} {what}")
  return micro


def _check_intervals(config) -> None:
  for key in ("log_every", "checkpoint_every", "keep_checkpoints"):
    if config[key] < 1:
      raise ConfigError(f"config.{key}={config[key]}: must be >= 1")
  for key in ("eval_every", "image_every"):
    if config[key] < 0:
      raise ConfigError(f"config.{key}={config[key]}: must be >= 0 (0 = off)")
  if config.image_every and config.num_preview < 1:
    raise ConfigError(f"config.num_preview={config.num_preview}: must be >= 1 when image_every > 0")


def _schedule_lengths(config, examples: int | None) -> tuple[int, float, float | None]:
  """(total steps, warmup steps, steps per epoch) from step or epoch counts (fractional epochs, drop remainder)."""
  steps_per_epoch = examples / config.batch_size if examples else None
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
  return total_steps, warmup, steps_per_epoch


def _check_optimizer(opt, steps_per_epoch: float | None) -> None:
  from spectralgpt_jax.train import optim
  schedule = opt.get("schedule", "cosine")
  if schedule not in optim.SCHEDULES:
    raise ConfigError(f"config.optimizer.schedule={schedule!r}: must be one of {optim.SCHEDULES}")
  if schedule == "exponential" and steps_per_epoch is None:
    raise ConfigError("config.optimizer.schedule='exponential' decays per epoch and needs the training set size: "
                      "set config.num_train_examples")
  if not 0.0 < opt.get("layer_decay", 1.0) <= 1.0:
    raise ConfigError(f"config.optimizer.layer_decay={opt.layer_decay}: must be in (0, 1] (1 = off)")
