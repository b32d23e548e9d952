"""Resuming safely: a workdir is only resumed by the run that made it, and stop requests are honoured.

`check_same_run` compares the config that started a workdir (its `config.json`) with the current one before any
array is restored: a different task, model or dataset is one clear error naming every differing key (not a wall
of orbax/asyncio tracebacks ending in a shape error), unless `config.strict_resume=False`. Even then the
checkpoint's parameter shapes are compared with the model's, because no setting can restore a 128-wide
checkpoint into a 64-wide model.
"""
from __future__ import annotations

import json
import logging
import signal
import threading

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from spectralgpt_jax.train import checkpointing, config_checks, freezing

# What defines the state and the experiment of a run (schedule, logging and eval settings may change on resume,
# and so may how the blocks are computed: another implementation of the same maths, e.g. on other hardware).
IDENTITY_PREFIXES = ("task", "model.", "data.name", "optimizer.freeze")   # freeze: which params have moments
# Keys added after runs were started: a config.json without them was made with these values.
ADDED_DEFAULTS = {"optimizer.freeze": ""}
NOT_IDENTITY = ("model.attention_impl", "model.attention_chunk", "model.remat", "model.scan_blocks",
                "model.grad_fence")


def _identity(flat: dict[str, object]) -> dict[str, object]:
  out = {k: v for k, v in flat.items() if (k == "task" or k.startswith(IDENTITY_PREFIXES)) and k not in NOT_IDENTITY}
  if isinstance(out.get("optimizer.freeze"), str):     # the same patterns in another order or spacing: same run
    out["optimizer.freeze"] = ",".join(sorted(set(freezing.parse(out["optimizer.freeze"]))))
  return out


def config_differences(saved: dict, current: dict) -> list[str]:
  """'config.key=now (the run was started with before)' for every identity key that differs."""
  old, new = (_identity({**ADDED_DEFAULTS, **checkpointing.flatten(config, sep=".")}) for config in (saved, current))
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
    if isinstance(a, list) or isinstance(b, list):
      a, b = list(a) if isinstance(a, (list, tuple)) else a, list(b) if isinstance(b, (list, tuple)) else b
    if a != b:
      out.append(f"config.{key}={b!r} (the run was started with {a!r})")
  return out


def check_same_run(workdir: str, config, ckpt_dir: str, step: int, sharded, *, strict: bool = True) -> None:
  """Raise ConfigError if `workdir` was started with another task / model / dataset, or if its checkpoint's
  parameter shapes do not fit the model, or (whatever `strict`) if it froze other parameters."""
  path = epath.Path(workdir) / "config.json"
  if path.exists():
    saved = json.loads(path.read_text())
    current = json.loads(config.to_json_best_effort())
    diffs = config_differences(saved, current)
    frozen = [d for d in diffs if d.startswith("config.optimizer.freeze=")]
    if frozen:     # no setting can restore Adam moments of other parameters
      raise config_checks.ConfigError(
          f"--workdir={workdir}: {frozen[0]}; its checkpoints hold optimizer moments for other parameters. Use a new "
          f"--workdir (with --config.init_from={workdir} to start from its weights) or the run's freeze")
    if diffs and strict:
      raise config_checks.ConfigError(
          f"--workdir={workdir} holds a run of another configuration ({path}): {'; '.join(diffs)}. Use a new "
          "--workdir, restore those values, or set --config.strict_resume=False to resume anyway")
    if diffs:
      logging.warning("resuming %s with a changed configuration: %s", workdir, "; ".join(diffs))
  saved_shapes = checkpointing.saved_shapes(ckpt_dir, step)
  model_shapes = {k: tuple(v.shape) for k, v in _model_shapes(sharded).items()}
  bad = [f"{name} {saved_shapes[name]} in the checkpoint vs {shape} in the model"
         for name, shape in model_shapes.items() if name in saved_shapes and saved_shapes[name] != shape]
  missing = sorted(set(model_shapes) - set(saved_shapes)) + sorted(set(saved_shapes) - set(model_shapes))
  if bad or missing:
    what = "; ".join(bad[:4] + [f"{n} only in one of them" for n in missing[:4]])
    more = len(bad) + len(missing) - min(len(bad), 4) - min(len(missing), 4)
    raise config_checks.ConfigError(
        f"--workdir={workdir}: checkpoint {step} does not fit the configured model: {what}"
        f"{f' (+{more} more)' if more > 0 else ''}. Use a new --workdir or the run's original config.model")


def _model_shapes(sharded) -> dict:
  from spectralgpt_jax.train import state as state_lib
  abstract = sharded.abstract()
  return {state_lib.param_name(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(state_lib.model_params(abstract))[0]}


class StopSignal:
  """Turns SIGTERM into a flag checked between steps (a checkpoint is then written and the run returns)."""

  def __init__(self):
    self.requested = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint after the current step, then stopping")
    self.requested = True

  def should_stop(self, step: int, ckpt: checkpointing.Checkpointer, sync: bool) -> bool:
    if jax.process_count() == 1:
      return self.requested
    # All hosts must stop at the same step: agree on the local flags at sync points, and honour the coordination
    # service's preemption notice (TPU maintenance events) at every step.
    if sync and bool(multihost_utils.process_allgather(np.int32(self.requested)).any()):
      return True
    return ckpt.reached_preemption(step)

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
