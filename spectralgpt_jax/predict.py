r"""Scene-scale prediction with any checkpoint: a georeferenced Cloud-Optimized GeoTIFF and a PNG quicklook.

  python -m spectralgpt_jax.predict --checkpoint runs/segmunich_demo/export --input SCENE.tif --output out.tif
  python -m spectralgpt_jax.predict --checkpoint runs/oscd_demo --input DATE1.SAFE --input2 DATE2.SAFE \
      --output change.tif --probabilities
  python -m spectralgpt_jax.predict --checkpoint CKPT --input bands_folder/ --output out.tif --batch_size 64
  python -m spectralgpt_jax.predict --checkpoint CKPT --input MAY.SAFE --input JULY.SAFE --output lc.tif
  python -m spectralgpt_jax.predict --checkpoint runs/oscd_demo --input 2019.SAFE --input 2020.SAFE \
      --input 2021.SAFE --output change.tif      # change_t0_t1.tif, change_t1_t2.tif, change_series.json

By the checkpoint's task (its metadata.json): segmentation -> class map; change detection (`--input2`, the later
date, resampled onto the first date's grid) -> change map; classification -> per-tile label map (one pixel per
tile); MAE -> reconstruction of the scene's bands. `--probabilities` also writes per-class probabilities
(`OUT_probabilities.tif`). SCENE: a multi-band GeoTIFF / COG (bands named in its descriptions, or `--bands`), a
folder of single-band files (`*_B02.tif`, ...), a Sentinel-2 `.SAFE` product or a STAC item JSON. Tiles of the
checkpoint's image size overlap by `--overlap` (default 0.5 for dense tasks, 0 for classification) and are blended
with a raised-cosine window; the scene is streamed strip by strip. `--harmonize auto` (default) removes the
processing-baseline 04.00 offset (DN - 1000 since 2022) as the product's metadata declares it; `off` keeps the
stored DN, a number adds that many DN. `--cloud_mask auto` (or a mask file) makes the pixels a cloud mask flags
nodata (L2A SCL classes 3,8,9,10 by default; `--cloud_classes` chooses). Several `--input`s (dates of one area)
make a time series: each on the first one's grid, one output per input (`lc_t0.tif`, `lc_t1.tif`, ...) listed with
its acquisition time in `lc_series.json`; with a change-detection model, one change map per pair of dates
(`--pairs consecutive`: `change_t0_t1.tif`, `change_t1_t2.tif`, ...; `--pairs first`: `change_t0_t1.tif`,
`change_t0_t2.tif`, ...). Bad input stops with one line, writing nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
import time

from spectralgpt_jax.inference import cli

PAIRINGS = ("consecutive", "first")


def parse_args(argv, *, description=__doc__, embed: bool = False):
  p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", required=True, help="export directory or run directory")
  scene_help = "GeoTIFF/COG, folder of band files, .SAFE product or STAC item"
  p.add_argument("--input", required=True, action="append", help=scene_help + "; repeat it for a time series "
                 "(later inputs are resampled onto the first one's grid; " +
                 ("rows carry input_index and datetime)" if embed else "one output per input, OUT_t0.tif, ...)"))
  p.add_argument("--output", required=True, help="output .parquet" if embed else "output COG (.tif)")
  p.add_argument("--bands", default=None, help="band names of an unnamed --input file, in file order: B04,B03,...")
  p.add_argument("--batch_size", type=int, default=16, help="tiles per forward pass (a multiple of the devices)")
  p.add_argument("--overlap", type=float, default=None, help="tile overlap fraction (default: 0.5 dense, else 0)")
  p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,model device mesh (one axis may be -1)")
  p.add_argument("--no_progress", action="store_true", help="log lines instead of a progress bar")
  p.add_argument("--harmonize", type=cli.harmonize_choice, default="auto", help=cli.HARMONIZE_HELP)
  p.add_argument("--cloud_mask", default="off", help=cli.CLOUD_MASK_HELP)
  p.add_argument("--cloud_classes", type=cli.cloud_classes_choice, default=None, help=cli.CLOUD_CLASSES_HELP)
  p.add_argument("--cloud_buffer", type=int, default=0, help="grow every cloud by this many output pixels (10 m "
                 "for Sentinel-2 band files; default 0)")
  p.add_argument("--min_valid_fraction", type=float, default=0.0,
                 help="skip tiles with a smaller fraction of valid (not nodata, not cloud) pixels" +
                      ("" if embed else ", leaving their pixels nodata where no other tile covers them") +
                      "; default 0: only wholly invalid tiles are skipped")
  p.add_argument("--datetime", action="append", default=None,
                 help="acquisition time of each input scene (ISO 8601, UTC), in the same order (" +
                      ("" if embed else "--input2 last; ") + "default: what the inputs declare, from the STAC item, "
                      ".SAFE or file names)")
  if embed:
    p.add_argument("--per_patch", default=None, help="also write the patch embeddings as a GeoTIFF on the patch grid")
  else:
    p.add_argument("--input2", default=None, help="change detection: the later date")
    p.add_argument("--bands2", default=None, help="band names of an unnamed --input2 file")
    p.add_argument("--harmonize2", type=cli.harmonize_choice, default=None, help="--harmonize for --input2 "
                   "(default: auto)")
    p.add_argument("--cloud_mask2", default=None, help="--cloud_mask for --input2 (default: --cloud_mask when that "
                   "is auto or off)")
    p.add_argument("--pairs", choices=PAIRINGS, default=None, help="change detection over several --input: "
                   "compare each date with the next (consecutive, the default) or the first with each later one "
                   "(first); one change map per pair, OUT_t0_t1.tif, ...")
    p.add_argument("--probabilities", action="store_true", help="also write per-class probabilities")
    p.add_argument("--mask_ratio", type=float, default=None, help="MAE: masking ratio (default: the checkpoint's)")
    p.add_argument("--seed", type=int, default=0, help="MAE: seed of the per-tile masks")
  return p.parse_args(argv)


def run(args) -> list[str]:
  from spectralgpt_jax.inference import checkpoint as ckpt_lib
  from spectralgpt_jax.inference import scene_io
  for flag, first_flag, given in (("--bands2", "--bands", args.bands2), ("--harmonize2", "--harmonize",
                                                                          args.harmonize2)):
    if given is not None and not args.input2:
      every = f"; {first_flag} applies to every --input" if len(args.input) > 1 else ""
      raise cli.UsageError(f"{flag} is for --input2 (the later date of a change-detection pair), and there is no "
                           f"--input2{every}")
  checkpoint = ckpt_lib.load(args.checkpoint)
  task, series = checkpoint.task, len(args.input) > 1
  if args.pairs is not None and (task != "change_detection" or not series):
    raise cli.UsageError(f"--pairs {args.pairs} chooses the pairs of a change-detection series (several --input); "
                         + (f"{args.checkpoint} is {task}" if task != "change_detection"
                            else f"there is one --input for {args.checkpoint}"))
  if task == "change_detection" and not args.input2 and not series:
    raise cli.UsageError(f"--checkpoint {args.checkpoint} is a change-detection model: pass --input2 (the "
                         "later date), or several --input for a change map per pair of dates")
  if task != "change_detection" and args.input2:
    raise cli.UsageError(f"--input2 is for change-detection checkpoints; {args.checkpoint} is {task}")
  if series and args.input2:
    raise cli.UsageError(f"--input2 is the later date of one change-detection pair; it takes one --input, not "
                         f"{len(args.input)}")
  mesh = cli.mesh_shape(args.mesh)
  cli.check_fraction("--min_valid_fraction", args.min_valid_fraction)
  count = len(args.input) + bool(args.input2)
  times = cli.acquisition_times(args, count)
  masks = cli.cloud_masks(args, count)
  scenes = cli.open_inputs(args, checkpoint, masks)
  try:
    if args.input2:
      scenes.append(scene_io.open_scene(args.input2, bands=cli.band_list(args.bands2), grid=scenes[0],
                                        harmonize="auto" if args.harmonize2 is None else args.harmonize2,
                                        cloud_mask=masks[1],
                                        cloud_classes=args.cloud_classes, cloud_buffer=args.cloud_buffer))
      scene_io.require_bands(scenes[-1], checkpoint.input_bands, f"the checkpoint {args.checkpoint}")
    return predict_scenes(checkpoint, scenes, args.output, batch_size=args.batch_size, overlap=args.overlap,
                          mesh=mesh, probabilities=args.probabilities, mask_ratio=args.mask_ratio, seed=args.seed,
                          min_valid=args.min_valid_fraction, series=series, times=times,
                          pairs=args.pairs or "consecutive",
                          progress=not args.no_progress, command=" ".join(shlex.quote(a) for a in sys.argv))
  finally:
    for scene in scenes:
      scene.close()


def series_path(output: str, index: int, count: int, later: int | None = None) -> str:
  """The output of input `index` of a time series of `count`: OUT_t0.tif, ... (zero-padded, so names sort); of the
  change-detection pair (index, later): OUT_t0_t1.tif, ..."""
  stem, ext = os.path.splitext(output)
  width = len(str(count - 1))
  pair = "" if later is None else f"_t{later:0{width}d}"
  return f"{stem}_t{index:0{width}d}{pair}{ext or '.tif'}"


def predict_scenes(checkpoint, scenes, output: str, *, apply=None, batch_size: int = 16, overlap: float | None = None,
                   mesh=(-1, 1, 1), probabilities: bool = False, mask_ratio: float | None = None, seed: int = 0,
                   min_valid: float = 0.0, series: bool = False, times=None, pairs: str = "consecutive",
                   progress: bool = True, command: str = "") -> list[str]:
  """Streams `scenes` through the checkpoint's task and returns the paths written: one scene, or two dates on the
  first one's grid (change detection), into `output` (+ probabilities, + a PNG quicklook); with `series`, each
  scene (all on the first one's grid) into its own `series_path` outputs, and `OUT_series.json` listing them; a
  change-detection series maps each pair of `pairs` ("consecutive" dates, or the "first" with each later one).
  `times`: the scenes' acquisition times where --datetime overrides them. Every output is finished (translated
  to a COG and checked, its quicklook made) when its scene is done and all are published together at the end
  (the series index last), so a failure or an interrupt at any scene publishes nothing. `apply(model, *inputs)`
  replaces the task's forward (tests use a double)."""
  from spectralgpt_jax.inference import engine, products, writers
  groups = _input_groups(checkpoint.task, len(scenes), series, times, pairs)
  grid = cli.tile_grid(scenes[0], checkpoint, overlap, dense=checkpoint.task != "classification")
  forward = engine.Forward(checkpoint.model, apply or products.apply_fn(checkpoint, mask_ratio),
                           batch_size=batch_size, mesh_shape=mesh)
  overridden, times = times is not None, times or [scene.acquired for scene in scenes]
  paths = [series_path(output, group[0], len(scenes), *group[1:]) for group in groups] if series else [output]
  for i, scene in enumerate(scenes if series else scenes[:1]):
    logging.info("%s%s; %d tiles of %d px (stride %d)", f"input {i}: " if series else "", scene.describe(),
                 len(grid), grid.tile, grid.stride)
  if series:
    _warn_of_other_series_files(output, paths)
  bar = engine.Progress(len(grid) * len(groups), enabled=progress)
  with contextlib.ExitStack() as stack:
    sinks = [stack.enter_context(products.make_sink(    # every output path is checked before the first tile
        grid, scenes[group[0]], checkpoint, path, probabilities=probabilities, command=command,
        input_tags={**cli.input_tags([scenes[i] for i in group], [times[i] for i in group]),
                    **(_series_tag(group) if series else {})}))
        for group, path in zip(groups, paths)]
    for group, sink in zip(groups, sinks):
      _predict_one(checkpoint, [scenes[i] for i in group], grid, forward, sink, bar, min_valid=min_valid, seed=seed)
    bar.close()
    if series:      # staged with the last output, so that the index appears with the files it lists
      files = [products.final_paths(sink.writers) for sink in sinks]
      index = sinks[-1].writers[-1].stage_companion(series_index_path(output))
      _write_series_index(output, index, checkpoint, scenes, times, overridden, groups, files, command)
    writers.publish_together([writer for sink in sinks for writer in sink.writers],
                             retract=[series_index_path(output)] if series else [])
    written = [path for sink in sinks for path in products.final_paths(sink.writers)]
  logging.info("%d tiles in %.1f s (%.1f tiles/s)", len(grid) * len(groups), time.time() - bar.start, bar.rate)
  return written


