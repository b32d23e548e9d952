"""What scene-scale inference writes: Cloud-Optimized GeoTIFFs, GeoParquet embeddings, PNG quicklooks.

The prediction engine streams a scene in horizontal strips and never holds all of it, so every writer takes its data
piece by piece. An output appears at its path only when it is complete and valid: all temporary files live in a
hidden staging directory next to the output (same filesystem, so the final os.replace is atomic), and a failed,
interrupted or abandoned write removes that directory and leaves any earlier file at the path untouched.

`RasterWriter` (cog.py), `GeoParquetWriter` (geoparquet.py) and `quicklook_png` (quicklook.py) are importable from
this module. They are loaded on first use because those modules import the shared pieces defined here (an eager
import at the bottom of this file would break when a submodule is imported first). No JAX in here.
"""
from __future__ import annotations

import colorsys
import contextlib
import importlib
import json
import os
import shutil
import tempfile
import warnings
import weakref
from typing import Sequence

from spectralgpt_jax.tasks.reporting import _jsonable

__all__ = ["OutputError", "class_colormap", "class_band_tags", "palette_colour",
           "RasterWriter", "GeoParquetWriter", "quicklook_png"]   # noqa: F822 (these three are lazy: __getattr__)

_LAZY = {"RasterWriter": "cog", "GeoParquetWriter": "geoparquet", "quicklook_png": "quicklook"}


def __getattr__(name: str):
  if name in _LAZY:
    value = getattr(importlib.import_module(f"{__package__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY))


class OutputError(ValueError):
  """One-line message naming the output file and the problem."""


# ----------------------------------------------------------------------------------------------- staging
class Staging:
  """A hidden directory next to `path` holding every temporary file of one write.

  `publish(tmp)` moves one finished file onto `path` (os.replace: readers see the old file or the new one, never a
  partial one) and removes the directory; `discard()` only removes it. A weakref finalizer discards it too when the
  owner is garbage-collected or the interpreter exits, so a writer that is never committed leaves nothing behind.
  """

  def __init__(self, path):
    self.path = os.path.abspath(os.fspath(path))
    if os.path.isdir(self.path):
      raise OutputError(f"{self.path}: is a directory, not an output file")
    parent = os.path.dirname(self.path)
    try:
      os.makedirs(parent, exist_ok=True)
      self.dir = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(self.path)}.", suffix=".partial")
    except OSError as e:
      raise OutputError(f"{self.path}: cannot create a staging directory in {parent} ({e.strerror or e})") from e
    self._finalizer = weakref.finalize(self, shutil.rmtree, self.dir, ignore_errors=True)

  def file(self, name: str) -> str:
    return os.path.join(self.dir, name)

  @property
  def active(self) -> bool:
    return self._finalizer.alive

  def publish(self, tmp: str, companions=()) -> str:
    """Moves `tmp` onto `path`, then each (staged file, final path) of `companions`, then removes the directory."""
    os.replace(tmp, self.path)
    for staged, final in companions:
      os.replace(staged, final)
    self.discard()
    return self.path

  def discard(self) -> None:
    self._finalizer()  # idempotent: the finalizer runs at most once


class StagedWriter:
  """What both writers share: `commit()` publishes the finished file atomically, `abort()` drops the staged data
  (safe to call twice), and leaving a `with` block without `commit()` aborts (with a warning when no exception is
  on its way). `commit()` is `finish()` (the slow part: translate and check the file, still in staging) then
  `publish()` (one rename), so that several files can be finished one by one and published together. Between the
  two, `stage_companion()` gives a staging path for a file derived from the finished one (its quicklook), which
  `publish()` moves into place right after it and `abort()` drops with it.
  Subclasses set `path`, `_staging` and `_state` ("open" / "finished" / "committed" / "aborted"), finish and check
  their file in `_finish() -> temporary path`, close it in `_close_file()`, and name it in errors with `KIND`."""

  KIND = "file"
  _companions: tuple = ()   # (staged path, final path) of files published with this one; set per instance

  def _close_file(self) -> None:
    raise NotImplementedError

  def _finish(self) -> str:
    raise NotImplementedError

  def commit(self) -> str:
    """Finishes, checks and publishes the file; returns its final path. On any failure nothing is published."""
    if self._state != "open":
      raise self._fail(f"commit() after the writer was {self._state}")
    self.finish()
    return self.publish()

  def finish(self) -> None:
    """Completes and checks the file in its staging directory, without publishing it; on failure aborts."""
    if self._state != "open":
      raise self._fail(f"finish() after the writer was {self._state}")
    self._finished = self._guarded(self._finish)
    self._state = "finished"

  @property
  def finished_path(self) -> str:
    """The finished, checked file, still in staging (to derive companions from before publishing)."""
    if self._state != "finished":
      raise self._fail(f"finished_path of a writer that is {self._state}, not finished")
    return self._finished

  def stage_companion(self, final_path: str) -> str:
    """A staging path for a file made from the finished one; publish() moves it onto `final_path` (listed by
    `companion_paths()`), abort() drops it."""
    if self._state != "finished":
      raise self._fail(f"stage_companion() of a writer that is {self._state}, not finished")
    final_path = os.path.abspath(os.fspath(final_path))
    staged = self._staging.file(f"companion{len(self._companions)}_{os.path.basename(final_path)}")
    self._companions = (*self._companions, (staged, final_path))
    return staged

  def publish(self) -> str:
    """Moves the finished file onto `path` (atomic), then its companions, and returns `path`."""
    if self._state != "finished":
      raise self._fail(f"publish() of a writer that is {self._state}, not finished")
    missing = [staged for staged, _ in self._companions if not os.path.isfile(staged)]
    if missing:
      self.abort()
      raise self._fail(f"a companion file was staged but never written ({os.path.basename(missing[0])})")
    self._guarded(lambda: self._staging.publish(self._finished, self._companions))
    self._state = "committed"
    return self.path

  def companion_paths(self) -> list[str]:
    """The final paths of the companions staged so far, in staging order."""
    return [final for _, final in self._companions]

  def _guarded(self, step):
    try:
      return step()
    except BaseException as e:
      self.abort()
      if isinstance(e, Exception) and not isinstance(e, OutputError):
        raise self._fail(f"cannot write the {self.KIND} ({type(e).__name__}: {e})") from e
      raise

  def abort(self) -> None:
    """Drops everything written so far (no file at `path` from this writer); safe to call more than once."""
    try:
      self._close_file()
    except Exception:  # the data is being thrown away; a close error must not mask the original one
      pass
    self._staging.discard()
    if getattr(self, "_state", None) != "committed":
      self._state = "aborted"

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb) -> bool:
    if self._state in ("open", "finished"):
      self.abort()
      if exc_type is None:
        warnings.warn(f"{self.path}: writer closed without commit(); nothing was saved", RuntimeWarning,
                      stacklevel=2)
    return False


