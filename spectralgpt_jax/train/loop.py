"""The one training loop for every task: setup -> train (or evaluate) -> finish.

What happens, in order (big_vision style, the task plug-in does the rest; see spectralgpt_jax/tasks/base.py):
  setup   1. the config is checked against the device count (no compile before that) and the task is built,
          2. the mesh ("data", "fsdp", "model") is built and the state (model + optimizer, or the model alone for
             `mode=eval`) is created directly sharded on it,
          3. an existing checkpoint in DIR/checkpoints is restored (state AND data-iterator position: a killed run
             continues exactly where it stopped) after checking that DIR was run with the same task and model,
             else `init_from` fills the model through the one rule table (`interop.transfer`),
  train   4. the one pure train step is AOT-compiled with donated state and its memory analysis is logged,
          5. the loop runs; every `log_every` steps the metrics of the interval are fetched (the only host sync),
             checked for non-finite values and written; evaluations (dataset-level metrics), previews and async
             checkpoints happen at their intervals,
  finish  6. final checkpoint, final evaluation into DIR/eval/ (when eval_every > 0), params-only export with
             metadata.json and MODEL_CARD.md (train/exporting.py).
`mode=eval` runs setup and one evaluation of `init_from` (or of DIR's latest checkpoint) into DIR/eval/, which
then also holds that evaluation's config.json.
SIGTERM (TPU preemption, SLURM time limit) makes the loop save a checkpoint at the current step and return.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from flax import nnx

from spectralgpt_jax import sharding
from spectralgpt_jax.interop import CheckpointMismatchError
from spectralgpt_jax.models import matmul
from spectralgpt_jax.models.flops import train_step_flops
from spectralgpt_jax.train import (checkpointing, config_checks, evaluation, exporting, images, metrics, optim,
                                   resume, steps)
from spectralgpt_jax.train import throughput
from spectralgpt_jax.train import state as state_lib
from spectralgpt_jax.train.resume import StopSignal


class NonFiniteError(FloatingPointError):
  """Raised when a step produced a non-finite loss or gradient and `skip_nonfinite` is off."""


@dataclasses.dataclass
class Run:
  """Everything `setup` prepares for `train` / `evaluate_checkpoint`."""
  config: Any
  workdir: str
  plan: config_checks.Plan
  mesh: jax.sharding.Mesh
  sharded: state_lib.ShardedState
  state: nnx.State
  start_step: int
  make: Callable[..., Iterator]          # make(global_batch_size=, train=, start_batch=) -> grain iterator
  train_iter: Iterator | None
  ckpt: checkpointing.Checkpointer | None
  writer: metrics.MetricWriter
  schedule: Callable | None
  keys: tuple[jax.Array, jax.Array, jax.Array]   # train, eval, preview

  @property
  def task(self):
    return self.plan.task

  @property
  def batch_sharding(self):
    return sharding.batch_sharding(self.mesh)


def run(config, workdir: str, *, make_iterator: Callable[..., Iterator] | None = None) -> dict[str, Any]:
  """Train (or, with `config.mode='eval'`, evaluate) as `config` says, writing everything under `workdir`;
  resumes a training run if `workdir` holds a checkpoint. `make_iterator(data_cfg, global_batch_size=, sharding=,
  seed=, train=, start_batch=)` defaults to the task's data pipeline (tests pass synthetic sources)."""
  r = setup(config, workdir, make_iterator)
  if config.get("mode", "train") == "eval":
    return evaluate_checkpoint(r)
  return train(r)


