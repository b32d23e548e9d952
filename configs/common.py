"""What every config shares: the argument parser, the keys of the training system with their defaults, and the
model / data sections (derived from the model registry and the data layer, so they cannot drift).

A config file's `get_config(arg)` starts from `base(task)`, then sets its recipe. Keys (all overridable with
`--config.key=value`, type-checked; docs/training.md describes each):
  task, mode ("train" | "eval"), seed
  batch_size (global, per optimizer update), eval_batch_size, total_steps | total_epochs, warmup_steps |
  warmup_epochs, num_train_examples (0: ask the data layer)
  optimizer.{blr, lr, min_lr, b1, b2, eps, weight_decay, clip_grad_norm, accum_steps, schedule, layer_decay,
             decay_1d, decay_pos_embed, poly_power, warmup_start, decay_rate, freeze}
  compute_dtype, skip_nonfinite, mesh.{data, fsdp, model}, peak_tflops
  log_every, checkpoint_every, keep_checkpoints, async_checkpoints, eval_every, image_every, num_preview
  init_from, strict_init, strict_resume, export, progress_bar, tensorboard
  model.{name, <ModelConfig fields>}, data.{<data layer keys>}, loss.{...}, metrics.{...} (per task)
"""
from __future__ import annotations

import os

import ml_collections

SIZES = {"B": "base", "L": "large", "H": "huge"}
# Where the README's pretraining demo (`--workdir=runs/demo`) leaves its export; the fine-tuning demos start from it
# when it exists (relative to the directory main.py is run from).
DEMO_PRETRAIN_EXPORT = os.path.join("runs", "demo", "export")


def parse_arg(arg: str | None, *, config: str, variants: tuple[str, ...], default: str, sizes: str = "BLH"
              ) -> tuple[str, str]:
  """'variant[,size]' (size B | L | H, or size=B) -> (variant, size); errors name the config file."""
  parts = [p.strip() for p in (arg or default).split(",") if p.strip()]
  variant = parts[0] if parts else default
  size = "B"
  for part in parts[1:]:
    value = part.split("=", 1)[1] if "=" in part else part
    if value.upper() not in sizes:
      raise ValueError(f"configs/{config}.py:{arg}: model size {value!r} must be one of {list(sizes)}")
    size = value.upper()
  if variant not in variants:
    raise ValueError(f"configs/{config}.py:{arg}: variant {variant!r} must be one of {', '.join(variants)}")
  return variant, size


def model_section(name: str, **overrides) -> ml_collections.ConfigDict:
  """The named model's full architecture as overridable keys (the model registry is the single source of
  truth). `mask_ratio` (pretraining) is kept beside the architecture fields."""
  from spectralgpt_jax import models
  extra = {k: overrides.pop(k) for k in ("mask_ratio",) if k in overrides}
  fields = {k: v for k, v in models.get_config(name, **overrides).to_dict().items() if k not in ("kind", "dtype")}
  return ml_collections.ConfigDict({"name": name, **extra, **fields})


def data_section(name: str, image_size: int, task: str = "pretrain", **overrides) -> ml_collections.ConfigDict:
  """The data layer's defaults for `name` and `task` ("pretrain" | "finetune") at the model's image size."""
  from spectralgpt_jax.data import pipeline
  data = ml_collections.ConfigDict(dict(pipeline.default_data_config(name, task)))
  data.image_size = image_size
  data.update(overrides)
  return data


def demo_init_from() -> str:
  """The pretraining demo's export if it exists, else "" (fine-tuning demos then start from scratch)."""
  return DEMO_PRETRAIN_EXPORT if os.path.exists(os.path.join(DEMO_PRETRAIN_EXPORT, "metadata.json")) else ""


def base(task: str) -> ml_collections.ConfigDict:
  """Every key of the training system with its default (recipes override what they need)."""
  c = ml_collections.ConfigDict()
  c.task = task
  c.mode = "train"                  # "eval": evaluate init_from (or the workdir's checkpoint) into DIR/eval
  c.seed = 0

  # Schedule and batch (one step = one optimizer update on `batch_size` examples).
  c.batch_size = 512
  c.eval_batch_size = 256
  c.total_steps = 0                 # > 0 overrides total_epochs
  c.total_epochs = 100.0
  c.warmup_steps = 0                # > 0 overrides warmup_epochs
  c.warmup_epochs = 0.0
  c.num_train_examples = 0          # 0: ask the data layer (needed for epoch-based schedules)

  c.optimizer = ml_collections.ConfigDict(dict(
      blr=1e-4, lr=0.0,             # lr = blr * batch_size / 256 unless lr > 0
      min_lr=0.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05,
      clip_grad_norm=0.0,           # the reference never clips
      accum_steps=1,                # micro-batches per step (in-step scan); batch_size must divide by it
      schedule="cosine",            # cosine (warmup + half cosine) | poly (SegMunich) | exponential (OSCD) | constant
      layer_decay=1.0,              # layer-wise lr decay (1 = off; the classification reference uses 0.75)
      decay_1d=False,               # weight decay also on biases / norm scales (the dense-task reference)
      decay_pos_embed=True,         # weight decay on position embeddings (pretraining yes, fine-tuning no)
      poly_power=0.9, warmup_start=1e-3,   # schedule="poly": lr factor (1 - progress) ** power, warmup from 1e-3
      decay_rate=0.95,              # schedule="exponential": lr * decay_rate ** epoch
      freeze=""))                   # params kept fixed: comma-separated name patterns, e.g. "encoder" (linear
                                    # probe / frozen backbone); see spectralgpt_jax/train/freezing.py
  c.compute_dtype = "bfloat16"      # matmul dtype; params, optimizer state and loss stay float32
  c.skip_nonfinite = False          # False: stop with the step number; True: skip such updates and continue
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, model=1))   # one axis may be -1 (= the rest)
  c.peak_tflops = 0.0               # per-device peak for the logged MFU; 0: look the device up (none for CPUs)

  # Bookkeeping.
  c.log_every = 50
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.eval_every = 1000
  c.image_every = 0
  c.num_preview = 4
  c.init_from = ""                  # an export dir, a run dir, or an official .pth file
  c.strict_init = True              # False: load what fits from init_from and report the rest
  c.strict_resume = True            # False: resume a workdir although its task / model / dataset changed
  c.export = True                   # DIR/export: params + metadata.json at the end
  c.progress_bar = True             # tqdm on a terminal, log lines otherwise
  c.tensorboard = True
  c.loss = ml_collections.ConfigDict()
  c.metrics = ml_collections.ConfigDict()
  return c


def cpu_demo(c: ml_collections.ConfigDict, *, steps: int, warmup: int, every: int) -> None:
  """Settings every CPU demo shares: float32 (exact, and fast on every CPU; bf16 pays only on CPUs with bf16 dot
  products, docs/benchmarks.md), a step budget, frequent logs."""
  c.compute_dtype = "float32"
  c.total_steps, c.total_epochs = steps, 0.0
  c.warmup_steps, c.warmup_epochs = warmup, 0.0
  c.log_every = min(20, every)
  c.checkpoint_every = every
  c.eval_every = every