def _input_groups(task: str, count: int, series: bool, times, pairs: str) -> list[list[int]]:
  """The scenes of each output: one each in a series (a pair each in a change-detection series), else all of them
  (one scene, or a change-detection pair)."""
  if pairs not in PAIRINGS:
    raise cli.UsageError(f"--pairs {pairs!r}: must be one of {', '.join(PAIRINGS)}")
  if times is not None and len(times) != count:
    raise cli.UsageError(f"{len(times)} acquisition times for {count} scenes")
  change = task == "change_detection"
  if series and change and count < 2:
    raise cli.UsageError(f"a change-detection series needs at least 2 scenes, got {count}")
  if not series and count != 1 + change:
    raise cli.UsageError(f"a change-detection prediction takes 2 scenes, got {count}" if change else
                         f"a {task} prediction takes 1 scene, got {count} (series=True gives one output per scene)")
  if not series:
    return [list(range(count))]
  if not change:
    return [[i] for i in range(count)]
  return [[i, i + 1] for i in range(count - 1)] if pairs == "consecutive" else [[0, j] for j in range(1, count)]


def _predict_one(checkpoint, scenes, grid, forward, sink, bar, *, min_valid: float, seed: int) -> None:
  """One output: every tile row of `scenes` through the forward into `sink`, which is then finished (unpublished)."""
  from spectralgpt_jax.inference import engine, products
  mae = checkpoint.task == "pretrain"
  with engine.gdal_cache(scenes):
    for r, batch in engine.tile_batches(scenes, checkpoint, grid, min_valid=min_valid):
      outputs = None
      if batch.positions:
        extra = [products.mae_noise(batch.positions, checkpoint.cfg.num_tokens, seed)] if mae else []
        outputs = forward(*batch.inputs, *extra)
        if mae:
          outputs = checkpoint.restore(outputs, batch.raw[0], batch.valid)
      sink.add(r, batch, outputs)
      bar.update(len(grid.cols))
    sink.finish(quicklook=True)