# ================================================================================================== setup
def setup(config, workdir: str, make_iterator: Callable[..., Iterator] | None = None) -> Run:
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  evaluating = config.get("mode", "train") == "eval"
  task, _ = config_checks.make_task(config)
  needs_epochs = not evaluating and (config.total_steps <= 0 or (config.warmup_steps <= 0 and config.warmup_epochs > 0)
                                     or config.optimizer.get("schedule", "cosine") == "exponential")
  examples = task.num_train_examples() if needs_epochs and not config.num_train_examples else None
  plan = config_checks.check(config, device_count=jax.device_count(), process_count=jax.process_count(),
                             num_train_examples=examples, task=task)
  mesh = sharding.make_mesh(config.mesh)
  logging.info("task %s (%s); mesh %s over %d devices (%d processes)", plan.task.name,
               config.get("mode", "train"), dict(mesh.shape), jax.device_count(), jax.process_count())

  schedule, tx = None, None
  if not evaluating:
    schedule = optim.make_schedule(config.optimizer, peak_lr=plan.peak_lr, total_steps=plan.total_steps,
                                   warmup_steps=plan.warmup_steps, steps_per_epoch=plan.steps_per_epoch)
    tx = optim.make_optimizer(config.optimizer, schedule, depth=plan.model.depth)
    logging.info("%d steps, peak lr %.3g (%s), warmup %.1f steps, %d micro-batch(es) of %d", plan.total_steps,
                 plan.peak_lr, config.optimizer.get("schedule", "cosine"), plan.warmup_steps,
                 config.optimizer.accum_steps, plan.micro_batch)
  sharded = state_lib.create_sharded(plan.model, tx, mesh, config.seed, freeze=plan.freeze)
  num_params = state_lib.param_count(sharded.state)
  logging.info("model %s: %s parameters (%s)", config.model.name, f"{num_params:,}",
               ", ".join(f"{k} {v:,}" for k, v in state_lib.param_overview(sharded.state)))
  if plan.freeze:
    frozen = state_lib.frozen_count(sharded.state, plan.freeze)
    logging.info("config.optimizer.freeze=%r: %s parameters frozen, %s trained", ",".join(plan.freeze),
                 f"{frozen:,}", f"{num_params - frozen:,}")
  sharding.log_layout(sharded.abstract(), sharded.shardings, limit=40)

  make_iterator = make_iterator or plan.task.iterator
  make = functools.partial(make_iterator, config.data, sharding=sharding.batch_sharding(mesh), seed=config.seed)
  # An evaluation keeps its files under DIR/eval, so evaluating inside a training run's directory leaves the
  # run's own config.json and metrics.jsonl untouched.
  log_dir = os.path.join(workdir, "eval") if evaluating else workdir
  writer = metrics.MetricWriter(log_dir, tensorboard=config.tensorboard and not evaluating)
  key = jax.random.key(config.seed)
  keys = tuple(jax.random.fold_in(key, i) for i in range(3))
  r = Run(config=config, workdir=workdir, plan=plan, mesh=mesh, sharded=sharded, state=sharded.state, start_step=0,
          make=make, train_iter=None, ckpt=None, writer=writer, schedule=schedule, keys=keys)
  if evaluating:
    _load_for_eval(r)
  else:
    _restore_or_init(r)
  writer.write_config(log_dir, config.to_json_best_effort(indent=2))
  return r


def _restore_or_init(r: Run) -> None:
  config = r.config
  r.train_iter = r.make(global_batch_size=config.batch_size, train=True)
  r.ckpt = checkpointing.Checkpointer(os.path.join(r.workdir, "checkpoints"), every=config.checkpoint_every,
                                      keep=config.keep_checkpoints, async_save=config.async_checkpoints)
  latest = r.ckpt.latest_step()
  if latest is not None:
    resume.check_same_run(r.workdir, config, r.ckpt.directory, latest, r.sharded,
                          strict=config.get("strict_resume", True))
    r.state, data_restored = r.ckpt.restore(latest, r.sharded.abstract(), r.train_iter)
    r.start_step = latest
    if not data_restored:   # another process/worker layout: one step = one global batch, so batch `latest` is next
      _close(r.train_iter)
      r.train_iter = r.make(global_batch_size=config.batch_size, train=True, start_batch=latest)
    logging.info("resuming from step %d", latest)
  elif config.init_from:
    r.state, _ = checkpointing.init_from(r.state, config.init_from, r.plan.model, arch=config.model.name,
                                         strict=config.get("strict_init", True))
  elif r.task.name != "pretrain":
    logging.warning("config.init_from is empty: fine-tuning %s from a random initialisation (the paper starts "
                    "from a pretrained SpectralGPT checkpoint)", r.task.name)


