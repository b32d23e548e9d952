"""Input-pipeline throughput: examples/s (total and per worker) of each dataset's *training* pipeline.

Sources are generated in memory with each dataset's real on-disk shapes (uint16, canonical bands), so the number
measures our transforms + grain, not the disk; `demo` uses the real embedded scene. One JSON line per dataset
and worker count:

  python benchmarks/input_pipeline.py                       # all datasets, workers 0 and 2
  python benchmarks/input_pipeline.py --datasets eurosat --workers 0 4 --batch 64 --batches 30

workers=0 runs in-process (counted as 1 worker); batches are numpy (no device transfer).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

flags.FLAGS(sys.argv[:1], known_only=True)  # grain's multiprocessing reads absl flags

import grain  # noqa: E402
import numpy as np  # noqa: E402

from spectralgpt_jax.data import bands, pipeline  # noqa: E402

# dataset -> (task, shapes of one generated element, keys of a training batch)
SPECS = {
    "demo": ("pretrain", None, ("image",)),
    "fmow_sentinel": ("pretrain", "fmow", ("image",)),
    "bigearthnet_pretrain": ("pretrain", (120, 120, 12), ("image",)),
    "bigearthnet": ("finetune", (120, 120, 12), ("image", "labels")),
    "eurosat": ("finetune", (64, 64, 12), ("image", "label")),
    "segmunich": ("finetune", (128, 128, 10), ("image", "mask")),
    "oscd": ("finetune", "oscd", ("image1", "image2", "change")),
}


def generated_source(name: str, n: int, rng: np.random.Generator):
  """In-memory examples with the real shapes; fMoW sizes vary like the real crops, OSCD holds whole cities."""

  def img(h, w, c=12):
    return rng.integers(1, 5000, (h, w, c), dtype=np.uint16)

  shape = SPECS[name][1]
  if shape == "fmow":
    return [{"image": img(*rng.integers(60, 200, 2)), "label": int(rng.integers(62))} for _ in range(n)]
  if shape == "oscd":  # two 600x600 cities -> 128 px windows with 50 % overlap, as the real pipeline
    scenes = [
        {"image1": img(600, 600), "image2": img(600, 600), "change": np.zeros((600, 600), np.uint8)} for _ in range(2)
    ]
    from spectralgpt_jax.data import sources

    return sources.SceneWindows(scenes, 128, 0.5)
  out = [{"image": img(*shape)} for _ in range(n)]
  for ex in out:
    ex["label"] = int(rng.integers(10))
    ex["labels"] = (rng.random(19) < 0.2).astype(np.uint8)
    ex["mask"] = rng.integers(0, 13, shape[:2], dtype=np.uint8)
  return out


def run(name: str, workers: int, batch: int, batches: int, warmup: int = 3) -> dict:
  task, shape, keys = SPECS[name]
  ds_name = "bigearthnet" if name == "bigearthnet_pretrain" else name
  cfg = pipeline.default_data_config(ds_name, task)
  cfg.workers, cfg.prefetch = workers, 2
  if name == "demo":
    source, src_bands = pipeline.make_source(cfg, "train")
  else:
    source = generated_source(name, 256, np.random.default_rng(0))
    src_bands = bands.canonical_subset(bands.ON_DISK["segmunich"]) if name == "segmunich" else bands.CANONICAL
  ops = pipeline.element_ops(cfg, True, src_bands, keys, fixed_size=name in ("segmunich", "oscd"))
  batch_ops = pipeline.finetune_batch_ops(cfg, train=True) if task == "finetune" else []
  it = pipeline.build_iterator(
      source,
      ops,
      batch_ops=batch_ops,
      train=True,
      global_batch_size=batch,
      seed=0,
      workers=workers,
      prefetch=2,
      read_threads=cfg.read_threads,
  )
  try:
    for _ in range(warmup):
      next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
      next(it)
    dt = time.perf_counter() - t0
  finally:
    it.close()
  eps = batch * batches / dt
  return {
      "dataset": name,
      "task": task,
      "image_size": cfg.image_size,
      "workers": workers,
      "batch": batch,
      "batches": batches,
      "examples_per_s": round(eps, 1),
      "examples_per_s_per_worker": round(eps / max(1, workers), 1),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--datasets", nargs="+", default=list(SPECS), choices=list(SPECS))
  parser.add_argument("--workers", nargs="+", type=int, default=[0, 2])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--batches", type=int, default=15)
  args = parser.parse_args()
  env = {
      "machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}",
      "python": platform.python_version(),
      "numpy": np.__version__,
      "grain": grain.__version__ if hasattr(grain, "__version__") else "?",
      "date": time.strftime("%Y-%m-%d"),
  }
  for name in args.datasets:
    for w in args.workers:
      print(json.dumps({**run(name, w, args.batch, args.batches), **env}), flush=True)


if __name__ == "__main__":
  from spectralgpt_jax import runtime
  runtime.configure()   # the allocator and XLA CPU flags main.py uses (SPECTRALGPT_JAX_FAST_RUNTIME=0: off)
  main()
