"""Checkpoints: resumable training checkpoints, params-only exports, and stage-2 initialisation.

Training checkpoints (orbax `CheckpointManager` under DIR/checkpoints/<step>/) hold two items:
  state  the whole TrainState (params, Adam moments, step) as sharded arrays (OCDBT),
  data   the grain iterator position, one JSON per process (so a resumed run reads exactly the next batch).
Saves are asynchronous (training continues while arrays are written) and atomic (a step directory appears only
when complete), the `LatestN` preservation policy keeps the last `keep` steps. Restores build their target from
the *current* mesh, so a checkpoint written on one mesh loads onto any other (restoring
with the saved shardings fails on another device count: google/orbax#648, #1110).

Exports (DIR/export/, written with `spectralgpt_jax.export`, the format the `.pth` converter also writes) hold the
model params only plus metadata.json. `init_from` fills a new run's model from an export, a run directory or an
official `.pth` file through the one rule table of `interop.transfer` (stage 2, fine-tuning, evaluation).
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Iterator

import grain
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from spectralgpt_jax import models
from spectralgpt_jax.train import state as state_lib

class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager`: one save/restore call for state + data iterator."""

  def __init__(self, directory: str, *, every: int, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory) if "://" not in directory else directory
    self.every = every
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every),
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),    # not max_to_keep (deprecated)
            enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: nnx.State, data_iter: Iterator | None, *, force: bool = False) -> bool:
    """Start an async save if the policy (or `force`) says so. Returns whether a save was started."""
    if step in self.manager.all_steps():
      return False
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    started = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    if started:
      logging.info("checkpoint: saving step %d to %s (async)", step, self.directory)
    return started

  def restore(self, step: int, abstract_state: Any, data_iter: Iterator | None) -> tuple[nnx.State, bool]:
    """State (onto the shardings in `abstract_state`) and, in place, the data iterator position.

    Returns `(state, data_restored)`. grain's iterator state is specific to the number of processes and worker
    processes that wrote it; when it does not fit the current layout (or is missing), only the state is restored
    and `data_restored` is False: the caller then restarts the data stream at the step's global batch instead.
    """
    start = time.time()
    state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    state = state["state"]
    data_restored = False
    if data_iter is not None:
      try:
        self.manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iter)))
        data_restored = True
      except Exception as e:  # grain raises KeyError/ValueError/FileNotFoundError depending on what changed
        logging.warning("checkpoint: the data iterator position saved at step %d does not fit this run's process "
                        "or worker layout (%s: %s); restarting the data stream at global batch %d instead",
                        step, type(e).__name__, e, step)
    logging.info("checkpoint: restored step %d from %s in %.1fs", step, self.directory, time.time() - start)
    return state, data_restored

  def wait(self) -> None:
    """Block until pending async saves are durable (call before exiting, or the last async save may be partial)."""
    self.manager.wait_until_finished()

  def reached_preemption(self, step: int) -> bool:
    """Multi-host preemption notice from the JAX coordination service (TPU maintenance events)."""
    return self.manager.reached_preemption(step)

  def close(self) -> None:
    self.manager.close()


def flatten(tree: Any, prefix: str = "", sep: str = "/") -> dict[str, Any]:
  """{"a": {"b": x}} -> {"a/b": x} (nested dicts, e.g. restored checkpoints or a config's JSON)."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{sep}{key}" if prefix else str(key)
    if isinstance(value, dict):
      out.update(flatten(value, name, sep))
    else:
      out[name] = value
  return out


def _restore_numpy(path: str, subtree: str | None = None) -> dict:
  """Restore a PyTree checkpoint (or one top-level subtree of it) as host numpy arrays, whatever mesh wrote it."""
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  if subtree is not None:
    tree = {subtree: tree[subtree]}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(item=tree, restore_args=restore_args,
                                                                    partial_restore=subtree is not None))
  return restored[subtree] if subtree is not None else restored


def _local_or_remote(path: str) -> epath.Path:
  """An epath (local or gs:// alike; orbax reads both), local paths made absolute."""
  return epath.Path(path if "://" in path else os.path.abspath(path))


def load_model_params(path: str) -> tuple[dict[str, np.ndarray], dict]:
  """Model params as {"encoder/pos_embed/spatial": array, ...} from an export directory, a training run's
  workdir, or its checkpoints/ directory (latest step), local or on GCS. Also returns the export metadata ({} for
  checkpoints)."""
  root = _local_or_remote(path)
  if (root / "metadata.json").exists():
    metadata = json.loads((root / "metadata.json").read_text())
    return flatten(_restore_numpy(str(root / "params"))), metadata
  ckpt_dir = str(root / "checkpoints") if (root / "checkpoints").is_dir() else str(root)
  manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"init_from={path!r}: neither an export (metadata.json) nor a checkpoint directory")
  flat = flatten(_restore_numpy(os.path.join(ckpt_dir, str(step), "state"), subtree="model"))
  return _weights(flat), {"step": step}


def _weights(flat: dict[str, Any]) -> dict[str, Any]:
  """The params among the flattened `model` entries of a training checkpoint. Checkpoints store each nnx.Variable
  as {"value": array}; besides the params the models hold only the key / count of their eager-fallback `rngs`."""
  return {name.removesuffix("/value"): v for name, v in flat.items()
          if name.endswith("/value") and "rngs" not in name.split("/")}


def load_source_params(path: str) -> tuple[dict[str, np.ndarray], dict]:
  """Flat params of any checkpoint `init_from` accepts: an export directory, a run directory (its latest
  checkpoint), or an official PyTorch `.pth` file (read without torch or code execution). Also returns what is
  known about the source (export metadata, the step, or the .pth's args)."""
  where = _local_or_remote(path)
  if where.is_file():
    from spectralgpt_jax.interop import loader
    params, args = loader.read_reference_params(path)
    return params, {"format": "pth", "args": args}
  if not where.exists():
    raise FileNotFoundError(f"init_from={path!r}: no such file or directory")
  params, metadata = load_model_params(path)
  return params, {"format": "export" if "format" in metadata else "run", **metadata}


def init_from(state: nnx.State, path: str, model_cfg: models.ModelConfig, *, arch: str, strict: bool = True):
  """Fill the model params of `state` from `path` through the one rule table (`interop.transfer`): same-shape
  params are copied; a fresh task head, an unused MAE decoder and (reference stage 2) re-initialised spatial
  position embeddings are reported, not errors; anything else that does not fit (missing, unexpected or mis-shaped
  params: another depth or width) raises `CheckpointMismatchError` with one line naming the keys, unless
  `strict=False`. The optimizer state and step are never taken from the source. Returns (state, report)."""
  from spectralgpt_jax.interop import transfer
  source, info = load_source_params(path)
  target = {name: tuple(v.shape) for name, v in _named_params(state).items()}
  values, report = transfer.transfer(source, target, model_cfg, source_name=path, arch=arch, strict=strict)
  new_state = state_lib.replace_params(state, lambda name, current: values.get(name))
  logging.info("init_from %s (%s): %s", path, info.get("arch", info.get("format")), report.summary())
  return new_state, report


def _named_params(state: nnx.State) -> dict[str, Any]:
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state_lib.model_params(state))[0]:
    out[state_lib.param_name(path)] = leaf
  return out


def saved_shapes(ckpt_dir: str, step: int) -> dict[str, tuple[int, ...]]:
  """Model param shapes stored in a training checkpoint (read from its metadata, no array is loaded)."""
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(os.path.join(ckpt_dir, str(step), "state")).item_metadata.tree
  return {name: tuple(meta.shape) for name, meta in _weights(flatten(tree.get("model", {}))).items()}
