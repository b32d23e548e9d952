"""What the `predict` and `embed` commands share: argument helpers, the tile grid, and one-line errors.

Bad input (a missing band, an unnamed file, a scene that does not overlap, a checkpoint of another task, an
unreadable file) ends the command with `error: <one line naming the file and the problem>` and exit status 1;
the writers are atomic, so nothing is left at the output paths. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import logging
import sys
from typing import Callable

from spectralgpt_jax.inference.tiling import TileGrid


class UsageError(ValueError):
  """A command-line combination that cannot work (one line)."""


def band_list(text: str | None) -> tuple[str, ...] | None:
  return tuple(b.strip() for b in text.split(",") if b.strip()) if text else None


def harmonize_choice(text: str):
  """argparse type of --harmonize: 'auto', 'off' or a number of DN (one-line usage error otherwise)."""
  import argparse

  from spectralgpt_jax.inference import radiometry
  try:
    return radiometry.parse_choice(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


HARMONIZE_HELP = ("how stored DN become the encoding SpectralGPT was trained on (reflectance x 10000, before "
                  "processing baseline 04.00): auto = from the product's metadata (.SAFE MTD, STAC, GDAL "
                  "scale/offset), off = as stored, or a number of DN to add to every band, e.g. -1000")


CLOUD_MASK_HELP = ("pixels a cloud mask flags become nodata: off (default), auto = the input's own mask (.SAFE: "
                   "L2A SCL, else QI_DATA/MSK_CLASSI_B00, else the older MSK_CLOUDS_B00.gml; band folder: its "
                   "*_SCL* file; STAC: the scl asset; GeoTIFF: its band described SCL or QA60), or a mask raster "
                   "or Sentinel-2 GML file")
CLOUD_CLASSES_HELP = ("values of the cloud mask that are cloud: SCL default 3,8,9,10 (cloud shadows, medium and high "
                      "probability, cirrus); required for a mask file that is not SCL/MSK_CLASSI/QA60, e.g. 1 or "
                      "40-100")


def cloud_classes_choice(text: str):
  """argparse type of --cloud_classes: '3,8,9,10' or '40-100' (one-line usage error otherwise)."""
  import argparse

  from spectralgpt_jax.inference import clouds
  try:
    return clouds.parse_classes(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def cloud_masks(args, count: int) -> list[str]:
  """The --cloud_mask of each of `count` inputs. A change-detection pair (predict's --input2): --cloud_mask2 for the
  second date, else --cloud_mask when that is auto or off (a mask file belongs to one scene); several --input (a
  time series, predict or embed): --cloud_mask auto or off for every input."""
  second = getattr(args, "cloud_mask2", None)
  if args.cloud_classes is not None and args.cloud_mask == "off" and second in (None, "off"):
    raise UsageError("--cloud_classes says which mask values are cloud: it needs --cloud_mask (auto or a file)")
  buffer = getattr(args, "cloud_buffer", 0)
  if buffer < 0:
    raise UsageError(f"--cloud_buffer {buffer}: must be >= 0 pixels")
  if buffer and args.cloud_mask == "off" and second in (None, "off"):
    raise UsageError("--cloud_buffer grows the clouds of a mask: it needs --cloud_mask (auto or a file)")
  if second is not None and not getattr(args, "input2", None):
    raise UsageError("--cloud_mask2 is the mask of --input2, and there is no --input2")
  if count == 1:
    return [args.cloud_mask]
  if second is not None:
    return [args.cloud_mask, second]
  if args.cloud_mask in ("auto", "off"):
    return [args.cloud_mask] * count
  if not getattr(args, "input2", None):      # a time series: one choice for all inputs
    raise UsageError(f"--cloud_mask {args.cloud_mask} is one scene's mask file; with {count} --input scenes use "
                     f"--cloud_mask auto (each input's own mask) or off")
  raise UsageError(f"--cloud_mask {args.cloud_mask} is the mask of --input; pass --cloud_mask2 for --input2 "
                   f"(auto, off or its own mask file)")


def acquisition_times(args, count: int) -> list | None:
  """The --datetime overrides (UTC), one per input scene in order, or None when the flag is not given."""
  from spectralgpt_jax.inference import acquisition
  if not args.datetime:
    return None
  if len(args.datetime) != count:
    given = len(args.datetime)
    order = " (--input, then --input2)" if getattr(args, "input2", None) else ""
    raise UsageError(f"--datetime is given {given} time{'s' if given != 1 else ''} for {count} input scenes{order}; "
                     f"give one per scene, in the same order")
  try:
    return [acquisition.parse(text) for text in args.datetime]
  except ValueError as e:
    raise UsageError(f"--datetime: {e}") from None


def open_inputs(args, checkpoint, masks: list[str]) -> list:
  """Every --input, the later ones resampled onto the first one's grid, each checked for the checkpoint's bands
  (all opened before any work: a bad one stops the command before anything is written)."""
  from spectralgpt_jax.inference import scene_io
  scenes = []
  try:
    for path, mask in zip(args.input, masks):
      scenes.append(scene_io.open_scene(path, bands=band_list(args.bands), harmonize=args.harmonize,
                                        grid=scenes[0] if scenes else None, cloud_mask=mask,
                                        cloud_classes=args.cloud_classes, cloud_buffer=args.cloud_buffer))
      scene_io.require_bands(scenes[-1], checkpoint.input_bands, f"the checkpoint {args.checkpoint}")
  except BaseException:
    for scene in scenes:
      scene.close()
    raise
  return scenes


def input_record(scene, when, overridden: bool) -> dict:
  """One input's entry in an output's metadata: path, acquisition time and where it came from, radiometry, mask."""
  from spectralgpt_jax.inference import acquisition
  return {"path": scene.source, "datetime": None if when is None else acquisition.iso(when),
          "acquired_from": "--datetime" if overridden else scene.acquired_from,
          "radiometry": scene.radiometry.describe(),
          "cloud_mask": scene.clouds.describe() if scene.clouds else "off"}


def input_tags(scenes, times=None) -> dict[str, str]:
  """The `radiometry`, `cloud_mask`, `acquired` and `datetime` tags of the outputs: how each input's DN were
  harmonised, which of its pixels were masked as cloud, when it declares it was acquired, and the time used
  (`times`, the --datetime overrides, else `acquired`); input2 = the second input."""
  from spectralgpt_jax.inference import acquisition

  def joined(parts):
    return parts[0] if len(parts) == 1 else "; ".join(f"input{i + 1 if i else ''}: {p}" for i, p in enumerate(parts))
  return {"radiometry": joined([scene.radiometry.describe() for scene in scenes]),
          "cloud_mask": joined([scene.clouds.describe() if scene.clouds else "off" for scene in scenes]),
          "acquired": joined([acquisition.iso(scene.acquired) for scene in scenes]),
          "datetime": joined([acquisition.iso(when) for when in (times or [s.acquired for s in scenes])])}


def check_fraction(flag: str, value: float) -> None:
  if not 0.0 <= value <= 1.0:
    raise UsageError(f"{flag} {value}: must be in [0, 1]")


def mesh_shape(text: str) -> tuple[int, int, int]:
  try:
    sizes = tuple(int(s) for s in text.split(","))
  except ValueError:
    sizes = ()
  if len(sizes) != 3:
    raise UsageError(f"--mesh {text!r}: expected three sizes data,fsdp,model (one may be -1)")
  return sizes


def tile_grid(scene, checkpoint, overlap: float | None, *, dense: bool) -> TileGrid:
  """Tiles of the checkpoint's image size; overlap 0.5 for dense outputs, 0 (one pixel per tile) otherwise."""
  overlap = (0.5 if dense else 0.0) if overlap is None else overlap
  if not 0.0 <= overlap < 1.0:
    raise UsageError(f"--overlap {overlap}: must be in [0, 1)")
  size = checkpoint.cfg.img_size
  grid = TileGrid(scene.height, scene.width, size, overlap)
  if scene.height < size or scene.width < size:
    logging.warning("%s: the scene (%d x %d px) is smaller than a tile (%d px): padded with nodata", scene.source,
                    scene.height, scene.width, size)
  return grid


def _known_errors() -> tuple[type[BaseException], ...]:
  from spectralgpt_jax.inference.checkpoint import CheckpointNotFound
  from spectralgpt_jax.inference.scene_io import SceneError
  from spectralgpt_jax.inference.writers import OutputError
  from spectralgpt_jax.interop import CheckpointError
  from spectralgpt_jax.sharding import MeshError
  return (UsageError, SceneError, OutputError, CheckpointNotFound, CheckpointError, MeshError, FileNotFoundError)


def _terminate_cleanly() -> None:
  """SIGTERM (a scheduler's kill, `timeout`) unwinds like Ctrl-C, so the writers remove their staging files."""
  import signal
  import threading
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _interrupt)


def _raise_open_file_limit() -> None:
  """A time series keeps every input open (one GDAL dataset per band file: ~15 per .SAFE date), which passes the
  usual soft limit of 1024 open files at ~60 dates; the hard limit, which a process may take, is far higher."""
  try:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard     # Linux refuses an infinite NOFILE
    if soft != resource.RLIM_INFINITY and soft < target:
      resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
  except (ImportError, ValueError, OSError):   # not POSIX, or not allowed: keep the limit there is
    pass


def _interrupt(signum, frame):
  raise KeyboardInterrupt


def main(run: Callable, args) -> int:
  """Run a command; known bad input -> `error: ...` on stderr and exit status 1."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  for noisy in ("absl", "jax", "rasterio", "rio_cogeo", "orbax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from spectralgpt_jax import runtime
  logging.info("runtime: %s", runtime.describe())
  _terminate_cleanly()
  _raise_open_file_limit()
  try:
    written = run(args)
  except _known_errors() as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("interrupted: no output was written", file=sys.stderr)
    return 130
  for path in written:
    print(f"wrote {path}")
  return 0
