"""Pure step functions: `train_step(state, batch) -> (state, metrics)`, `eval_step`, `reconstruct`.

Everything that is not an array (graphdef, config, schedule) is bound with `functools.partial` by the caller, so
the jitted functions take and return only arrays and are compiled once with explicit shardings.

Randomness: the masking noise of step s is drawn from `fold_in(key, s)` inside the step and passed to the model as
`noise=`, so a resumed run draws exactly the noise it would have drawn, and no RNG state needs checkpointing.

Gradient accumulation runs inside the step as a `lax.scan` over `accum_steps` micro-batches (MaxText's choice,
architecture.md pitfall 26): one call = one optimizer update on the full global batch, so the schedule, the step
counter, logging and checkpoints all count optimizer updates. Per-example noise is drawn for the whole batch before
it is split, so k micro-batches give the same gradient (up to float summation order) as one k-times larger batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from spectralgpt_jax import models, sharding

LOSS_KEYS = ("loss", "loss_masked", "loss_spectral")


@dataclasses.dataclass(frozen=True)
class StepConfig:
  model: models.ModelConfig
  mask_ratio: float
  accum_steps: int = 1
  data_axes: tuple[str, ...] = sharding.BATCH_AXES


def _draw_noise(key: jax.Array, batch: int, cfg: StepConfig, batch_sharding: NamedSharding) -> jax.Array:
  noise = jax.random.uniform(key, (batch, cfg.model.num_tokens), jnp.float32)
  # threefry is partitionable in current JAX, so the values do not depend on the layout chosen here.
  return jax.lax.with_sharding_constraint(noise, batch_sharding)


def _split_micro(x: jax.Array, k: int, micro_sharding: NamedSharding) -> jax.Array:
  """[B, ...] -> [k, B/k, ...] taking rows i, i+k, i+2k, ... for micro-batch i.

  Strided rather than contiguous so that every device keeps contributing rows it already holds to every
  micro-batch (no cross-device shuffle of the batch).
  """
  x = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
  return jax.lax.with_sharding_constraint(x, micro_sharding)


def train_step(graphdef: nnx.GraphDef, base_key: jax.Array, schedule: Callable, cfg: StepConfig,
               batch_sharding: NamedSharding, state: nnx.State, batch: dict[str, jax.Array]):
  """One optimizer update. Non-finite loss or gradients leave params and optimizer moments untouched (the step
  counter still advances) and report `finite=0`; the loop then stops or continues (`skip_nonfinite`)."""
  before = jax.tree.map(lambda x: x, state)          # snapshot of the incoming leaves for the non-finite guard
  ts = nnx.merge(graphdef, state)
  step = ts.optimizer.step[...]
  noise_key, dropout_key = jax.random.split(jax.random.fold_in(base_key, step))
  images = batch["image"]
  noise = _draw_noise(noise_key, images.shape[0], cfg, batch_sharding)
  model_def, params, rest = nnx.split(ts.model, nnx.Param, ...)

  def loss_fn(params, x, noise, key):
    model = nnx.merge(model_def, params, rest)
    out = model(x, cfg.mask_ratio, noise=noise, train=True, rngs=nnx.Rngs(dropout=key))
    return out["loss"], {k: out[k].astype(jnp.float32) for k in LOSS_KEYS}

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  k = cfg.accum_steps
  if k == 1:
    (_, losses), grads = grad_fn(params, images, noise, dropout_key)
  else:
    micro_sharding = NamedSharding(batch_sharding.mesh, P(None, cfg.data_axes))
    micro = (_split_micro(images, k, micro_sharding), _split_micro(noise, k, micro_sharding),
             jax.random.split(dropout_key, k))

    def accumulate(carry, inputs):
      grads_sum, losses_sum = carry
      (_, losses), grads = grad_fn(params, *inputs)
      return (jax.tree.map(jnp.add, grads_sum, grads), jax.tree.map(jnp.add, losses_sum, losses)), None

    zeros = (jax.tree.map(jnp.zeros_like, params), {key: jnp.zeros((), jnp.float32) for key in LOSS_KEYS})
    (grads, losses), _ = jax.lax.scan(accumulate, zeros, micro)
    grads, losses = jax.tree.map(lambda g: g / k, (grads, losses))

  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(losses["loss"]) & jnp.isfinite(grad_norm)
  ts.optimizer.update(ts.model, grads)
  after = nnx.state(ts)

  def guard(path, new, old):
    if jax.tree_util.keystr(path).startswith("['optimizer']['step']"):
      return new                                       # always advance: it indexes the data and the noise
    return jnp.where(finite, new, old)

  new_state = jax.tree_util.tree_map_with_path(guard, after, before)
  metrics = {**losses, "grad_norm": grad_norm, "lr": schedule(step), "finite": finite.astype(jnp.float32)}
  return new_state, metrics


def eval_step(graphdef: nnx.GraphDef, base_key: jax.Array, cfg: StepConfig, batch_sharding: NamedSharding,
              state: nnx.State, batch: dict[str, jax.Array], index: jax.Array) -> dict[str, jax.Array]:
  """Sums of the per-example loss terms over the valid rows of one held-out batch, and their count.

  The masking noise of eval batch i is `fold_in(key, i)`: every validation pass sees the same masks, so eval
  curves measure the model, not the mask draw. Per-example terms come from a vmap over single examples; their
  mean equals the batch loss because every example masks the same number of tokens.
  """
  model = nnx.merge(graphdef, state).model
  images = batch["image"]
  valid = batch.get("valid", jnp.ones(images.shape[:1], bool)).astype(jnp.float32)
  noise = _draw_noise(jax.random.fold_in(base_key, index), images.shape[0], cfg, batch_sharding)

  def one(x, n):
    out = model(x[None], cfg.mask_ratio, noise=n[None], train=False)
    return {k: out[k].astype(jnp.float32) for k in LOSS_KEYS}

  per_example = jax.vmap(one)(images, noise)
  sums = {k: jnp.sum(v * valid) for k, v in per_example.items()}
  return {**sums, "count": jnp.sum(valid)}


def reconstruct(graphdef: nnx.GraphDef, base_key: jax.Array, cfg: StepConfig, state: nnx.State,
                images: jax.Array) -> dict[str, jax.Array]:
  """Input, masked input and reconstruction images [n, H, W, bands] for the PNG previews.

  The reconstruction shows the model's prediction on masked tokens and the input on visible ones (as the MAE
  paper figures); masked regions of the masked input are zero.
  """
  model = nnx.merge(graphdef, state).model
  noise = jax.random.uniform(base_key, (images.shape[0], cfg.model.num_tokens), jnp.float32)
  out = model(images, cfg.mask_ratio, noise=noise, train=False)
  pred = models.unpatchify(out["pred"], cfg.model)
  removed = models.unpatchify(jnp.repeat(out["mask"][..., None], cfg.model.patch_dim, axis=-1), cfg.model)
  return {"input": images, "masked": images * (1 - removed), "reconstruction": images * (1 - removed) + pred * removed}


def compile_train_step(fn: Callable, state: Any, state_shardings: Any, batch: dict, batch_sharding: NamedSharding):
  """AOT-compile the donated step once; returns the compiled callable and its memory analysis (may be None)."""
  replicated = NamedSharding(batch_sharding.mesh, P())
  jitted = jax.jit(fn, in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, replicated),
                   donate_argnums=0)
  abstract_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding), batch)
  compiled = jitted.lower(state, abstract_batch).compile()
  try:
    memory = compiled.memory_analysis()
  except Exception:   # not every backend implements it
    memory = None
  return compiled, memory
