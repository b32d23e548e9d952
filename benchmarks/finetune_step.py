r"""Times the real fine-tuning step of a downstream task (forward + backward + the recipe's optimizer) on random
input of the task's shapes; prints one JSON line.

  python benchmarks/finetune_step.py --task eurosat --model B --batch 8 --steps 5
  python benchmarks/finetune_step.py --task segmunich --model B --batch 4 --steps 3
  python benchmarks/finetune_step.py --task oscd --model L --batch 16 --dtype bfloat16      # on an accelerator

`--task` selects configs/finetune_<task>.py (its paper recipe: model, optimizer with layer-wise lr decay for
classification, loss), `--model` the size (B | L | H for classification, B | L for the dense tasks). The batch
holds what the data pipeline feeds: mixed soft targets (EuroSAT), multi-hot labels (BigEarthNet), a class mask
(SegMunich), two dates and a change map (OSCD). Same fields as benchmarks/pretrain_step.py plus task and size.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import step_timing  # noqa: E402

from spectralgpt_jax import tasks  # noqa: E402
from spectralgpt_jax.train import freezing  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recipe(task_name: str, size: str, dtype: str):
  path = os.path.join(ROOT, "configs", f"finetune_{task_name}.py")
  spec = importlib.util.spec_from_file_location(f"finetune_{task_name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"paper,{size}")
  config.compute_dtype = dtype
  if "class_weights" in config.loss:
    config.loss.class_weights = "none"      # the reference weights need the training maps; same cost
  return config


def example_batch(task, model_cfg, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  size, bands, k = model_cfg.img_size, model_cfg.num_frames, model_cfg.num_classes
  image = lambda: rng.random((batch, size, size, bands), np.float32)
  if task.name == "classification":
    if task.multilabel:
      return {"image": image(), "labels": (rng.random((batch, k)) < 0.2).astype(np.uint8)}
    targets = rng.random((batch, k)).astype(np.float32)
    return {"image": image(), "targets": targets / targets.sum(-1, keepdims=True)}
  label = lambda: rng.integers(0, k, (batch, size, size)).astype(np.uint8)
  if task.name == "segmentation":
    return {"image": image(), "mask": label()}
  return {"image1": image(), "image2": image(), "change": label()}


def setup(args):
  """(task, model config, optimizer config, batch) of --task's paper recipe for --model/--dtype/--batch."""
  config = recipe(args.task, args.model.upper(), args.dtype)
  config.model.update(step_timing.speed_overrides(args))
  task = tasks.get(config)
  model_cfg = task.model_config()
  return task, model_cfg, config.optimizer, example_batch(task, model_cfg, args.batch)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", required=True, choices=["eurosat", "bigearthnet", "segmunich", "oscd"])
  parser.add_argument("--model", default="B", help="model size B | L | H")
  parser.add_argument("--batch", type=int, default=8, help="global batch")
  parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--mesh", default="1,-1,1", help="data,fsdp,model sizes (one may be -1)")
  parser.add_argument("--freeze", default="", help="config.optimizer.freeze, e.g. encoder (linear probe)")
  step_timing.add_speed_flags(parser)
  args = parser.parse_args()
  task, model_cfg, opt_cfg, batch = setup(args)
  result = step_timing.time_step(task, model_cfg, opt_cfg, batch, mesh_text=args.mesh,
                                 num_steps=args.steps, peak_tflops=args.peak_tflops,
                                 freeze=freezing.parse(args.freeze))
  print(json.dumps({"task": args.task, "model": task.config.model.name, "size": args.model.upper(),
                    "batch": args.batch, "dtype": args.dtype, "freeze": args.freeze, **result}))


if __name__ == "__main__":
  from spectralgpt_jax import runtime
  runtime.configure()   # the allocator and XLA CPU flags main.py uses (SPECTRALGPT_JAX_FAST_RUNTIME=0: off)
  main()
