"""One evaluation pass, for every task: jitted per-batch outputs -> host -> the task's dataset-level metrics.

Per batch, the task's `eval_outputs` (jitted, sharded like the train step) returns `sums` (reduced over the batch
on device, replicated) and `rows` (per-example outputs with the batch axis, e.g. class scores or window logits).
Rows and host-only entries (example ids, strings) are gathered from every process in the global batch order, so
each process's evaluator sees every example of the split exactly once (the data layer pads the last batch and
marks padding rows `valid = 0`). Metrics are computed once at the end, from all examples: never as a mean of
per-batch metrics. Process 0 writes DIR/metrics.json, the task's predictions / per-class table / figures.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from spectralgpt_jax import sharding
from spectralgpt_jax.tasks import reporting
from spectralgpt_jax.train import steps

HOST_KEYS = ("id",)      # batch entries that stay numpy on the host (strings cannot be device arrays)


def make_eval_fn(graphdef, key: jax.Array, task, state_shardings, batch_sharding) -> Callable:
  replicated = sharding.replicated(batch_sharding.mesh)
  jitted = jax.jit(functools.partial(steps.eval_step, graphdef, key, task),
                   in_shardings=(state_shardings, batch_sharding, replicated),
                   out_shardings={"sums": replicated, "rows": batch_sharding})

  def eval_fn(*args):
    with jax.set_mesh(batch_sharding.mesh):   # traced under the mesh: the models' activation constraints apply
      return jitted(*args)
  return eval_fn


def gather_rows(rows: dict[str, jax.Array]) -> dict[str, np.ndarray]:
  """Global batch-sharded arrays -> full numpy arrays on every process (process-major row order)."""
  if jax.process_count() == 1:
    return {k: np.asarray(v) for k, v in rows.items()}
  return {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in rows.items()}


def gather_strings(local: np.ndarray) -> np.ndarray:
  """This process's strings of a global batch -> all processes' strings, in the global row order."""
  local = np.asarray(local).astype(str)
  if jax.process_count() == 1:
    return local
  encoded = [s.encode("utf-8") for s in local]
  width = int(multihost_utils.process_allgather(np.int32(max((len(e) for e in encoded), default=1))).max())
  buffer = np.zeros((len(encoded), width), np.uint8)
  for i, e in enumerate(encoded):
    buffer[i, :len(e)] = np.frombuffer(e, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(buffer, tiled=True))
  return np.array([bytes(row).rstrip(b"\0").decode("utf-8") for row in gathered])


def evaluate(task, eval_fn: Callable, state, iterator: Iterator, replicated) -> tuple[dict[str, Any], Any]:
  """One pass over `iterator`; returns (metrics, evaluator). The iterator is consumed (and closed) here."""
  evaluator = task.evaluator()
  start = time.time()
  batches = 0
  try:
    for index, batch in enumerate(iterator):
      host = {k: gather_strings(batch.pop(k)) for k in HOST_KEYS if k in batch}
      out = eval_fn(state, batch, sharding.to_global_batch({"i": np.int32(index)}, replicated)["i"])
      evaluator.add(jax.device_get(out["sums"]), gather_rows(out["rows"]), host)
      batches += 1
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()
  result = evaluator.result()
  logging.info("evaluation: %d batches in %.1fs, %s", batches, time.time() - start, summary_line(result))
  return result, evaluator


def scalars(result: dict[str, Any]) -> dict[str, float]:
  """The scalar entries of a result (what goes into metrics.jsonl and TensorBoard)."""
  return {k: float(v) for k, v in result.items() if isinstance(v, (int, float, np.floating, np.integer))
          and not isinstance(v, bool)}


def summary_line(result: dict[str, Any]) -> str:
  return " ".join(f"{k}={v:.4g}" for k, v in scalars(result).items())


def write_outputs(directory: str, evaluator, result: dict[str, Any], **extra) -> list[str]:
  """DIR/metrics.json (flat: the task's metrics, `split`, `num_examples` and `extra`) plus the task's files."""
  if jax.process_index() != 0:
    return []
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, "metrics.json")
  reporting.write_json(path, {**result, **extra})
  written = [path, *evaluator.write(directory, result)]
  logging.info("evaluation outputs written: %s", ", ".join(written))
  return written
