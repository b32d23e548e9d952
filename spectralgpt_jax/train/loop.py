"""SpectralGPT MAE pretraining: config -> mesh -> sharded state -> data -> restore -> compiled step -> loop.

One readable loop (big_vision style). What happens, in order:
  1. the config is checked against the device count (no compile before that),
  2. the mesh ("data", "fsdp", "model") is built and the train state is created directly sharded on it,
  3. the grain iterator is created; an existing checkpoint in DIR/checkpoints is restored (state AND iterator
     position: a killed run continues exactly where it stopped), else `init_from` loads a stage-1 model,
  4. the one pure train step is AOT-compiled with donated state and its memory analysis is logged,
  5. the loop runs; every `log_every` steps the metrics of the interval are fetched (the only host sync), checked
     for non-finite values and written; evals, previews and async checkpoints happen at their intervals,
  6. at the end: final checkpoint, final validation, params-only export with metadata.json.
SIGTERM (TPU preemption, SLURM time limit) makes the loop save a checkpoint at the current step and return.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from spectralgpt_jax import export, sharding
from spectralgpt_jax.data import bands as band_registry
from spectralgpt_jax.train import checkpointing, config_checks, images, metrics, optim, steps
from spectralgpt_jax.train import state as state_lib

LOGGED_MEANS = ("loss", "loss_masked", "loss_spectral", "grad_norm")


class NonFiniteError(FloatingPointError):
  """Raised when a step produced a non-finite loss or gradient and `skip_nonfinite` is off."""


def pipeline_iterator(data_cfg, *, global_batch_size: int, sharding: jax.sharding.NamedSharding, seed: int,
                      train: bool, start_batch: int = 0) -> Iterator:
  """The data layer's grain iterator (spectralgpt_jax.data.pipeline, docs/contracts.md)."""
  from spectralgpt_jax.data import pipeline   # imported here so that configs can be checked without it
  return pipeline.pretrain_iterator(data_cfg, global_batch_size=global_batch_size, sharding=sharding, seed=seed,
                                    train=train, start_batch=start_batch)


def num_train_examples(data_cfg) -> int:
  """Training-set size (for epoch-based schedules): the length of the data layer's training source."""
  from spectralgpt_jax.data import pipeline
  source, _ = pipeline.make_source(data_cfg, data_cfg.train_split)
  return len(source)


class _StopSignal:
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


def _log_memory(memory) -> None:
  if memory is None:
    logging.info("compiled train step: no memory analysis on this backend")
    return
  mib = lambda name: getattr(memory, name, 0) / 2**20
  logging.info("compiled train step memory per device: arguments %.1f MiB, outputs %.1f MiB (aliased %.1f MiB), "
               "temporaries %.1f MiB, code %.1f MiB", mib("argument_size_in_bytes"), mib("output_size_in_bytes"),
               mib("alias_size_in_bytes"), mib("temp_size_in_bytes"), mib("generated_code_size_in_bytes"))


def _interval_summary(entries: list[tuple[int, dict]], skip_nonfinite: bool) -> dict[str, float]:
  """Mean of the loss terms over the finite steps of a log interval; raises on a non-finite step unless skipped."""
  values = [(step, {k: float(v) for k, v in m.items()}) for step, m in jax.device_get(entries)]
  bad = [(step, m) for step, m in values if m["finite"] < 1]
  if bad and not skip_nonfinite:
    step, m = bad[0]
    raise NonFiniteError(f"non-finite loss or gradient at step {step} (loss={m['loss']}, grad_norm="
                         f"{m['grad_norm']}); the update was not applied and the state is intact. Set "
                         "config.skip_nonfinite=True to skip such updates, or lower the learning rate.")
  good = [m for _, m in values if m["finite"] >= 1] or [values[-1][1]]
  summary = {k: float(np.mean([m[k] for m in good])) for k in LOGGED_MEANS}
  summary["lr"] = values[-1][1]["lr"]
  if bad:
    summary["skipped_steps"] = float(len(bad))
    logging.warning("skipped %d non-finite update(s) at steps %s", len(bad), [s for s, _ in bad])
  return summary


