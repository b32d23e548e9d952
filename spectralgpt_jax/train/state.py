"""Train state = model + optimizer, created directly sharded on the mesh.

The model's parameters carry logical axis names (`out_sharding` metadata, `eager_sharding=False`), and
`nnx.Optimizer` copies that metadata onto the Adam moments. So one `nnx.get_partition_spec` over the abstract
state gives logical specs for params *and* optimizer state, `sharding.RULES` maps them to the mesh, and
`jax.jit(create, out_shardings=...)` materialises every array on its final devices without a host copy.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
import optax
from flax import nnx

from spectralgpt_jax import models, sharding
from spectralgpt_jax.train import freezing


class TrainState(nnx.Module):
  """The whole mutable training state. `optimizer.step` counts optimizer updates = train steps. The optimizer
  holds moments for the trainable parameters only: those `freeze` (train/freezing.py) does not name."""

  def __init__(self, model: nnx.Module, tx: optax.GradientTransformation, freeze: tuple[str, ...] = ()):
    freezing.check(freeze, param_names({"model": nnx.state(model)}))
    self.model = model
    self.optimizer = nnx.Optimizer(model, tx, wrt=freezing.trainable(freeze))


class ModelState(nnx.Module):
  """Evaluation-only state: the model without optimizer moments (half the memory of a TrainState)."""

  def __init__(self, model: nnx.Module):
    self.model = model


@dataclasses.dataclass
class ShardedState:
  """What the loop needs: the static graph, the sharded state arrays and their shardings (reused everywhere)."""
  graphdef: nnx.GraphDef
  state: nnx.State
  shardings: Any

  def abstract(self) -> Any:
    """ShapeDtypeStructs with the *current* mesh's shardings: the restore target (google/orbax#1110)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), self.state, self.shardings)


def _layout(model_cfg: models.ModelConfig, tx: optax.GradientTransformation | None, mesh: jax.sharding.Mesh,
            seed: int, freeze: tuple[str, ...] = ()) -> tuple[Callable[[], nnx.Module], ShardedState]:
  """The init function and a ShardedState whose `state` is still abstract (eval_shape leaves), with its shardings."""
  def init() -> nnx.Module:
    model = models.build_from_config(model_cfg, seed=seed)
    return ModelState(model) if tx is None else TrainState(model, tx, freeze)

  abstract = nnx.eval_shape(init)
  graphdef, abstract_state = nnx.split(abstract)     # the only split: the graphdef is reused by every step
  shardings = sharding.shardings_for(abstract_state, nnx.get_partition_spec(abstract_state), mesh)
  return init, ShardedState(graphdef, abstract_state, shardings)


def create_sharded(model_cfg: models.ModelConfig, tx: optax.GradientTransformation | None, mesh: jax.sharding.Mesh,
                   seed: int, freeze: tuple[str, ...] = ()) -> ShardedState:
  """A TrainState (or, with `tx=None`, a ModelState) whose arrays are created directly on their devices; `freeze`:
  the patterns of `config.optimizer.freeze` (parsed)."""
  init, layout = _layout(model_cfg, tx, mesh, seed, freeze)
  state = jax.jit(lambda: nnx.state(init()), out_shardings=layout.shardings)()
  return dataclasses.replace(layout, state=state)


def abstract_sharded(model_cfg: models.ModelConfig, tx: optax.GradientTransformation | None,
                     mesh: jax.sharding.Mesh, freeze: tuple[str, ...] = ()) -> ShardedState:
  """The same state as `create_sharded` with ShapeDtypeStructs (carrying the shardings) for arrays: nothing is
  allocated, so a step can be compiled ahead of time for devices this process cannot touch (a TPU topology from a
  CPU host, benchmarks/memory_plan.py)."""
  _, layout = _layout(model_cfg, tx, mesh, seed=0, freeze=freeze)
  return dataclasses.replace(layout, state=layout.abstract())


def model_params(state: nnx.State) -> nnx.State:
  """The model's trainable parameters (what `export` writes and stage 2 initialises from)."""
  return nnx.filter_state(state["model"], nnx.Param)


def param_count(state: nnx.State) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(model_params(state)))


def param_names(state: nnx.State) -> list[str]:
  """The '/'-joined names of the model's parameters (e.g. "encoder/blocks/0/attn/q/kernel")."""
  return [param_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(model_params(state))[0]]


def trained_layers(state: nnx.State, freeze: tuple[str, ...], depth: int) -> list[bool] | None:
  """Per layer id, whether it trains under `freeze` (for the step's FLOP count); None when nothing is frozen."""
  return freezing.trained_layers(param_names(state), freeze, depth)


def frozen_count(state: nnx.State, freeze: tuple[str, ...]) -> int:
  """How many of the model's parameter values `freeze` holds fixed."""
  return sum(int(np.prod(x.shape)) for path, x in jax.tree_util.tree_flatten_with_path(model_params(state))[0]
             if freezing.is_frozen(param_name(path), freeze))


def param_overview(state: nnx.State) -> list[tuple[str, int]]:
  """Parameter count per top-level sub-module of the model (e.g. encoder / decoder)."""
  counts: dict[str, int] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(model_params(state))[0]:
    top = str(getattr(path[0], "key", path[0]))
    counts[top] = counts.get(top, 0) + int(np.prod(leaf.shape))
  return sorted(counts.items())


def _name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def param_name(path) -> str:
  """'/'-joined name of a leaf path of `model_params(state)` (drops the Variable's own `.value` key)."""
  return _name(tuple(k for k in path if not hasattr(k, "name")))


def replace_params(state: nnx.State, new_value: Callable[[str, np.ndarray], np.ndarray | None]) -> nnx.State:
  """A copy of `state` whose model params are replaced where `new_value(name, current)` returns an array.

  `name` is the param path below the model, e.g. "encoder/pos_embed/spatial"; values keep their sharding.
  """
  def one(path, var):
    if not (isinstance(var, nnx.Param) and _name(path[:1]) == "model"):
      return var
    name = _name(path[1:])
    current = var[...]
    value = new_value(name, current)
    if value is None:
      return var
    if tuple(value.shape) != tuple(current.shape):
      raise ValueError(f"param {name}: replacement shape {tuple(value.shape)} != {tuple(current.shape)}")
    return var.replace(jax.device_put(np.asarray(value, current.dtype), current.sharding))

  return jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
