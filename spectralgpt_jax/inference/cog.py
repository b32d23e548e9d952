"""RasterWriter: strips of rows in, one validated Cloud-Optimized GeoTIFF out.

Strips go into a tiled, lightly compressed staging GeoTIFF. Rows are gathered into whole tile rows before they reach
GDAL, so every compressed tile is written exactly once (GDAL would otherwise re-read, re-compress and append a tile
that one strip filled half of, bloating the file) and at most one tile row of data is held in memory. `commit()`
then lets rio-cogeo build the overviews and the COG layout, validates the result and moves it into place.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Sequence

import numpy as np
import rasterio
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_translate, cog_validate

from spectralgpt_jax.inference.writers import (TRANSPARENT, OutputError, StagedWriter, Staging, class_colormap,
                                              tag_text)

KINDS = ("classes", "continuous")
COG_BLOCK = 512          # COG tile size (256 for rasters smaller than one such tile)
STAGE_BLOCK = 256        # staging tile size = rows buffered before a GDAL write
IN_MEMORY_BYTES = 64 << 20  # rio-cogeo's own threshold counts pixels, not bytes: a many-band float tile would sit
                            # in RAM whole, so above this size its intermediate file goes to disk (staging dir)
OVERVIEW_RESAMPLING = {"classes": "nearest", "continuous": "average"}
# GDAL compresses tiles on worker threads: staging writes overlap the engine's next strip, and the translation (the
# slow part of a commit: every tile is compressed twice) scales with the cores.
GDAL_THREADS = "ALL_CPUS"


class RasterWriter(StagedWriter):
  """Context manager. Streams windowed writes into a temporary tiled GeoTIFF next to the output, then on `commit()`
  translates it to a Cloud-Optimized GeoTIFF (internal overviews: nearest for class maps, average for continuous
  data; DEFLATE with a predictor; 512 px tiles) under a temporary name, validates it with `cog_validate` and moves
  it into place with os.replace. If the `with` block exits with an exception, or commit() is never called (or
  fails), every temporary file is removed, nothing new exists at `path` and a file already there is untouched.

  kind="classes": uint8 / uint16 single band, integer nodata; the colour table defaults to `class_colormap` over
  the class names in band_tags[0]["class_names"] when those are given, and the band description to "class".
  kind="continuous": any numeric dtype (float32 with NaN nodata for probabilities), nodata may be None.
  Tags and band tags that are not strings are stored as JSON.
  """

  KIND = "COG"

  def __init__(self, path, *, crs, transform, width: int, height: int, count: int, dtype, nodata,
               band_descriptions: Sequence[str] | None = None,
               colormap: dict[int, tuple[int, int, int, int]] | None = None, tags: dict | None = None,
               band_tags: list[dict] | None = None, kind: str):
    self.path = os.path.abspath(os.fspath(path))
    self.kind, self.width, self.height, self.count = kind, int(width), int(height), int(count)
    self.dtype = np.dtype(dtype)
    self._check_layout(nodata)
    self.nodata = None if nodata is None else self.dtype.type(nodata).item()
    band_tags = self._check_band_list("band_tags", band_tags)
    descriptions = self._check_band_list("band_descriptions", band_descriptions)
    if descriptions is None and kind == "classes":
      descriptions = ["class"]
    self.colormap = self._resolve_colormap(colormap, band_tags)
    profile = dict(driver="GTiff", width=self.width, height=self.height, count=self.count, dtype=self.dtype.name,
                   crs=crs, transform=transform, nodata=self.nodata, tiled=True, blockxsize=STAGE_BLOCK,
                   blockysize=STAGE_BLOCK, interleave="pixel", compress="DEFLATE", zlevel=1, bigtiff="IF_SAFER",
                   num_threads=GDAL_THREADS)
    self._staging = Staging(self.path)
    self._stage = None
    try:
      self._stage_path = self._staging.file("stage.tif")
      self._stage = rasterio.open(self._stage_path, "w", **profile)
      # Metadata before any pixel: GDAL refuses to change the photometric tag (palette) once data was written.
      if self.colormap is not None:
        self._stage.write_colormap(1, self.colormap)
      for b, text in enumerate(descriptions or [], start=1):
        self._stage.set_band_description(b, str(text))
      for b, band in enumerate(band_tags or [], start=1):
        self._stage.update_tags(b, **{str(k): tag_text(v) for k, v in band.items()})
      if tags:
        self._stage.update_tags(**{str(k): tag_text(v) for k, v in tags.items()})
    except Exception as e:
      self.abort()
      raise OutputError(f"{self.path}: cannot create the raster ({e})") from e
    fill = self.nodata if self.nodata is not None else 0
    self._fill = fill
    self._buffer = None    # one tile row of the output, allocated by the first write() (and freed by finish())
    self._buffer_row = 0   # first scene row held by the buffer (a multiple of STAGE_BLOCK)
    self._next_row = 0     # every row above this was received or skipped
    self._skipped: list[tuple[int, int]] = []
    self._state = "open"

  # --------------------------------------------------------------------------------------------- checks
  def _fail(self, problem: str) -> OutputError:
    return OutputError(f"{self.path}: {problem}")

  def _check_layout(self, nodata) -> None:
    if self.kind not in KINDS:
      raise self._fail(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
    if self.width < 1 or self.height < 1 or self.count < 1:
      raise self._fail(f"width, height and count must be >= 1, got {self.width}x{self.height}x{self.count}")
    if self.dtype.kind not in "uif":
      raise self._fail(f"dtype {self.dtype} is not an integer or float type")
    if self.kind == "classes":
      if self.dtype not in (np.uint8, np.uint16) or self.count != 1:
        raise self._fail(f"a class map is one uint8 / uint16 band, got {self.count} x {self.dtype}")
      if nodata is None:
        raise self._fail("a class map needs an integer nodata value (255 for uint8)")
    if nodata is None:
      return
    if self.dtype.kind in "ui":
      info = np.iinfo(self.dtype)
      if isinstance(nodata, float) and not float(nodata).is_integer() or not info.min <= nodata <= info.max:
        raise self._fail(f"nodata {nodata!r} is not a {self.dtype} value")

  def _check_band_list(self, name: str, values):
    if values is None:
      return None
    values = list(values)
    if len(values) != self.count:
      raise self._fail(f"{name} has {len(values)} entries for {self.count} bands")
    return values

  def _resolve_colormap(self, colormap, band_tags):
    if colormap is None and self.kind == "classes" and band_tags and "class_names" in band_tags[0]:
      names = band_tags[0]["class_names"]
      names = json.loads(names) if isinstance(names, str) else list(names)
      if 0 <= self.nodata < len(names):
        raise self._fail(f"nodata {self.nodata} is one of the {len(names)} class indices; use a wider dtype")
      colormap = class_colormap(len(names), names, nodata=self.nodata)
    if colormap is None:
      return None
    if self.count != 1 or self.dtype not in (np.uint8, np.uint16):
      raise self._fail(f"a colour table needs one uint8 / uint16 band, got {self.count} x {self.dtype}")
    limit = np.iinfo(self.dtype).max
    table = {}
    for value, rgba in colormap.items():
      if not 0 <= int(value) <= limit or len(rgba) not in (3, 4):
        raise self._fail(f"colour table entry {value}: {rgba} is not a {self.dtype} value -> (r, g, b[, a])")
      table[int(value)] = tuple(int(c) for c in rgba) + ((255,) if len(rgba) == 3 else ())
    if self.nodata is not None:
      table.setdefault(int(self.nodata), TRANSPARENT)  # nodata pixels show as transparent, not as a class
    return table

  def _strip(self, array, row_off) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim == 2 and self.count == 1:
      a = a[:, :, None]
    if a.ndim != 3 or a.shape[1:] != (self.width, self.count) or a.shape[0] < 1:
      raise self._fail(f"strip at row {row_off} has shape {a.shape}, expected [rows, {self.width}, {self.count}]")
    if self.dtype.kind in "ui":
      if a.dtype.kind not in "uib":
        raise self._fail(f"strip at row {row_off} holds {a.dtype} values for a {self.dtype} raster")
      info = np.iinfo(self.dtype)
      if a.dtype.kind != "b" and a.dtype != self.dtype and (a.min() < info.min or a.max() > info.max):
        raise self._fail(f"strip at row {row_off} has values {a.min()}..{a.max()} outside {self.dtype}")
    elif a.dtype.kind not in "uifb":
      raise self._fail(f"strip at row {row_off} holds {a.dtype} values, not numbers")
    return a

  # --------------------------------------------------------------------------------------------- writing
  def write(self, array: np.ndarray, row_off: int) -> None:
    """Writes `array` [h, width, count] (channels-last; [h, width] for one band) to rows row_off .. row_off + h.

    Strips come top to bottom, each row once; rows may be skipped (commit then names them), never revisited.
    """
    if self._state != "open":
      raise self._fail(f"write() after the writer was {self._state}")
    row_off = int(row_off)
    a = self._strip(array, row_off)
    h = a.shape[0]
    if row_off < 0 or row_off + h > self.height:
      raise self._fail(f"rows {row_off}..{row_off + h - 1} are outside the raster (rows 0..{self.height - 1})")
    if row_off < self._next_row:
      raise self._fail(f"rows {row_off}..{min(row_off + h, self._next_row) - 1} were already written "
                       f"(strips must come top to bottom, each row once; next free row is {self._next_row})")
    if row_off > self._next_row:
      self._skipped.append((self._next_row, row_off))
    if self._buffer is None:
      self._buffer = np.full((min(STAGE_BLOCK, self.height), self.width, self.count), self._fill, self.dtype)
    done = 0
    while done < h:
      row = row_off + done
      block = row - row % STAGE_BLOCK
      if block != self._buffer_row:
        self._flush()
        self._buffer_row = block
      n = min(h - done, block + STAGE_BLOCK - row)
      self._buffer[row - block: row - block + n] = a[done: done + n]
      done += n
      if row + n == min(block + STAGE_BLOCK, self.height):
        self._flush()
        self._buffer_row = block + STAGE_BLOCK
    self._next_row = row_off + h

  def _flush(self) -> None:
    """Writes the buffered tile row (whatever of it was received; the rest is nodata) and clears the buffer."""
    if self._buffer_row >= self.height or self._buffer is None:
      return
    n = min(STAGE_BLOCK, self.height - self._buffer_row)
    self._stage.write(np.moveaxis(self._buffer[:n], -1, 0), window=Window(0, self._buffer_row, self.width, n))
    self._buffer.fill(self._fill)

  def _missing(self) -> list[tuple[int, int]]:
    return self._skipped + ([(self._next_row, self.height)] if self._next_row < self.height else [])

  # --------------------------------------------------------------------------------------------- commit / abort
  def _finish(self) -> str:
    """Checks every row was written, translates the staged GeoTIFF to a COG and validates it."""
    missing = self._missing()
    if missing:
      ranges = ", ".join(f"{a}..{b - 1}" for a, b in missing[:5]) + (" ..." if len(missing) > 5 else "")
      raise self._fail(f"rows {ranges} were never written (of {self.height}); nothing was saved")
    self._stage.close()
    self._buffer = None
    cog = self._staging.file("cog.tif")
    self._translate(cog)
    valid, errors, _ = cog_validate(cog, quiet=True)
    if not valid:
      raise self._fail(f"the translated file is not a valid COG ({'; '.join(errors)})")
    os.remove(self._stage_path)   # a finished COG may wait for the other dates of a series: free its disk now
    return cog

  def _translate(self, cog: str) -> None:
    block = COG_BLOCK if min(self.width, self.height) >= COG_BLOCK else 256
    profile = dict(driver="GTiff", interleave="pixel", tiled=True, blockxsize=block, blockysize=block,
                   compress="DEFLATE", predictor=3 if self.dtype.kind == "f" else 2, bigtiff="IF_SAFER")
    nbytes = self.width * self.height * self.count * self.dtype.itemsize
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", PendingDeprecationWarning)  # affine's `*` deprecation inside rio-cogeo
      cog_translate(self._stage_path, cog, profile, overview_resampling=OVERVIEW_RESAMPLING[self.kind],
                    in_memory=nbytes <= IN_MEMORY_BYTES, allow_intermediate_compression=True,
                    forward_band_tags=True, colormap=self.colormap, quiet=True,
                    config={"GDAL_NUM_THREADS": GDAL_THREADS})

  def _close_file(self) -> None:
    if self._stage is not None and not self._stage.closed:
      self._stage.close()