def run(config, workdir: str, *, make_iterator: Callable[..., Iterator] | None = None) -> dict[str, Any]:
  """Pretrain as `config` says, writing everything under `workdir`; resumes if it holds a checkpoint.

  `make_iterator(data_cfg, global_batch_size=, sharding=, seed=, train=)` defaults to the data layer's grain
  pipeline; tests pass a synthetic source with the same signature. Returns a summary (steps, last metrics).
  """
  make_iterator = make_iterator or pipeline_iterator
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)

  # ---------------------------------------------------------------------------------------------- config & mesh
  needs_epochs = config.total_steps <= 0 or (config.warmup_steps <= 0 and config.warmup_epochs > 0)
  examples = num_train_examples(config.data) if needs_epochs and not config.num_train_examples else None
  plan = config_checks.check(config, device_count=jax.device_count(), process_count=jax.process_count(),
                             num_train_examples=examples)
  mesh = sharding.make_mesh(config.mesh)
  batch_sharding, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  logging.info("mesh %s over %d devices (%d processes); %d steps, peak lr %.3g, warmup %.1f steps, "
               "%d micro-batch(es) of %d", dict(mesh.shape), jax.device_count(), jax.process_count(),
               plan.total_steps, plan.peak_lr, plan.warmup_steps, config.optimizer.accum_steps, plan.micro_batch)

  # ---------------------------------------------------------------------------------------------- state
  schedule = optim.warmup_half_cosine(plan.peak_lr, plan.total_steps, plan.warmup_steps, config.optimizer.min_lr)
  tx = optim.make_optimizer(config.optimizer, schedule)
  sharded = state_lib.create_sharded(plan.model, tx, mesh, config.seed)
  num_params = state_lib.param_count(sharded.state)
  logging.info("model %s: %s parameters (%s)", config.model.name, f"{num_params:,}",
               ", ".join(f"{k} {v:,}" for k, v in state_lib.param_overview(sharded.state)))
  sharding.log_layout(sharded.abstract(), sharded.shardings, limit=40)

  # ---------------------------------------------------------------------------------------------- data & restore
  make = functools.partial(make_iterator, config.data, sharding=batch_sharding, seed=config.seed)
  train_iter = make(global_batch_size=config.batch_size, train=True)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), every=config.checkpoint_every,
                                    keep=config.keep_checkpoints, async_save=config.async_checkpoints)
  state, start_step = sharded.state, 0
  if (latest := ckpt.latest_step()) is not None:
    state, data_restored = ckpt.restore(latest, sharded.abstract(), train_iter)
    start_step = latest
    if not data_restored:   # another process/worker layout: one step = one global batch, so batch `latest` is next
      _close(train_iter)
      train_iter = make(global_batch_size=config.batch_size, train=True, start_batch=latest)
    logging.info("resuming from step %d", start_step)
  elif config.init_from:
    state = checkpointing.init_from_pretrained(state, config.init_from, plan.model)

  writer = metrics.MetricWriter(workdir, tensorboard=config.tensorboard)
  writer.write_config(workdir, config.to_json_best_effort(indent=2))
  bands = tuple(config.data.get("bands", None) or band_registry.CANONICAL)
  summary: dict[str, Any] = {"start_step": start_step, "num_params": num_params, "workdir": workdir}
  if start_step >= plan.total_steps:
    logging.info("run already complete (step %d of %d)", start_step, plan.total_steps)
    _export(config, workdir, state, plan, bands, start_step)
    _close(train_iter)
    ckpt.close()
    writer.close()
    return {**summary, "final_step": start_step}

  # ---------------------------------------------------------------------------------------------- compiled functions
  step_cfg = steps.StepConfig(model=plan.model, mask_ratio=config.model.mask_ratio,
                              accum_steps=config.optimizer.accum_steps)
  key = jax.random.key(config.seed)
  train_key, eval_key, preview_key = (jax.random.fold_in(key, i) for i in range(3))
  batch = next(train_iter)       # the first batch of this run, also the compile example
  compiled_step, memory = steps.compile_train_step(
      functools.partial(steps.train_step, sharded.graphdef, train_key, schedule, step_cfg, batch_sharding),
      state, sharded.shardings, batch, batch_sharding)
  _log_memory(memory)
  eval_fn = jax.jit(functools.partial(steps.eval_step, sharded.graphdef, eval_key, step_cfg, batch_sharding),
                    in_shardings=(sharded.shardings, batch_sharding, replicated), out_shardings=replicated)
  recon_fn = jax.jit(functools.partial(steps.reconstruct, sharded.graphdef, preview_key, step_cfg),
                     in_shardings=(sharded.shardings, replicated), out_shardings=replicated)

  def evaluate(state) -> dict[str, float]:
    eval_iter = make(global_batch_size=config.eval_batch_size, train=False)
    totals = None
    try:
      for index, eval_batch in enumerate(eval_iter):
        sums = eval_fn(state, eval_batch, sharding.to_global_batch({"i": np.int32(index)}, replicated)["i"])
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    finally:
      _close(eval_iter)
    totals = jax.device_get(totals)
    count = max(float(totals.pop("count")), 1.0)
    return {f"val_{k}": float(v) / count for k, v in totals.items()}

  preview_images = None
  if config.image_every:
    source = batch["image"]
    if config.eval_every:    # prefer fixed held-out images, so successive previews are comparable
      eval_iter = make(global_batch_size=config.eval_batch_size, train=False)
      source = next(iter(eval_iter))["image"]
      _close(eval_iter)
    n = min(config.num_preview, source.shape[0])
    preview_images = jax.jit(lambda x: x[:n], out_shardings=replicated)(source)

  def save_preview(state, step: int) -> None:
    out = recon_fn(state, preview_images)
    if jax.process_index() == 0:
      path = images.save_preview(workdir, step, jax.device_get(out), bands)
      logging.info("preview written: %s", path)

  # ---------------------------------------------------------------------------------------------- train loop
  stop = _StopSignal()
  progress = metrics.Progress(start_step, plan.total_steps, enabled=config.progress_bar)
  pending: list[tuple[int, dict]] = []
  last_log_time, last_log_step, paused_s = time.time(), start_step, 0.0
  step, preempted, last = start_step, False, {}

  def pause_clock(work: Callable[[], Any]) -> Any:
    """Run periodic work (eval, preview, checkpoint) outside the training throughput measurement."""
    nonlocal paused_s
    jax.block_until_ready(state)          # finish the queued train steps first: they belong to training time
    start = time.time()
    result = work()
    paused_s += time.time() - start
    return result

  try:
    while step < plan.total_steps:
      if step > start_step:
        batch = next(train_iter)
      state, step_metrics = compiled_step(state, batch)
      step += 1
      pending.append((step, step_metrics))

      is_last = step == plan.total_steps
      if step % config.log_every == 0 or is_last:
        last = _interval_summary(pending, config.skip_nonfinite)   # blocks until the interval's steps are done
        now = time.time()
        step_s = (now - last_log_time - paused_s) / (step - last_log_step)
        last.update(step_s=step_s, img_per_s=config.batch_size / step_s)
        writer.write(step, last)
        progress.update(step, {k: last[k] for k in ("loss", "lr", "img_per_s")})
        pending, last_log_time, last_log_step, paused_s = [], now, step, 0.0
      if config.eval_every and (step % config.eval_every == 0 or is_last):
        val = pause_clock(lambda: evaluate(state))
        writer.write(step, val)
        logging.info("step %d validation: %s", step, " ".join(f"{k}={v:.4g}" for k, v in val.items()))
        summary["val"] = val
      if config.image_every and (step % config.image_every == 0 or is_last):
        pause_clock(lambda: save_preview(state, step))
      if is_last or step % config.checkpoint_every == 0:
        pause_clock(lambda: ckpt.save(step, state, train_iter, force=is_last))
      if not is_last and stop.should_stop(step, ckpt, sync=step % config.log_every == 0):
        ckpt.save(step, state, train_iter, force=True)
        preempted = True
        logging.warning("stopped at step %d on request; rerun the same command to resume", step)
        break
  finally:
    stop.restore()
    progress.close()
    ckpt.wait()            # never leave a half-written last checkpoint behind (architecture.md pitfall 9)
    writer.flush()

  if not preempted:
    _export(config, workdir, state, plan, bands, step)
  _close(train_iter)
  ckpt.close()
  writer.close()
  return {**summary, "final_step": step, "preempted": preempted, "last": last}


def _export(config, workdir: str, state, plan: config_checks.Plan, bands, step: int) -> None:
  if not config.export:
    return
  normalization = {"name": config.data.get("normalization", None), "stats": config.data.get("stats", "") or None}
  metadata = export.make_metadata(config.model.name, plan.model, normalization=normalization, bands=list(bands),
                                  source=workdir, step=step, mask_ratio=config.model.mask_ratio,
                                  data=json.loads(config.data.to_json_best_effort()))
  export.save_params(os.path.join(workdir, "export"), nnx.to_pure_dict(state_lib.model_params(state)), metadata)
  logging.info("export: params + metadata.json written to %s", os.path.join(workdir, "export"))


def _close(iterator) -> None:
  close = getattr(iterator, "close", None)   # grain mp_prefetch iterators hold worker processes and shared memory
  if close is not None:
    close()