def publish_together(outputs: Sequence[StagedWriter], retract: Sequence[str] = ()) -> None:
  """Publishes finished writers (renames, fast) with SIGINT/SIGTERM held until the last, so that an interrupt
  cannot leave some of them in place; a failed rename drops the rest and names the files already in place.

  `retract`: files removed before the first rename, when they exist. A time series passes its earlier index, so
  the index next to the files is never the old one over a half-replaced set. A `kill -9` between two renames
  (which no handler can hold) then leaves the maps renamed so far and no index, so an index that exists always
  describes the files beside it. A failed rename's error names the files removed, as it names those in place."""
  done: list[str] = []
  with _signals_held():
    removed = _retract(retract, outputs)
    for i, writer in enumerate(outputs):
      try:
        writer.publish()
      except BaseException as e:
        for rest in outputs[i + 1:]:
          rest.abort()
        notes = [f"already in place: {', '.join(done)}"] if done else []
        notes += [f"removed before publishing: {', '.join(removed)}"] if removed else []
        if notes and isinstance(e, OutputError):
          raise OutputError("; ".join([str(e), *notes])) from e
        raise
      done += [writer.path, *writer.companion_paths()]


def _retract(paths: Sequence[str], outputs: Sequence[StagedWriter]) -> list[str]:
  """Removes each existing file of `paths` (absolute paths of those removed); one that cannot be removed aborts
  every writer of `outputs` and is a one-line OutputError."""
  removed = []
  for path in map(os.path.abspath, paths):
    try:
      os.remove(path)
      removed.append(path)
    except FileNotFoundError:
      pass
    except OSError as e:
      for writer in outputs:
        writer.abort()
      raise OutputError(f"{path}: cannot remove the earlier file before publishing ({e.strerror or e})") from e
  return removed


@contextlib.contextmanager
def _signals_held():
  """SIGINT and SIGTERM arriving inside the block raise KeyboardInterrupt when it ends (main thread only)."""
  import signal
  import threading
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []
  held = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
          for sig in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield
  finally:
    for sig, handler in held.items():
      signal.signal(sig, handler)
  if received:
    raise KeyboardInterrupt


def tag_text(value) -> str:
  """GDAL tags are strings: strings stay as they are, everything else becomes JSON (numpy values included)."""
  if isinstance(value, str):
    return value
  return json.dumps(_jsonable(value))


