r"""Times one jitted MAE pretraining step (forward + backward + AdamW) on random input; prints one JSON line.

  python benchmarks/pretrain_step.py --model mae_vit_base_patch8_128 --batch 8 --steps 5

Fields: model, batch, mask_ratio, dtype, attention_impl, steps, step_s_median, step_s_min, img_per_s (from the
median), compile_s, peak_rss_mb (whole process), gflops_per_img (analytic, 3x forward), achieved_gflops_per_s,
device, jax/flax versions. Not a test: the machines are shared and noisy, so quote medians and ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from spectralgpt_jax import models
from spectralgpt_jax.models.flops import train_step_flops


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="mae_vit_base_patch8_128")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
  parser.add_argument("--mask_ratio", type=float, default=0.9)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--attention_impl", default="xla", choices=["xla", "chunked", "cudnn"])
  args = parser.parse_args()

  cfg = models.get_config(args.model, dtype=args.dtype, attention_impl=args.attention_impl)
  model = models.build_from_config(cfg)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  decay_mask = jax.tree.map(lambda p: p.ndim > 1, params)
  tx = optax.adamw(1e-4, b1=0.9, b2=0.95, weight_decay=0.05, mask=decay_mask)
  opt_state = tx.init(params)

  def step(params, opt_state, images, key):
    noise = jax.random.uniform(key, (images.shape[0], cfg.num_tokens))

    def loss_fn(params):
      return nnx.merge(graphdef, params, rest)(images, mask_ratio=args.mask_ratio, noise=noise)["loss"]

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(step, donate_argnums=(0, 1))
  images = jax.random.uniform(jax.random.key(0), (args.batch, cfg.img_size, cfg.img_size, cfg.num_frames))
  start = time.perf_counter()
  compiled = step.lower(params, opt_state, images, jax.random.key(1)).compile()
  compile_s = time.perf_counter() - start
  params, opt_state, loss = compiled(params, opt_state, images, jax.random.key(1))   # warm-up
  loss.block_until_ready()
  times = []
  for i in range(args.steps):
    start = time.perf_counter()
    params, opt_state, loss = compiled(params, opt_state, images, jax.random.key(2 + i))
    loss.block_until_ready()
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  flops = train_step_flops(cfg, args.mask_ratio)
  device = jax.devices()[0]
  print(json.dumps({
      "model": args.model, "batch": args.batch, "mask_ratio": args.mask_ratio, "dtype": args.dtype,
      "attention_impl": args.attention_impl, "steps": args.steps, "step_s_median": round(median, 4),
      "step_s_min": round(min(times), 4), "img_per_s": round(args.batch / median, 3), "compile_s": round(compile_s, 2),
      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      "gflops_per_img": round(flops / 1e9, 2), "achieved_gflops_per_s": round(flops * args.batch / median / 1e9, 1),
      "final_loss": round(float(loss), 4), "device": f"{device.platform}:{device.device_kind}",
      "num_cpus": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
      "flax": flax.__version__}))


if __name__ == "__main__":
  main()
