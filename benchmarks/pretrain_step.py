r"""Times the real MAE pretraining step (forward + backward + AdamW) on random input; prints one JSON line.

  python benchmarks/pretrain_step.py --model mae_vit_base_patch8_128 --batch 8 --steps 5
  python benchmarks/pretrain_step.py --model mae_vit_large_patch8_128 --batch 64 --dtype bfloat16 --mesh 1,-1,1

This is `spectralgpt_jax.train.steps.train_step` with the pretraining task exactly as `main.py` compiles it (see
benchmarks/step_timing.py), with the reference optimizer (AdamW 0.9/0.95, wd 0.05 on ndim > 1) and mask ratio 0.9.
Fields: model, batch, mask_ratio, dtype, mesh, steps, step_s_median, step_s_min, img_per_s, tokens_per_s,
model_tflops_per_s (per device) and mfu (when the device's peak is known; spectralgpt_jax.train.throughput), all
from the median, compile_s, attention_impl (resolved for the device), remat, scan_blocks, temp_mb (compiled step
temporaries per device), peak_rss_mb (whole process), gflops_per_img (analytic, 3x forward), achieved_gflops_per_s,
device, versions. Not a test: the machines are shared
and noisy, so quote medians and ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import step_timing  # noqa: E402

from spectralgpt_jax import tasks  # noqa: E402


def setup(args):
  """(task, model config, optimizer config, batch) of the pretraining step for --model/--dtype/--batch/--mask_ratio."""
  config = ml_collections.ConfigDict(dict(
      task="pretrain", compute_dtype=args.dtype, data={}, loss={}, metrics={},
      model=dict(name=args.model, mask_ratio=args.mask_ratio, **step_timing.speed_overrides(args))))
  task = tasks.get(config)
  cfg = task.model_config()
  opt_cfg = ml_collections.ConfigDict(dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05, clip_grad_norm=0.0))
  images = jax.random.uniform(jax.random.key(1), (args.batch, cfg.img_size, cfg.img_size, cfg.num_frames))
  return task, cfg, opt_cfg, {"image": images}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="mae_vit_base_patch8_128")
  parser.add_argument("--batch", type=int, default=8, help="global batch")
  parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
  parser.add_argument("--mask_ratio", type=float, default=0.9)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  step_timing.add_speed_flags(parser)
  parser.add_argument("--mesh", default="1,-1,1", help="data,fsdp,model sizes (one may be -1)")
  args = parser.parse_args()
  task, cfg, opt_cfg, batch = setup(args)
  result = step_timing.time_step(task, cfg, opt_cfg, batch, mesh_text=args.mesh, num_steps=args.steps,
                                 mask_ratio=args.mask_ratio, peak_tflops=args.peak_tflops)
  print(json.dumps({"model": args.model, "batch": args.batch, "mask_ratio": args.mask_ratio, "dtype": args.dtype,
                    **result}))


if __name__ == "__main__":
  from spectralgpt_jax import runtime
  runtime.configure()   # the allocator and XLA CPU flags main.py uses (SPECTRALGPT_JAX_FAST_RUNTIME=0: off)
  main()
