"""Optimizer as the reference pretraining recipe (spectralgpt_reference.md §4.2).

AdamW(b1=0.9, b2=0.95, eps=1e-8), weight decay 0.05 on every parameter with ndim > 1 (this includes the position
embeddings, the mask token and the patch-embedding kernel; biases and LayerNorm vectors are exempt), lr =
blr * global_batch / 256, per-step linear warmup then half-cosine to `min_lr` on fractional epochs, no gradient
clipping unless `optimizer.clip_grad_norm` is set.

One optimizer update consumes one global batch of `config.batch_size` examples, possibly as `accum_steps`
micro-batches inside the step (see steps.py), so "step" always means "optimizer update" here.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax


def peak_learning_rate(blr: float, global_batch: int) -> float:
  """The reference's linear scaling rule: lr = blr * effective batch / 256."""
  return blr * global_batch / 256


def warmup_half_cosine(peak_lr: float, total_steps: int, warmup_steps: float, min_lr: float = 0.0
                       ) -> Callable[[jax.Array], jax.Array]:
  """lr(step) of util/lr_sched.py expressed in optimizer steps.

  The reference evaluates the schedule at the fractional epoch e = step / steps_per_epoch: warmup lr*e/W for
  e < W, then min_lr + (lr - min_lr) * 0.5 * (1 + cos(pi * (e - W) / (E - W))). Multiplying numerator and
  denominator by steps_per_epoch gives the same curve in steps, with a possibly fractional warmup length.
  As in the reference the very first update uses lr = 0.
  """
  if total_steps <= 0:
    raise ValueError(f"total_steps={total_steps} must be positive")
  if not 0 <= warmup_steps < total_steps:
    raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps})")

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak_lr * step / max(warmup_steps, 1e-12)
    progress = jnp.clip((step - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
    cosine = min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
    return jnp.where(step < warmup_steps, warm, cosine)

  return schedule


def decay_mask(params):
  """True where weight decay applies: ndim > 1 (timm 0.4.12 `add_weight_decay`: no decay for 1-D and biases)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(opt_cfg, schedule) -> optax.GradientTransformation:
  """optax chain from `config.optimizer` (keys: b1, b2, eps, weight_decay, clip_grad_norm)."""
  adamw = optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                      weight_decay=opt_cfg.weight_decay, mask=decay_mask)
  if opt_cfg.clip_grad_norm and opt_cfg.clip_grad_norm > 0:
    return optax.chain(optax.clip_by_global_norm(opt_cfg.clip_grad_norm), adamw)
  return adamw