def _warn_of_other_series_files(output: str, paths: list[str]) -> None:
  """An earlier series into the same OUT may have had more inputs: its extra files stay, and are not this one's."""
  import glob
  stem, ext = os.path.splitext(output)
  ours = {os.path.abspath(p) for p in paths}
  others = sorted(p for p in glob.glob(f"{glob.escape(stem)}_t[0-9]*{ext or '.tif'}")
                  if os.path.abspath(p) not in ours and not p.endswith(f"_probabilities{ext or '.tif'}"))
  if others:
    logging.warning("%s: %d other %s file(s) from an earlier run are not part of this series (e.g. %s); "
                    "%s_series.json lists this one's", os.path.dirname(os.path.abspath(output)), len(others),
                    os.path.basename(stem) + "_t*", os.path.basename(others[0]), os.path.basename(stem))


def series_index_path(output: str) -> str:
  return f"{os.path.splitext(output)[0]}_series.json"


def _series_tag(group: list[int]) -> dict[str, str]:
  return {"input_index": str(group[0])} if len(group) == 1 else {"input_pair": ",".join(map(str, group))}


def _write_series_index(output, staged: str, checkpoint, scenes, times, overridden: bool, groups, files,
                        command: str):
  """OUT_series.json (written to `staged`): per input (in --input order) its record and its files (relative to the
  JSON's folder); a change-detection series lists its files per pair instead, under `pairs`."""
  from spectralgpt_jax.tasks import reporting
  folder = os.path.dirname(os.path.abspath(output))       # the index's folder too
  relative = [[os.path.relpath(path, folder) for path in paths] for paths in files]
  entries = [{"input_index": i, **cli.input_record(scene, when, overridden)}
             for i, (scene, when) in enumerate(zip(scenes, times))]
  index = {"checkpoint": os.path.abspath(checkpoint.path), "task": checkpoint.task, "command": command,
           "grid_of": scenes[0].source, "inputs": entries}
  if checkpoint.task == "change_detection":
    index["pairs"] = [{"inputs": group, "files": paths} for group, paths in zip(groups, relative)]
  else:
    for entry, paths in zip(entries, relative):
      entry["files"] = paths
  reporting.write_json(staged, index)


def main(argv: list[str] | None = None) -> int:
  return cli.main(run, parse_args(argv))


if __name__ == "__main__":
  from spectralgpt_jax import runtime
  runtime.configure()        # fast allocator and XLA CPU flags (may re-execute this process once)
  sys.exit(main())
