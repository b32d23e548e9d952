r"""Peak memory and tiles/s of `python -m spectralgpt_jax.predict` on the demo scene and on a scene with 4x its pixels.

  python benchmarks/scene_inference.py                                   # the demo model's size, 1x and 4x scene
  python benchmarks/scene_inference.py --checkpoint runs/segmunich_demo/export --probabilities
  python benchmarks/scene_inference.py --arch seg_vit_base_patch8_128 --scales 1 --crop 512   # a base model

Runs the predict command on the demo's own folder of native-resolution band files (as the README does), then on the
demo scene resampled onto its 10 m grid as a 12-band GeoTIFF and on a 2 x 2 mosaic of it (3866 x 3894 px; both
written window by window), each in a fresh process, and reads that process's peak resident memory (`wait4` rusage)
and the tiles/s it logs. Without
`--checkpoint` a randomly initialised export of `--arch` is used (speed and memory do not depend on the weights).
Prints one JSON line per run. A benchmark, not a test: run it alone on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np
import rasterio
from rasterio.windows import Window

from spectralgpt_jax.data import bands as bandlib

STRIP = 256  # rows per read/write when building the benchmark scenes


def write_scene(path: str, down: int, across: int, crop: int | None) -> tuple[int, int]:
  """The demo scene (optionally its top-left `crop` px) tiled `down` x `across` times into one 12-band GeoTIFF."""
  from spectralgpt_jax.data import demo
  from spectralgpt_jax.inference.scene_io import open_scene
  with open_scene(demo.scene_dir()) as scene:
    h, w = (min(crop, scene.height), min(crop, scene.width)) if crop else (scene.height, scene.width)
    profile = dict(driver="GTiff", width=w * across, height=h * down, count=len(bandlib.CANONICAL), dtype="uint16",
                   crs=scene.crs, transform=scene.transform, nodata=0, tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", predictor=2, BIGTIFF="IF_SAFER")
    with rasterio.open(path, "w", **profile) as dst:
      for i, band in enumerate(bandlib.CANONICAL):
        dst.set_band_description(i + 1, band)
      for top in range(0, h, STRIP):
        rows = min(STRIP, h - top)
        data, valid = scene.read(bandlib.CANONICAL, Window(0, top, w, rows))
        block = np.moveaxis(np.where(valid[..., None], np.round(data), 0).astype(np.uint16), -1, 0)
        for sy in range(down):
          for sx in range(across):
            dst.write(block, window=Window(sx * w, sy * h + top, w, rows))
  return h * down, w * across


# The SegMunich demo model's architecture (configs/finetune_segmunich.py:demo), the one the README runs.
DEMO_WIDTHS = dict(img_size=64, embed_dim=128, depth=4, num_heads=4, num_classes=5, fpn_channels=32)


def random_export(arch: str, root: str) -> str:
  from spectralgpt_jax import export, models
  model = models.build(arch, **(DEMO_WIDTHS if arch == "seg_vit_tiny" else {}))
  task = {"seg": "segmentation", "cd": "change_detection", "vit": "classification", "mae": "pretrain"}[model.cfg.kind]
  return str(export.save(os.path.join(root, arch), model, export.make_metadata(arch, model.cfg, task=task)))


def run_predict(checkpoint: str, scene: str, output: str, extra: list[str]) -> dict:
  cmd = [sys.executable, "-m", "spectralgpt_jax.predict", "--checkpoint", checkpoint, "--input", scene,
         "--output", output, "--no_progress", *extra]
  start = time.time()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  log = proc.stdout.read()
  _, status, usage = os.wait4(proc.pid, 0)
  wall = time.time() - start
  if os.waitstatus_to_exitcode(status) != 0:
    raise SystemExit(f"predict failed on {scene}:\n{log[-3000:]}")
  match = re.search(r"(\d+) tiles in ([\d.]+) s \(([\d.]+) tiles/s\)", log)
  chosen = re.search(r"runtime: (.*)", log)
  return {"tiles": int(match.group(1)), "tile_loop_s": float(match.group(2)), "tiles_per_s": float(match.group(3)),
          "wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
          "runtime": chosen.group(1).strip() if chosen else None}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", default=None, help="export / run directory (default: random --arch export)")
  p.add_argument("--arch", default="seg_vit_tiny",
                 help="architecture of the random export (seg_vit_tiny: with the SegMunich demo model's widths)")
  p.add_argument("--scales", default="1,2,4x1",
                 help="mosaics: N = N x N copies of the demo scene, DxA = D down by A across (4x1: 4x as tall)")
  p.add_argument("--crop", type=int, default=None, help="use only the top-left CROP x CROP px of the demo scene")
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--no_folder", dest="folder", action="store_false",
                 help="skip the run on the demo's own band folder (the README command)")
  p.add_argument("--probabilities", action="store_true")
  p.add_argument("--workdir", default=None, help="where the scenes and outputs go (default: a temp dir)")
  args = p.parse_args()
  root = args.workdir or tempfile.mkdtemp(prefix="scene_bench_")
  os.makedirs(root, exist_ok=True)
  checkpoint = args.checkpoint or random_export(args.arch, root)
  extra = ["--batch_size", str(args.batch_size)] + (["--probabilities"] if args.probabilities else [])
  import jax

  from spectralgpt_jax.data import demo
  runs = [("band_folder", "1", demo.scene_dir())] if args.folder and not args.crop else []
  runs += [("geotiff", s, None) for s in args.scales.split(",")]
  for form, scale, scene in runs:
    t0 = time.time()
    if scene is None:
      down, across = (int(v) for v in (scale.split("x") if "x" in str(scale) else (scale, scale)))
      scene = os.path.join(root, f"scene_{down}x{across}.tif")
      write_scene(scene, down, across, args.crop)
    build_s = time.time() - t0
    with rasterio.open(scene if form == "geotiff" else os.path.join(scene, "s2_B02.jp2")) as ds:
      h, w = ds.height, ds.width
    result = run_predict(checkpoint, scene, os.path.join(root, f"pred_{form}_x{scale}.tif"), extra)
    print(json.dumps({"benchmark": "scene_inference", "checkpoint": checkpoint, "input": form, "scale": scale,
                      "pixels": h * w, "height": h, "width": w, "batch_size": args.batch_size,
                      "probabilities": args.probabilities, "scene_build_s": round(build_s, 1), **result,
                      "jax": jax.__version__, "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}),
          flush=True)

if __name__ == "__main__":
  from spectralgpt_jax import runtime
  runtime.configure()   # the allocator and XLA CPU flags main.py uses (SPECTRALGPT_JAX_FAST_RUNTIME=0: off)
  main()
