r"""Times the real MAE pretraining step (forward + backward + AdamW) on random input; prints one JSON line.

  python benchmarks/pretrain_step.py --model mae_vit_base_patch8_128 --batch 8 --steps 5
  python benchmarks/pretrain_step.py --model mae_vit_large_patch8_128 --batch 64 --dtype bfloat16 --mesh 1,-1,1

This is `spectralgpt_jax.train.steps.train_step` exactly as `main.py` compiles it (sharded state created on a
("data", "fsdp", "model") mesh over all local devices, donated, AOT-compiled), with the reference optimizer
(AdamW 0.9/0.95, wd 0.05 on ndim > 1) and mask ratio 0.9, timed after one warm-up step.
Fields: model, batch, mask_ratio, dtype, attention_impl, mesh, steps, step_s_median, step_s_min, img_per_s (from
the median), compile_s, temp_mb (compiled step temporaries per device), peak_rss_mb (whole process),
gflops_per_img (analytic, 3x forward), achieved_gflops_per_s, device, versions. Not a test: the machines are shared
and noisy, so quote medians and ratios.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import time

import flax
import jax
import ml_collections

from spectralgpt_jax import models, sharding
from spectralgpt_jax.models.flops import train_step_flops
from spectralgpt_jax.train import optim, steps
from spectralgpt_jax.train import state as state_lib


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="mae_vit_base_patch8_128")
  parser.add_argument("--batch", type=int, default=8, help="global batch")
  parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
  parser.add_argument("--mask_ratio", type=float, default=0.9)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--attention_impl", default="xla", choices=["xla", "chunked", "cudnn"])
  parser.add_argument("--mesh", default="1,-1,1", help="data,fsdp,model sizes (one may be -1)")
  args = parser.parse_args()

  cfg = models.get_config(args.model, dtype=args.dtype, attention_impl=args.attention_impl)
  mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, (int(s) for s in args.mesh.split(",")))))
  batch_sharding = sharding.batch_sharding(mesh)
  schedule = optim.warmup_half_cosine(1e-4, total_steps=1000, warmup_steps=10)
  opt_cfg = ml_collections.ConfigDict(dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05, clip_grad_norm=0.0))
  sharded = state_lib.create_sharded(cfg, optim.make_optimizer(opt_cfg, schedule), mesh, seed=0)
  step_fn = functools.partial(steps.train_step, sharded.graphdef, jax.random.key(0), schedule,
                              steps.StepConfig(model=cfg, mask_ratio=args.mask_ratio), batch_sharding)
  images = jax.random.uniform(jax.random.key(1), (args.batch, cfg.img_size, cfg.img_size, cfg.num_frames))
  batch = {"image": jax.device_put(images, batch_sharding)}

  start = time.perf_counter()
  compiled, memory = steps.compile_train_step(step_fn, sharded.state, sharded.shardings, batch, batch_sharding)
  compile_s = time.perf_counter() - start
  state, metrics = compiled(sharded.state, batch)   # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)

  median = statistics.median(times)
  flops = train_step_flops(cfg, args.mask_ratio)
  device = jax.devices()[0]
  print(json.dumps({
      "model": args.model, "batch": args.batch, "mask_ratio": args.mask_ratio, "dtype": args.dtype,
      "attention_impl": args.attention_impl, "mesh": dict(mesh.shape), "steps": args.steps,
      "step_s_median": round(median, 4), "step_s_min": round(min(times), 4),
      "img_per_s": round(args.batch / median, 3), "compile_s": round(compile_s, 2),
      "temp_mb": round(memory.temp_size_in_bytes / 2**20, 1) if memory is not None else None,
      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      "gflops_per_img": round(flops / 1e9, 2), "achieved_gflops_per_s": round(flops * args.batch / median / 1e9, 1),
      "final_loss": round(float(metrics["loss"]), 4), "device": f"{device.platform}:{device.device_kind}",
      "num_devices": jax.device_count(), "num_cpus": os.cpu_count(), "python": platform.python_version(),
      "jax": jax.__version__, "flax": flax.__version__}))


if __name__ == "__main__":
  main()
