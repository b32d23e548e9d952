"""Optimizers and learning-rate schedules of the reference recipes, selected by `config.optimizer`.

AdamW with decoupled weight decay; lr = blr * global_batch / 256 unless `optimizer.lr` is set. Per recipe:
  pretraining (reference main_pretrain): betas (0.9, 0.95), weight decay 0.05 on every parameter with ndim > 1
    (position embeddings, mask token and patch kernel included; biases and LayerNorm vectors exempt), warmup then
    half-cosine on fractional epochs;
  classification fine-tuning (main_finetune + util/lr_decay.py): betas (0.9, 0.999), no decay on ndim-1 parameters
    and position embeddings, layer-wise lr decay `layer_decay ** (depth + 1 - layer_id)` with layer ids patch /
    position embeddings 0, block i -> i + 1, everything else depth + 1; warmup then cosine;
  SegMunich (released code): AdamW(1e-4, weight decay 1e-5 on everything), warmup from 1e-3 then poly(0.9);
  OSCD (released code): AdamW(1e-4, 1e-5 on everything), lr * 0.95 ** epoch.
No gradient clipping unless `optimizer.clip_grad_norm` is set. One optimizer update consumes one global batch of
`config.batch_size` examples (possibly as `accum_steps` micro-batches inside the step), so "step" always means
"optimizer update" here.
"""
from __future__ import annotations

import math
import re
from typing import Callable

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "poly", "exponential", "constant")


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
  _check_lengths(total_steps, warmup_steps)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak_lr * step / max(warmup_steps, 1e-12)
    progress = jnp.clip((step - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
    cosine = min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
    return jnp.where(step < warmup_steps, warm, cosine)

  return schedule


def warmup_poly(peak_lr: float, total_steps: int, warmup_steps: float, power: float = 0.9,
                warmup_start: float = 1e-3) -> Callable[[jax.Array], jax.Array]:
  """The SegMunich reference's LambdaLR: factor warmup_start*(1-a) + a with a = step/W during warmup, then
  (1 - (step - W) / (T - W)) ** power."""
  _check_lengths(total_steps, warmup_steps)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    alpha = step / max(warmup_steps, 1e-12)
    warm = warmup_start * (1 - alpha) + alpha
    progress = jnp.clip((step - warmup_steps) / (total_steps - warmup_steps), 0.0, 1.0)
    return peak_lr * jnp.where(step <= warmup_steps, warm, (1.0 - progress) ** power)

  return schedule


def epoch_exponential(peak_lr: float, steps_per_epoch: float, rate: float) -> Callable[[jax.Array], jax.Array]:
  """The OSCD reference's ExponentialLR stepped once per epoch: peak * rate ** floor(step / steps_per_epoch)."""
  def schedule(step):
    epoch = jnp.floor(jnp.asarray(step, jnp.float32) / steps_per_epoch)
    return peak_lr * jnp.asarray(rate, jnp.float32) ** epoch
  return schedule


def _check_lengths(total_steps: int, warmup_steps: float) -> None:
  if total_steps <= 0:
    raise ValueError(f"total_steps={total_steps} must be positive")
  if not 0 <= warmup_steps < total_steps:
    raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps})")


def make_schedule(opt_cfg, *, peak_lr: float, total_steps: int, warmup_steps: float,
                  steps_per_epoch: float | None) -> Callable[[jax.Array], jax.Array]:
  """The schedule named by `optimizer.schedule` (config_checks has validated the keys it needs)."""
  kind = opt_cfg.get("schedule", "cosine")
  if kind == "cosine":
    return warmup_half_cosine(peak_lr, total_steps, warmup_steps, opt_cfg.get("min_lr", 0.0))
  if kind == "poly":
    return warmup_poly(peak_lr, total_steps, warmup_steps, opt_cfg.get("poly_power", 0.9),
                       opt_cfg.get("warmup_start", 1e-3))
  if kind == "exponential":
    return epoch_exponential(peak_lr, steps_per_epoch or 1.0, opt_cfg.get("decay_rate", 0.95))
  if kind == "constant":
    return lambda step: jnp.full((), peak_lr, jnp.float32)
  raise ValueError(f"optimizer.schedule={kind!r}: must be one of {SCHEDULES}")


# ----------------------------------------------------------------------------------------------- parameter rules
def _map_named(fn: Callable[[str, jax.Array], object], tree):
  """tree.map with each leaf's parameter name ('/'-joined, e.g. "encoder/blocks/3/attn/q/kernel")."""
  from spectralgpt_jax.train.state import param_name
  flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
  return jax.tree_util.tree_unflatten(treedef, [fn(param_name(path), x) for path, x in flat])


def decay_mask(params, *, decay_1d: bool = False, decay_pos_embed: bool = True):
  """True where weight decay applies. Default = timm 0.4.12 `add_weight_decay` (pretraining): ndim > 1.
  Fine-tuning also exempts the position embeddings (`decay_pos_embed=False`); the dense-task reference decays
  every parameter (`decay_1d=True`)."""
  def rule(name: str, p) -> bool:
    if not decay_pos_embed and "/pos_embed/" in f"/{name}/":
      return False
    return decay_1d or p.ndim > 1
  return _map_named(rule, params)


_BLOCK = re.compile(r"^encoder/blocks/(\d+)/")


def layer_id(name: str, depth: int) -> int:
  """The reference `get_layer_id_for_vit`: patch / position embeddings 0, block i -> i + 1, the rest depth + 1."""
  if name.startswith(("encoder/patch_embed/", "encoder/pos_embed/")):
    return 0
  match = _BLOCK.match(name)
  return int(match.group(1)) + 1 if match else depth + 1


def layer_scales(params, depth: int, decay: float):
  """Per-parameter lr multipliers decay ** (depth + 1 - layer_id) (1.0 for heads and final norm)."""
  return _map_named(lambda name, _: decay ** (depth + 1 - layer_id(name, depth)), params)


def scale_by_layer(depth: int, decay: float) -> optax.GradientTransformation:
  """Multiplies each update by its layer's lr scale (stateless: one Adam state for all layers, unlike
  optimizer-per-layer implementations)."""
  def update(updates, state, params=None):
    del params
    scales = layer_scales(updates, depth, decay)
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(opt_cfg, schedule, *, depth: int | None = None) -> optax.GradientTransformation:
  """optax chain from `config.optimizer` (b1, b2, eps, weight_decay, clip_grad_norm, layer_decay, decay_1d,
  decay_pos_embed). Layer decay needs the encoder `depth`.

  Update = -lr * layer_scale * (adam + wd * p): the layer scale multiplies the decoupled weight decay too, as torch
  AdamW does with per-group learning rates.
  """
  mask = lambda params: decay_mask(params, decay_1d=opt_cfg.get("decay_1d", False),
                                   decay_pos_embed=opt_cfg.get("decay_pos_embed", True))
  layer_decay = opt_cfg.get("layer_decay", 1.0)
  if layer_decay == 1.0:
    tx = optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay,
                     mask=mask)
  else:
    if depth is None:
      raise ValueError("optimizer.layer_decay != 1 needs the encoder depth")
    tx = optax.chain(optax.scale_by_adam(b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps),
                     optax.add_decayed_weights(opt_cfg.weight_decay, mask),
                     scale_by_layer(depth, layer_decay),
                     optax.scale_by_learning_rate(schedule))
  if opt_cfg.clip_grad_norm and opt_cfg.clip_grad_norm > 0:
    return optax.chain(optax.clip_by_global_norm(opt_cfg.clip_grad_norm), tx)
  return tx