# ----------------------------------------------------------------------------------------------- class colours
TRANSPARENT = (0, 0, 0, 0)
# Twenty colours chosen to be told apart (Trubetskoy's "20 simple distinct colours"), used in order.
_PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (67, 99, 216), (245, 130, 49), (145, 30, 180), (66, 212, 244),
    (240, 50, 230), (191, 239, 69), (250, 190, 212), (70, 153, 144), (220, 190, 255), (154, 99, 36),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 216, 177), (0, 0, 117), (169, 169, 169),
]
# Conventional land-cover colours (mostly ESA WorldCover's legend) for class names containing these words; the first
# matching rule wins, so "no change" is tested before "change" and "wetland" before "water".
_NAMED = [
    (("no change", "no-change", "nochange", "unchanged"), (170, 170, 170)),
    (("change",), (228, 26, 28)),
    (("background", "unlabeled", "unlabelled", "unclassified", "void"), (40, 40, 40)),
    (("cloud shadow",), (90, 90, 90)),
    (("cloud",), (225, 225, 250)),
    (("snow", "ice", "glacier"), (240, 240, 240)),
    (("wetland", "marsh", "bog", "peat", "swamp"), (0, 150, 160)),
    (("mangrove",), (0, 207, 117)),
    (("water", "sea", "river", "lake", "ocean", "lagoon", "estuar"), (0, 100, 200)),
    (("forest", "tree", "wood"), (0, 100, 0)),
    (("shrub", "scrub", "heath", "bush"), (255, 187, 34)),
    (("crop", "arable", "agricult", "farm", "paddy", "vineyard", "orchard", "olive"), (240, 150, 255)),
    (("grass", "pasture", "meadow", "herbaceous"), (255, 255, 76)),
    (("dense veg",), (0, 120, 0)),
    (("sparse veg", "low veg"), (170, 210, 90)),
    (("vegetat", "green"), (60, 180, 60)),
    (("urban", "built", "building", "artificial", "industr", "road", "residential", "settlement", "city"),
     (250, 0, 0)),
    (("bare", "sand", "rock", "desert", "soil", "beach", "dune", "sparse"), (180, 180, 180)),
    (("moss", "lichen"), (250, 230, 160)),
]


def palette_colour(index: int) -> tuple[int, int, int]:
  """Colour number `index` of the fixed palette; beyond its twenty colours, golden-angle hue steps at alternating
  saturation and brightness keep neighbouring classes apart."""
  if index < len(_PALETTE):
    return _PALETTE[index]
  k = index - len(_PALETTE)
  hue = (k * 0.618033988749895) % 1.0
  sat, val = ((0.85, 0.9), (0.55, 0.75), (0.9, 0.6))[k % 3]
  return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, sat, val))


def _named_colour(name: str, used: set) -> tuple[int, int, int] | None:
  low = name.lower()
  for words, colour in _NAMED:
    if any(w in low for w in words):
      return None if colour in used else colour  # a second "forest" class gets a palette colour, not the same one
  return None


def default_class_nodata(num_classes: int) -> int:
  """255 for uint8 class maps, 65535 once the classes need uint16."""
  return 255 if num_classes <= 255 else 65535


def class_colormap(num_classes: int, names: Sequence[str] | None = None, *,
                   nodata: int | None = None) -> dict[int, tuple[int, int, int, int]]:
  """Colour table {class: (r, g, b, 255)} for a class map plus {nodata: transparent black}.

  Classes whose names say what they are (water, forest, urban, change...) get the conventional colour, the rest the
  fixed distinct palette in class order, so the same model always paints the same class the same way.
  """
  if num_classes < 1:
    raise ValueError(f"class_colormap: num_classes must be >= 1, got {num_classes}")
  if names is not None and len(names) != num_classes:
    raise ValueError(f"class_colormap: {len(names)} names for {num_classes} classes")
  nodata = default_class_nodata(num_classes) if nodata is None else int(nodata)
  if 0 <= nodata < num_classes:
    raise ValueError(f"class_colormap: nodata {nodata} is one of the {num_classes} class indices")
  colours: dict[int, tuple[int, int, int]] = {}
  if names is not None:
    for i, name in enumerate(names):
      colour = _named_colour(str(name), set(colours.values()))
      if colour is not None:
        colours[i] = colour
  used, next_palette = set(colours.values()), 0
  for i in range(num_classes):
    if i in colours:
      continue
    while palette_colour(next_palette) in used:
      next_palette += 1
    colours[i] = palette_colour(next_palette)
    next_palette += 1
  table = {i: (*colours[i], 255) for i in range(num_classes)}
  table[nodata] = TRANSPARENT
  return table


def class_band_tags(names: Sequence[str]) -> dict[str, str]:
  """Band tags naming the classes of a class map: `class_names` (a JSON list) and `class_<i>=<name>` each, so that
  both programs (one JSON field) and people browsing gdalinfo output find them."""
  names = [str(n) for n in names]
  return {"class_names": json.dumps(names), **{f"class_{i}": n for i, n in enumerate(names)}}
