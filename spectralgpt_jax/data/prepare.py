"""Prepare a dataset once: real on-disk layout in --manual_dir -> ArrayRecord files in --data_dir (TF-free).

  python -m spectralgpt_jax.data.prepare --dataset bigearthnet --manual_dir /data/BigEarthNet --data_dir ~/tfds

Datasets: eurosat, bigearthnet, fmow_sentinel, segmunich, oscd. tfds shows a progress bar per split; at the end
we print the report (examples read, skipped with --on_error=skip, excluded by the official lists), which is also
written to <data_dir>/<builder>/<version>/prepare_report.json.
"""

from __future__ import annotations

import argparse
import json
import sys

import tensorflow_datasets as tfds

from spectralgpt_jax.data.builders import BUILDERS
from spectralgpt_jax.data.readers.common import DataError


def prepare(dataset: str, manual_dir: str, data_dir: str, on_error: str = "raise", **builder_kwargs):
  """Build the ArrayRecord files and return the builder (whose `.report` says what was read/skipped)."""
  if dataset not in BUILDERS:
    raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted(BUILDERS)}")
  builder = BUILDERS[dataset](data_dir=data_dir, file_format="array_record", on_error=on_error, **builder_kwargs)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", required=True, choices=sorted(BUILDERS))
  parser.add_argument("--manual_dir", required=True, help="folder holding the downloaded (extracted) data")
  parser.add_argument("--data_dir", required=True, help="tfds data_dir to write the prepared dataset to")
  parser.add_argument(
      "--on_error",
      default="raise",
      choices=("raise", "skip"),
      help="bad files: stop with an error naming the file, or skip and count them in the report",
  )
  parser.add_argument(
      "--lists_dir",
      default=None,
      help="bigearthnet only: folder with the official lists (default: the copies shipped here)",
  )
  args = parser.parse_args(argv)
  tfds.display_progress_bar(True)
  kwargs = {"lists_dir": args.lists_dir} if args.dataset == "bigearthnet" else {}
  try:
    builder = prepare(args.dataset, args.manual_dir, args.data_dir, args.on_error, **kwargs)
  except DataError as e:          # bad or missing data: one line naming the file / folder, not a traceback
    print(f"prepare: {e}", file=sys.stderr)
    return 2
  summary = builder.report.summary()
  print(
      json.dumps(
          {
              "dataset": args.dataset,
              "prepared_to": str(builder.data_dir),
              "splits": {k: v.num_examples for k, v in builder.info.splits.items()},
              **{k: summary[k] for k in ("read", "skipped", "excluded")},
          },
          indent=1,
      )
  )
  for item in summary["skipped_examples"][:20]:
    print(f"skipped {item['file']}: {item['reason']}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