def _load_for_eval(r: Run) -> None:
  """Eval mode: the model of `init_from`, else of DIR's latest training checkpoint. Every parameter must come from
  the checkpoint: a fresh (random) head would be scored as if it had been trained."""
  source = r.config.init_from
  if not source:
    ckpt_dir = os.path.join(r.workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
      raise config_checks.ConfigError("config.init_from: mode=eval needs a checkpoint to evaluate (an export or "
                                      "run directory, or an official .pth file), and --workdir has none")
    source = r.workdir
  strict = r.config.get("strict_init", True)
  r.state, report = checkpointing.init_from(r.state, source, r.plan.model, arch=r.config.model.name, strict=strict)
  fresh = report.initialised + report.interpolated
  if fresh and strict:
    raise CheckpointMismatchError(
        f"mode=eval: {source} does not hold a trained {r.task.name} model: {len(fresh)} parameters would be "
        f"random or resized ({', '.join(fresh[:4])}{', ...' if len(fresh) > 4 else ''}); pass "
        "--config.init_from=<a fine-tuned run, export or .pth> (or --config.strict_init=False)", report)
  r.start_step = 0


# ================================================================================================== evaluation
def _evaluator(r: Run) -> Callable[[nnx.State], tuple[dict, Any]]:
  eval_fn = evaluation.make_eval_fn(r.sharded.graphdef, r.keys[1], r.task, r.sharded.shardings, r.batch_sharding)
  replicated = sharding.replicated(r.mesh)

  def evaluate(state):
    iterator = r.make(global_batch_size=r.config.eval_batch_size, train=False)
    return evaluation.evaluate(r.task, eval_fn, state, iterator, replicated)
  return evaluate


def evaluate_checkpoint(r: Run) -> dict[str, Any]:
  result, evaluator = _evaluator(r)(r.state)
  split = r.config.data.get("eval_split", "val")
  evaluation.write_outputs(os.path.join(r.workdir, "eval"), evaluator, result, split=split,
                           checkpoint=r.config.init_from or r.workdir, task=r.task.name)
  r.writer.close()
  return {"mode": "eval", "workdir": r.workdir, "eval": result}


# ================================================================================================== train
def _interval_summary(entries: list[tuple[int, dict]], keys: tuple[str, ...], skip_nonfinite: bool
                      ) -> dict[str, float]:
  """Mean of the train metrics over the finite steps of a log interval; raises on a non-finite step unless
  skipped."""
  values = [(step, {k: float(v) for k, v in m.items()}) for step, m in jax.device_get(entries)]
  bad = [(step, m) for step, m in values if m["finite"] < 1]
  if bad and not skip_nonfinite:
    step, m = bad[0]
    raise NonFiniteError(f"non-finite loss or gradient at step {step} (loss={m['loss']}, grad_norm="
                         f"{m['grad_norm']}); the update was not applied and the state is intact. Set "
                         "config.skip_nonfinite=True to skip such updates, or lower the learning rate.")
  good = [m for _, m in values if m["finite"] >= 1] or [values[-1][1]]
  summary = {k: float(np.mean([m[k] for m in good])) for k in keys + ("grad_norm",)}
  summary["lr"] = values[-1][1]["lr"]
  if bad:
    summary["skipped_steps"] = float(len(bad))
    logging.warning("skipped %d non-finite update(s) at steps %s", len(bad), [s for s, _ in bad])
  return summary


def _log_memory(memory) -> None:
  if memory is None:
    logging.info("compiled train step: no memory analysis on this backend")
    return
  mib = lambda name: getattr(memory, name, 0) / 2**20
  logging.info("compiled train step memory per device: arguments %.1f MiB, outputs %.1f MiB (aliased %.1f MiB), "
               "temporaries %.1f MiB, code %.1f MiB", mib("argument_size_in_bytes"), mib("output_size_in_bytes"),
               mib("alias_size_in_bytes"), mib("temp_size_in_bytes"), mib("generated_code_size_in_bytes"))


def _warn_slow_cpu_bfloat16(r: Run) -> None:
  """Before compiling: bf16 on a CPU without bf16 dot products is slower than float32 (said once, at start-up)."""
  device = r.mesh.devices.flat[0]
  if device.platform == "cpu" and r.plan.model.dtype == "bfloat16" and not matmul.bf16_kernels_pay():
    logging.warning("config.compute_dtype='bfloat16' on a CPU without bf16 dot products (AVX2-only): bf16 steps "
                    "measured 1.3x slower than float32 there (docs/benchmarks.md); --config.compute_dtype=float32 "
                    "is faster")


def _throughput(r: Run) -> Callable[[float], dict[str, float]]:
  """step time -> img_per_s, tokens_per_s, model_tflops_per_s and mfu (when the device's peak is known)."""
  config, devices = r.config, list(r.mesh.devices.flat)
  override, mask_ratio = config.get("peak_tflops", 0.0), config.model.get("mask_ratio", 0.9)
  peak = throughput.peak_tflops(devices[0], r.plan.model.dtype, override)
  trained = state_lib.trained_layers(r.sharded.abstract(), r.plan.freeze, r.plan.model.depth)
  flops = train_step_flops(r.plan.model, mask_ratio, trained) * config.batch_size
  logging.info("train step: %.3g model TFLOP (analytic, forward + backward%s); MFU %s", flops / 1e12,
               ", no backward below the lowest trained layer" if trained else "",
               f"against a peak of {peak:g} TFLOP/s per device" if peak else
               f"not logged: no peak known for {devices[0].device_kind!r} (set --config.peak_tflops)")
  return lambda step_s: throughput.step_stats(r.plan.model, batch_size=config.batch_size, step_s=step_s,
                                              mask_ratio=mask_ratio, devices=devices,
                                              override_tflops=override, trained_layers=trained)


def _previews(r: Run, first_batch) -> Callable[[nnx.State, int], None] | None:
  """PNG reconstruction previews of fixed (held-out when evaluating) images, for tasks that have them."""
  config, task = r.config, r.task
  if not (config.image_every and task.has_previews):
    return None
  replicated = sharding.replicated(r.mesh)
  source = first_batch["image"]
  if config.eval_every:    # prefer fixed held-out images, so successive previews are comparable
    eval_iter = r.make(global_batch_size=config.eval_batch_size, train=False)
    source = next(iter(eval_iter))["image"]
    _close(eval_iter)
  n = min(config.num_preview, source.shape[0])
  preview_images = jax.jit(lambda x: x[:n], out_shardings=replicated)(source)
  graphdef, key = r.sharded.graphdef, r.keys[2]
  recon = jax.jit(lambda state, x: task.reconstruct(nnx.merge(graphdef, state).model, x, key),
                  in_shardings=(r.sharded.shardings, replicated), out_shardings=replicated)
  bands = exporting.bands_of(config)

  def save(state, step: int) -> None:
    out = recon(state, preview_images)
    if jax.process_index() == 0:
      logging.info("preview written: %s", images.save_preview(r.workdir, step, jax.device_get(out), bands))
  return save


def train(r: Run) -> dict[str, Any]:
  config, plan, task = r.config, r.plan, r.task
  summary: dict[str, Any] = {"start_step": r.start_step, "num_params": state_lib.param_count(r.state),
                             "workdir": r.workdir, "task": task.name}
  if r.start_step >= plan.total_steps:
    logging.info("run already complete (step %d of %d)", r.start_step, plan.total_steps)
    exporting.export_run(r, r.state, r.start_step)
    _close_run(r)
    return {**summary, "final_step": r.start_step}

  step_cfg = steps.StepConfig(task=task, accum_steps=config.optimizer.accum_steps, freeze=r.plan.freeze)
  batch = next(r.train_iter)       # the first batch of this run, also the compile example
  _warn_slow_cpu_bfloat16(r)
  compiled_step, memory = steps.compile_train_step(
      functools.partial(steps.train_step, r.sharded.graphdef, r.keys[0], r.schedule, step_cfg, r.batch_sharding),
      r.state, r.sharded.shardings, batch, r.batch_sharding)
  _log_memory(memory)
  throughput_of = _throughput(r)
  evaluate = _evaluator(r) if config.eval_every else None
  save_preview = _previews(r, batch)
  metric_keys = ("loss",) + tuple(k for k in task.train_metrics if k != "loss")

  stop = StopSignal()
  progress = metrics.Progress(r.start_step, plan.total_steps, enabled=config.progress_bar)
  pending: list[tuple[int, dict]] = []
  last_log_time, last_log_step, paused_s = time.time(), r.start_step, 0.0
  step, preempted, last, state = r.start_step, False, {}, r.state

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
      if step > r.start_step:
        batch = next(r.train_iter)
      state, step_metrics = compiled_step(state, batch)
      step += 1
      pending.append((step, step_metrics))

      is_last = step == plan.total_steps
      if step % config.log_every == 0 or is_last:
        last = _interval_summary(pending, metric_keys, config.skip_nonfinite)   # blocks until the steps are done
        now = time.time()
        step_s = (now - last_log_time - paused_s) / (step - last_log_step)
        last.update(step_s=step_s, **throughput_of(step_s))
        r.writer.write(step, last)
        progress.update(step, {k: last[k] for k in ("loss", "lr", "img_per_s")})
        pending, last_log_time, last_log_step, paused_s = [], now, step, 0.0
      if evaluate is not None and (step % config.eval_every == 0 or is_last):
        result, evaluator = pause_clock(lambda: evaluate(state))
        r.writer.write(step, {f"val_{k}": v for k, v in evaluation.scalars(result).items()})
        summary["val"] = result
        if is_last:
          evaluation.write_outputs(os.path.join(r.workdir, "eval"), evaluator, result,
                                   split=config.data.get("eval_split", "val"), checkpoint=r.workdir, step=step,
                                   task=task.name)
      if save_preview is not None and (step % config.image_every == 0 or is_last):
        pause_clock(lambda: save_preview(state, step))
      if is_last or step % config.checkpoint_every == 0:
        pause_clock(lambda: r.ckpt.save(step, state, r.train_iter, force=is_last))
      if not is_last and stop.should_stop(step, r.ckpt, sync=step % config.log_every == 0):
        r.ckpt.save(step, state, r.train_iter, force=True)
        preempted = True
        logging.warning("stopped at step %d on request; rerun the same command to resume", step)
        break
  finally:
    stop.restore()
    progress.close()
    r.ckpt.wait()            # never leave a half-written last checkpoint behind
    r.writer.flush()

  if not preempted:
    exporting.export_run(r, state, step)
  _close_run(r)
  return {**summary, "final_step": step, "preempted": preempted, "last": last}


# ================================================================================================== finish
def _close_run(r: Run) -> None:
  _close(r.train_iter)
  if r.ckpt is not None:
    r.ckpt.close()
  r.writer.close()


def _close(iterator) -> None:
  close = getattr(iterator, "close", None)   # grain mp_prefetch iterators hold worker processes and shared memory
  if close is not None:
    close()
