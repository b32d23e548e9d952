"""Pure, task-generic step functions: `train_step(state, batch) -> (state, metrics)` and `eval_step`.

Everything that is not an array (graphdef, task, schedule) is bound with `functools.partial` by the caller, so the
jitted functions take and return only arrays and are compiled once with explicit shardings. The task (see
`spectralgpt_jax/tasks/base.py`) supplies the per-example randomness, the loss and the evaluation outputs; this
module supplies what every task shares: the step key, gradient accumulation, the optimizer update and the
non-finite guard.

Randomness: step s uses `fold_in(key, s)`: a resumed run draws exactly what it would have drawn, and no RNG state
needs checkpointing.

Gradient accumulation runs inside the step as a `lax.scan` over `accum_steps` micro-batches (MaxText's choice;
optax.MultiSteps would run the inner update on every micro-step): one call = one optimizer update on the full
global batch, so the schedule, the step counter, logging and checkpoints all count optimizer updates. The task's
per-example randomness is drawn for the whole batch before it is split, so k micro-batches give the same gradient
(up to float summation order) as one k-times larger batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from spectralgpt_jax import sharding
from spectralgpt_jax.train import freezing


@dataclasses.dataclass(frozen=True)
class StepConfig:
  task: Any                                # a spectralgpt_jax.tasks.base.Task
  accum_steps: int = 1
  freeze: tuple[str, ...] = ()             # config.optimizer.freeze, parsed: these params get no gradient
  data_axes: tuple[str, ...] = sharding.BATCH_AXES


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
  prepare_key, dropout_key = jax.random.split(jax.random.fold_in(base_key, step))
  batch = cfg.task.prepare(batch, prepare_key, batch_sharding)
  # Differentiate the trainable params only: frozen ones ride in `rest`, so XLA computes none of their gradients.
  model_def, params, rest = nnx.split(ts.model, freezing.trainable(cfg.freeze), ...)
  metric_keys = ("loss",) + tuple(k for k in cfg.task.train_metrics if k != "loss")

  def loss_fn(params, micro_batch, key):
    model = nnx.merge(model_def, params, rest)
    loss, aux = cfg.task.loss(model, micro_batch, key=key, train=True)
    values = {"loss": loss, **aux}
    return loss, {k: values[k].astype(jnp.float32) for k in metric_keys}

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  k = cfg.accum_steps
  if k == 1:
    (_, losses), grads = grad_fn(params, batch, dropout_key)
  else:
    micro_sharding = NamedSharding(batch_sharding.mesh, P(None, cfg.data_axes))
    micro = (jax.tree.map(lambda x: _split_micro(x, k, micro_sharding), batch), jax.random.split(dropout_key, k))

    def accumulate(carry, inputs):
      grads_sum, losses_sum = carry
      (_, losses), grads = grad_fn(params, *inputs)
      return (jax.tree.map(jnp.add, grads_sum, grads), jax.tree.map(jnp.add, losses_sum, losses)), None

    zeros = (jax.tree.map(jnp.zeros_like, params), {key: jnp.zeros((), jnp.float32) for key in metric_keys})
    (grads, losses), _ = jax.lax.scan(accumulate, zeros, micro)
    grads, losses = jax.tree.map(lambda g: g / k, (grads, losses))

  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(losses["loss"]) & jnp.isfinite(grad_norm)
  ts.optimizer.update(ts.model, grads)
  after = nnx.state(ts)

  def guard(path, new, old):
    if jax.tree_util.keystr(path).startswith("['optimizer']['step']"):
      return new                                       # always advance: it indexes the data and the randomness
    return jnp.where(finite, new, old)

  new_state = jax.tree_util.tree_map_with_path(guard, after, before)
  metrics = {**losses, "grad_norm": grad_norm, "lr": schedule(step), "finite": finite.astype(jnp.float32)}
  return new_state, metrics


def eval_step(graphdef: nnx.GraphDef, base_key: jax.Array, task, state: nnx.State, batch: dict[str, jax.Array],
              index: jax.Array) -> dict[str, dict[str, jax.Array]]:
  """The task's evaluation outputs for eval batch `index` (its key is `fold_in(key, index)`, the same on every
  pass, so validation curves do not depend on random draws)."""
  model = nnx.merge(graphdef, state).model
  return task.eval_outputs(model, batch, key=jax.random.fold_in(base_key, index))


def compile_train_step(fn: Callable, state: Any, state_shardings: Any, batch: dict, batch_sharding: NamedSharding):
  """AOT-compile the donated step once; returns the compiled callable and its memory analysis (may be None)."""
  replicated = NamedSharding(batch_sharding.mesh, P())
  jitted = jax.jit(fn, in_shardings=(state_shardings, batch_sharding), out_shardings=(state_shardings, replicated),
                   donate_argnums=0)
  abstract_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding), batch)
  with jax.set_mesh(batch_sharding.mesh):     # the models' activation constraints (sharding.constrain) need it
    compiled = jitted.lower(state, abstract_batch).compile()
  try:
    memory = compiled.memory_analysis()
  except Exception:   # not every backend implements it
    memory = None
  return compiled, memory
