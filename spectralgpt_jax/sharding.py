"""Device mesh and the one table that maps the model's logical axis names onto it.

The mesh always has the three axes ("data", "fsdp", "model"):
  data   pure data parallelism (params replicated across it),
  fsdp   data parallelism that also shards params and optimizer state (ZeRO-3 style),
  model  tensor parallelism over attention heads and MLP hidden units.
The batch is split over ("data", "fsdp"). Axis types are `Auto` and passed explicitly because `jax.make_mesh`
defaults to Explicit axes in current JAX and orbax does not preserve Explicit meshes (google/orbax#2408).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

# Logical name -> mesh axis (or None = replicated). Every name the models use must be listed: an unknown name would
# otherwise be read as a mesh-axis name, so `logical_to_mesh_spec` rejects it instead.
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": BATCH_AXES,
    "embed": "fsdp",      # model width: FSDP shards every matrix (and its Adam moments) along it
    "mlp": "model",       # tensor parallel: MLP hidden units ...
    "heads": "model",     # ... and attention heads (q/k/v outputs = heads * head_dim)
    "patch": None,        # patch-vector length t*p*p: small, replicated
    "classes": None,
    "vocab_pos": None,    # token positions of the position embeddings
    "norm": None,         # LayerNorm / GroupNorm scales and biases: tiny vectors, replicated
    # seg / cd head (models/neck.py): conv kernels are [channels_in, channels], sharded like the transformer's
    # [embed, mlp] matrices (FSDP over the reduced dimension, tensor parallel over the outputs); the 1x1 convs that
    # read the encoder's map use "embed" for their input dimension.
    "channels": "model",
    "channels_in": "fsdp",
    "spectral": None,     # the T' spectral groups of the 4 -> 1 merge: 4 weights, replicated
}


class MeshError(ValueError):
  """An impossible mesh / batch combination, reported with the config key that causes it."""


def resolve_mesh_shape(mesh_cfg: Mapping[str, int], device_count: int) -> tuple[int, int, int]:
  """Sizes of ("data", "fsdp", "model") from `config.mesh`; at most one entry may be -1 (takes the rest)."""
  sizes = []
  for axis in MESH_AXES:
    if axis not in mesh_cfg:
      raise MeshError(f"config.mesh.{axis} is missing (need mesh.data, mesh.fsdp, mesh.model)")
    size = int(mesh_cfg[axis])
    if size == 0 or size < -1:
      raise MeshError(f"config.mesh.{axis}={size}: must be a positive size or -1")
    sizes.append(size)
  extra = sorted(set(mesh_cfg) - set(MESH_AXES))
  if extra:
    raise MeshError(f"config.mesh has unknown axes {extra}; the mesh axes are {MESH_AXES}")
  if sizes.count(-1) > 1:
    raise MeshError(f"config.mesh={dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    axis = MESH_AXES[sizes.index(-1)]
    if device_count % fixed:
      raise MeshError(f"config.mesh.{axis}=-1: the other axes multiply to {fixed}, which does not divide the "
                      f"{device_count} devices")
    sizes[sizes.index(-1)] = device_count // fixed
  elif fixed != device_count:
    raise MeshError(f"config.mesh={dict(zip(MESH_AXES, sizes))} needs {fixed} devices but there are {device_count}; "
                    "set one of config.mesh.data/fsdp/model to -1 to absorb the remaining devices")
  return tuple(sizes)


def make_mesh(mesh_cfg: Mapping[str, int], devices: list | None = None) -> Mesh:
  """The ("data", "fsdp", "model") mesh over all devices, or over `devices` (tests use subsets)."""
  if devices is None:
    shape = resolve_mesh_shape(mesh_cfg, jax.device_count())
    # Topology-aware device order (ICI rings on TPU, NVLink islands on GPU).
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  shape = resolve_mesh_shape(mesh_cfg, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) dimension split over all data-parallel devices; a prefix for every batch leaf."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_to_mesh_spec(logical: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Map one logical PartitionSpec to a mesh PartitionSpec.

  A dimension whose size is not divisible by its mesh axes is left replicated (e.g. a 2-head tiny model on a
  4-way model axis) rather than failing: correctness does not depend on the layout, only memory does.
  """
  out = []
  used: set[str] = set()
  for dim, name in enumerate(tuple(logical) + (None,) * (len(shape) - len(logical))):
    if name is None:
      out.append(None)
      continue
    if isinstance(name, tuple):
      raise ValueError(f"logical axis {name!r}: one logical name per dimension expected")
    if name not in RULES:
      raise KeyError(f"logical axis name {name!r} has no entry in spectralgpt_jax.sharding.RULES")
    target = RULES[name]
    axes = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    axes = tuple(a for a in axes if mesh.shape[a] > 1 and a not in used)
    size = math.prod(mesh.shape[a] for a in axes)
    if not axes or shape[dim] % size:
      out.append(None)
      continue
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else axes)
  while out and out[-1] is None:
    out.pop()
  return P(*out)


def constrain(x: jax.Array, *logical: str | None) -> jax.Array:
  """Activation layout hint by logical names (e.g. `constrain(x, "batch")` for [N, H, W, C] maps), applied when
  tracing under `jax.set_mesh` (the train / eval steps are) and a no-op otherwise (eager use, no mesh).

  XLA's sharding propagation otherwise picks the layout of every intermediate on its own; in the seg/cd head (small
  spatial maps, slices, concatenations of channel-sharded convs) a (2, 2, 2) mesh then produced wrong gradients
  (tests/tasks/test_tasks_sharding.py). Pinning the head's feature maps to "batch-sharded, channels whole" makes
  every layout explicit; the weights stay sharded by RULES.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_mesh_spec(P(*logical), tuple(x.shape), mesh))


def shardings_for(abstract_state: Any, logical_specs: Any, mesh: Mesh) -> Any:
  """NamedShardings for every leaf of `abstract_state` from the matching tree of logical PartitionSpecs."""
  def one(leaf, spec):
    return NamedSharding(mesh, logical_to_mesh_spec(spec, tuple(leaf.shape), mesh))
  return jax.tree.map(one, abstract_state, logical_specs, is_leaf=lambda x: isinstance(x, P))


def log_layout(abstract_state: Any, shardings: Any, limit: int = 400) -> None:
  """One line per parameter: path, shape, mesh spec (so a run's layout can be read back from its log)."""
  flat_shapes = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
  flat_shard = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, leaf), sh in list(zip(flat_shapes, flat_shard))[:limit]:
    logging.info("  %-70s %-20s %s", jax.tree_util.keystr(path), tuple(leaf.shape), sh.spec)


def to_global_batch(local_batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's rows of the global batch -> global jax.Arrays (multi-host safe)."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}
