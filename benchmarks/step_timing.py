"""Shared by the step benchmarks: compile the real train step of a task exactly as main.py does and time it.

The step is `spectralgpt_jax.train.steps.train_step` with the task plug-in (sharded state created on a
("data", "fsdp", "model") mesh over all local devices, donated, AOT-compiled), timed after one warm-up step.
"""
from __future__ import annotations

import functools
import os
import platform
import resource
import statistics
import time

import flax
import jax

from spectralgpt_jax import runtime, sharding
from spectralgpt_jax.models.config import ATTENTION_IMPLS, GRAD_FENCES, REMAT_POLICIES, resolve_attention
from spectralgpt_jax.models.flops import train_step_flops
from spectralgpt_jax.train import optim, steps, throughput
from spectralgpt_jax.train import state as state_lib


def parse_mesh(text: str) -> dict[str, int]:
  return dict(zip(sharding.MESH_AXES, (int(s) for s in text.split(","))))


def add_speed_flags(parser) -> None:
  """The fast-path switches every step benchmark takes (ModelConfig fields of the same names)."""
  parser.add_argument("--attention_impl", default="auto", choices=list(ATTENTION_IMPLS))
  parser.add_argument("--remat", default="none", choices=list(REMAT_POLICIES))
  parser.add_argument("--scan_blocks", action="store_true")
  parser.add_argument("--grad_fence", default="auto", choices=list(GRAD_FENCES))
  parser.add_argument("--peak_tflops", type=float, default=0.0,
                      help="per-device peak for mfu (0: look the device up; none for CPUs)")


def speed_overrides(args) -> dict:
  return dict(attention_impl=args.attention_impl, remat=args.remat, scan_blocks=args.scan_blocks,
              grad_fence=args.grad_fence)


def compile_step(task, model_cfg, opt_cfg, batch: dict, *, mesh_text: str, freeze: tuple[str, ...] = ()):
  """The task's train step compiled as main.py compiles it: (compiled, state, device batch, memory, compile_s, mesh);
  `freeze`: the patterns of config.optimizer.freeze."""
  mesh = sharding.make_mesh(parse_mesh(mesh_text))
  batch_sharding = sharding.batch_sharding(mesh)
  schedule = optim.warmup_half_cosine(1e-4, total_steps=1000, warmup_steps=10)
  tx = optim.make_optimizer(opt_cfg, schedule, depth=model_cfg.depth)
  sharded = state_lib.create_sharded(model_cfg, tx, mesh, seed=0, freeze=freeze)
  step_fn = functools.partial(steps.train_step, sharded.graphdef, jax.random.key(0), schedule,
                              steps.StepConfig(task=task, freeze=freeze), batch_sharding)
  batch = {k: jax.device_put(v, batch_sharding) for k, v in batch.items()}
  start = time.perf_counter()
  compiled, memory = steps.compile_train_step(step_fn, sharded.state, sharded.shardings, batch, batch_sharding)
  return compiled, sharded.state, batch, memory, time.perf_counter() - start, mesh


def time_step(task, model_cfg, opt_cfg, batch: dict, *, mesh_text: str, num_steps: int,
              mask_ratio: float = 0.9, peak_tflops: float = 0.0, freeze: tuple[str, ...] = ()) -> dict:
  """Compile and time one task's train step on `batch` (host arrays); returns the JSON fields."""
  compiled, state, batch, memory, compile_s, mesh = compile_step(task, model_cfg, opt_cfg, batch, mesh_text=mesh_text,
                                                                 freeze=freeze)
  trained = state_lib.trained_layers(state, freeze, model_cfg.depth)
  state, metrics = compiled(state, batch)   # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(num_steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)

  n = next(iter(batch.values())).shape[0]
  median = statistics.median(times)
  flops = train_step_flops(model_cfg, mask_ratio, trained)
  device = jax.devices()[0]
  stats = throughput.step_stats(model_cfg, batch_size=n, step_s=median, mask_ratio=mask_ratio,
                                devices=list(mesh.devices.flat), override_tflops=peak_tflops, trained_layers=trained)
  return {
      "mesh": dict(mesh.shape), "steps": num_steps, "step_s_median": round(median, 4),
      "step_s_min": round(min(times), 4), **{k: round(v, 4) for k, v in stats.items()},
      "compile_s": round(compile_s, 2),
      "temp_mb": round(memory.temp_size_in_bytes / 2**20, 1) if memory is not None else None,
      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      "gflops_per_img": round(flops / 1e9, 2), "achieved_gflops_per_s": round(flops * n / median / 1e9, 1),
      "final_loss": round(float(metrics["loss"]), 4), "device": f"{device.platform}:{device.device_kind}",
      "attention_impl": resolve_attention(model_cfg.attention_impl, device.platform, model_cfg.dtype),
      "remat": model_cfg.remat, "scan_blocks": model_cfg.scan_blocks,
      "num_devices": jax.device_count(), "num_cpus": os.cpu_count(), "cpu": runtime.cpu_summary(),
      "python": platform.python_version(),
      "jax": jax.__version__, "flax": flax.__version__, "runtime": runtime.describe()}
