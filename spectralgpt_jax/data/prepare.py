"""Prepare a dataset once: real on-disk layout in --manual_dir -> ArrayRecord files in --data_dir (TF-free).

  python -m spectralgpt_jax.data.prepare --dataset bigearthnet --manual_dir /data/BigEarthNet --data_dir ~/tfds

Datasets: eurosat, bigearthnet, bigearthnet_v2, fmow_sentinel, segmunich, oscd. tfds shows a progress bar per
split; at the end we print the report (examples read, skipped with --on_error=skip, excluded by the official
lists, how the splits were chosen), which is also written to <data_dir>/<builder>/<version>/prepare_report.json.
A dataset already prepared in --data_dir is reused, unless one of its splits is empty (then it is an error).

In parallel, with the same output: `--num_workers N` reads in N local processes; `--beam` runs the builder as an
Apache Beam pipeline (`pip install -e ".[beam]"`), on the runner its `--beam_options` name, e.g.

  python -m spectralgpt_jax.data.prepare --dataset bigearthnet --manual_dir RAW --data_dir OUT --beam \
      --beam_options "--runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing"
"""

from __future__ import annotations

import argparse
import json
import sys

import tensorflow_datasets as tfds

from spectralgpt_jax.data.builders import BUILDERS, parallel
from spectralgpt_jax.data.readers.common import DataError


def prepare(dataset: str, manual_dir: str, data_dir: str, on_error: str = "raise", num_workers: int = 1,
            beam_options: str | None = None, beam: bool = False, **builder_kwargs):
  """Build the ArrayRecord files and return the builder (whose `.report` says what was read/skipped).

  `beam`: run as an Apache Beam pipeline with `beam_options` (a command-line string; DirectRunner if empty)."""
  if dataset not in BUILDERS:
    raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted(BUILDERS)}")
  if beam_options and not beam:
    raise ValueError("beam_options is given without --beam")
  options = parallel.beam_options(beam_options) if beam else None
  builder = BUILDERS[dataset](data_dir=data_dir, file_format="array_record", on_error=on_error,
                              num_workers=num_workers, beam=beam, **builder_kwargs)
  if builder.is_prepared():
    check_reusable(builder, builder_kwargs.get("split_scheme"))
  config = tfds.download.DownloadConfig(manual_dir=manual_dir, beam_options=options)
  builder.download_and_prepare(download_config=config)
  return builder


def check_reusable(builder, split_scheme: str | None = None) -> None:
  """tfds reuses a prepared dataset without looking at it: refuse one with an empty split (written by an older
  version that did not catch an empty download) or one whose splits were chosen otherwise than requested."""
  where = builder.data_path
  empty = [name for name, split in builder.info.splits.items() if not split.num_examples]
  if not builder.info.splits or empty:
    raise DataError(f"{where}: already prepared but split(s) {', '.join(empty) or '(none)'} are empty; delete "
                    "that folder and prepare again")
  report = where / "prepare_report.json"
  details = json.loads(report.read_text()).get("details", {}) if report.exists() else {}
  if split_scheme and details.get("scheme") != split_scheme:
    raise DataError(f"{where}: already prepared with split_scheme={details.get('scheme')!r}, not "
                    f"{split_scheme!r}; use another --data_dir, or delete that folder")


# Options that only one dataset takes: flag -> (dataset, builder keyword, value passed when the flag is set).
DATASET_FLAGS = {
    "lists_dir": ("bigearthnet", "lists_dir", None),
    "split_scheme": ("eurosat", "split_scheme", None),
    "no_split_md5": ("eurosat", "verify_split_md5", False),
    "reference_maps": ("bigearthnet_v2", "reference_maps", True),
}


def dataset_kwargs(parser, args) -> dict:
  kwargs = {}
  for flag, (dataset, keyword, value) in DATASET_FLAGS.items():
    given = getattr(args, flag)
    if not given:
      continue
    if args.dataset != dataset:
      parser.error(f"--{flag} is for --dataset {dataset}, not {args.dataset}")
    kwargs[keyword] = given if value is None else value
  return kwargs


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
  parser.add_argument("--num_workers", type=int, default=1, help="local processes reading the files")
  parser.add_argument("--beam", action="store_true", help="prepare as an Apache Beam pipeline (the beam extra)")
  parser.add_argument("--beam_options", default=None,
                      help='Beam pipeline options, e.g. "--runner=DataflowRunner --project=P --region=R '
                           '--temp_location=gs://B/tmp" (default: the DirectRunner in this process)')
  parser.add_argument("--split_scheme", default=None,
                      help="eurosat only: split files to use (neumann, spectralgpt, spatial, eurosat100, all_train; "
                           "default: neumann, else spectralgpt, else all in train)")
  parser.add_argument("--no_split_md5", action="store_true",
                      help="eurosat only: accept split files whose md5 differs from the published lists")
  parser.add_argument("--reference_maps", action="store_true",
                      help="bigearthnet_v2 only: also store the pixel-level reference maps (config reference_maps)")
  args = parser.parse_args(argv)
  kwargs = dataset_kwargs(parser, args)
  if args.num_workers < 1:
    parser.error(f"--num_workers must be >= 1, got {args.num_workers}")
  if args.beam_options and not args.beam:
    parser.error("--beam_options needs --beam")
  if args.beam and args.num_workers > 1:
    parser.error("--num_workers is for the local path; with --beam the runner's options set the workers")
  tfds.display_progress_bar(True)
  try:
    builder = prepare(args.dataset, args.manual_dir, args.data_dir, args.on_error, args.num_workers,
                      args.beam_options, args.beam, **kwargs)
  except (DataError, ImportError) as e:   # bad or missing data (naming the file / folder), or no Beam: one line
    print(f"prepare: {e}", file=sys.stderr)
    return 2
  summary = builder.report.summary()
  print(
      json.dumps(
          {
              "dataset": args.dataset,
              "prepared_to": str(builder.data_dir),
              "splits": {k: v.num_examples for k, v in builder.info.splits.items()},
              **{k: summary[k] for k in ("read", "skipped", "excluded", "details")},
          },
          indent=1,
      )
  )
  for item in summary["skipped_examples"][:20]:
    print(f"skipped {item['file']}: {item['reason']}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
