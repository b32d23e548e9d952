"""Examples/s of dataset preparation: one process, local worker processes, and Beam's DirectRunner.

Writes synthetic data in the real on-disk layouts (random uint16 pixels, so zstd gets no easy wins), prepares it
with each mode into its own data_dir and prints one JSON line per mode, then a summary line with the projected
time for the full datasets (examples / measured rate; for N workers the measured per-worker rate times N, i.e.
assuming reading scales, which holds on a Beam runner whose workers read from object storage).

  python benchmarks/prepare_throughput.py --dataset bigearthnet --examples 400
  python benchmarks/prepare_throughput.py --dataset fmow_sentinel --examples 400 --fmow_size 96
  python benchmarks/prepare_throughput.py --codecs      # ms to write / decode one patch per tfds tensor encoding
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import tifffile

from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.data import prepare
from spectralgpt_jax.data.readers.common import DataError

FULL_SIZE = {"bigearthnet": 590_326, "fmow_sentinel": 880_000}    # patches in v1.0; images of fMoW-Sentinel
NATIVE_PX = {10: 120, 20: 60, 60: 20}


def write_bigearthnet(root: str, n: int, rng) -> tuple[str, dict]:
  data, lists = os.path.join(root, "BigEarthNet-v1.0"), os.path.join(root, "lists")
  os.makedirs(lists)
  names = [f"S2A_MSIL2A_20170613T101031_{i // 100}_{i % 100}" for i in range(n)]
  for name in names:
    os.makedirs(os.path.join(data, name))
    for b in bandlib.CANONICAL:
      px = NATIVE_PX[bandlib.BANDS[b].gsd_m]
      tifffile.imwrite(os.path.join(data, name, f"{name}_{b}.tif"), rng.integers(0, 10000, (px, px), np.uint16))
    with open(os.path.join(data, name, f"{name}_labels_metadata.json"), "w") as f:
      json.dump({"labels": ["Pastures", "Coniferous forest"]}, f)
  parts = {"train": names[: n - 2], "val": names[n - 2: n - 1], "test": names[n - 1:]}
  for key, content in {**parts, "patches_with_cloud_and_shadow": [], "patches_with_seasonal_snow": [],
                       "patches_with_no_19_class_targets": []}.items():
    with open(os.path.join(lists, f"{key}.csv"), "w") as f:
      f.write("".join(f"{x}\n" for x in content))
  return data, {"lists_dir": lists}


def write_fmow(root: str, n: int, size: int, rng) -> tuple[str, dict]:
  rows = {"train": [], "val": []}
  for i in range(n):
    split = "val" if i == n - 1 else "train"
    rel = f"fmow-sentinel/{split}/airport/airport_{i}/airport_{i}_0.tif"
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    tifffile.imwrite(os.path.join(root, rel), rng.integers(0, 10000, (size, size, 13), np.uint16))
    rows[split].append(f'{i},airport,{i},0,2015-07-25T08:45:14Z,"POLYGON ((0 0, 1 1, 1 0, 0 0))",{rel}\n')
  for split, lines in rows.items():
    with open(os.path.join(root, f"{split}.csv"), "w") as f:
      f.write(",category,location_id,image_id,timestamp,polygon,image_path\n" + "".join(lines))
  return root, {}


MODES = {
    "single": {},
    "workers2": {"num_workers": 2},
    "beam_direct1": {"beam": True},
    "beam_direct2": {"beam": True, "beam_options": "--runner=DirectRunner --direct_num_workers=2 "
                                                   "--direct_running_mode=multi_processing"},
}


def codecs(repeats: int = 50) -> None:
  """Median ms to serialise and to decode one BigEarthNet patch (uint16 [120,120,12]) per tfds encoding."""
  import statistics

  import tensorflow_datasets as tfds
  from tensorflow_datasets.core import example_parser, example_serializer

  image = np.random.default_rng(0).integers(0, 10000, (120, 120, 12), np.uint16)
  for encoding in ("none", "zlib", "bytes"):
    features = tfds.features.FeaturesDict({"image": tfds.features.Tensor(shape=image.shape, dtype=np.uint16,
                                                                          encoding=encoding)})
    serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    parser = example_parser.ExampleParserNp(features.get_serialized_info())
    write, read = [], []
    for _ in range(repeats):
      t0 = time.perf_counter()
      record = serializer.serialize_example(features.encode_example({"image": image}))
      t1 = time.perf_counter()
      decoded = features.decode_example_np(parser.parse_example(record))["image"]
      read.append(time.perf_counter() - t1)
      write.append(t1 - t0)
    assert np.array_equal(decoded, image)
    print(json.dumps({"benchmark": "tensor_encoding", "encoding": encoding, "bytes": len(record),
                      "serialize_ms_median": round(1e3 * statistics.median(write), 3),
                      "decode_ms_median": round(1e3 * statistics.median(read), 3)}), flush=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", choices=sorted(FULL_SIZE), default="bigearthnet")
  parser.add_argument("--examples", type=int, default=400)
  parser.add_argument("--fmow_size", type=int, default=96, help="side of the synthetic fMoW images (px)")
  parser.add_argument("--modes", default=",".join(MODES))
  parser.add_argument("--project_workers", default="1,32")
  parser.add_argument("--codecs", action="store_true", help="only time tfds's tensor encodings")
  args = parser.parse_args(argv)
  if args.codecs:
    codecs()
    return 0
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    if args.dataset == "bigearthnet":
      manual, extra = write_bigearthnet(os.path.join(tmp, "raw"), args.examples, rng)
    else:
      manual, extra = write_fmow(os.path.join(tmp, "raw"), args.examples, args.fmow_size, rng)
    write_s = time.perf_counter() - t0
    rates = {}
    for mode in args.modes.split(","):
      t0 = time.perf_counter()
      try:
        builder = prepare.prepare(args.dataset, manual, os.path.join(tmp, mode), **MODES[mode], **extra)
      except (DataError, ImportError) as e:   # examples lost by the multi-process DirectRunner, or no Beam
        print(json.dumps({"benchmark": "prepare_throughput", "dataset": args.dataset, "mode": mode,
                          "error": str(e), "seconds": round(time.perf_counter() - t0, 2)}), flush=True)
        continue
      seconds = time.perf_counter() - t0
      read = builder.report.read
      rates[mode] = read / seconds
      print(json.dumps({"benchmark": "prepare_throughput", "dataset": args.dataset, "mode": mode,
                        "examples": read, "seconds": round(seconds, 2), "examples_per_s": round(rates[mode], 1),
                        "fmow_size": args.fmow_size if args.dataset == "fmow_sentinel" else None}), flush=True)
  full = FULL_SIZE[args.dataset]
  single = rates.get("single")
  workers = {"single": 1, "workers2": 2, "beam_direct1": 1, "beam_direct2": 2}
  projection = {}    # hours for the full dataset on n workers, at each mode's measured rate per worker
  for n in map(int, args.project_workers.split(",")):
    for mode, rate in rates.items():
      projection[f"{mode}_rate_x{n}_workers_hours"] = round(full * workers[mode] / (rate * n) / 3600, 2)
  print(json.dumps({"benchmark": "prepare_throughput_summary", "dataset": args.dataset, "full_size": full,
                    "synthetic_write_s": round(write_s, 1), "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "examples_per_s": {k: round(v, 1) for k, v in rates.items()},
                    "speedup_vs_single": {k: round(v / single, 2) for k, v in rates.items()} if single else None,
                    "projected": projection}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
