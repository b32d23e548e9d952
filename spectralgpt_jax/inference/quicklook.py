"""quicklook_png: a small RGBA preview of a GeoTIFF, read from its overviews.

A 10980 px Sentinel-2 scene is 120 M pixels per band; the preview needs about one. The overview level that is just
large enough is opened directly (GDAL's OVERVIEW_LEVEL open option), so only its few tiles are decoded, never the
full-resolution data of a big COG. Nodata is transparent.
"""
from __future__ import annotations

import math
import os

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import Resampling

from spectralgpt_jax.inference.writers import OutputError, palette_colour
from spectralgpt_jax.tasks.reporting import _save_png

QUICKLOOK_KINDS = ("auto", "classes", "continuous", "rgb")
STRETCH_PERCENTILES = (2.0, 98.0)
# viridis (perceptually uniform, colour-blind safe) sampled at ten even stops, interpolated linearly.
_VIRIDIS = np.array([(68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142), (31, 158, 137),
                     (53, 183, 121), (109, 205, 89), (180, 222, 44), (253, 231, 37)], np.float64)


def _plan(src, max_size: int) -> tuple[int | None, tuple[int, int]]:
  """(overview level to open, or None for full resolution; output (height, width) within max_size)."""
  level, (h, w) = None, (src.height, src.width)
  for i, factor in enumerate(src.overviews(1)):
    if max(h, w) <= max_size:
      break
    level, (h, w) = i, (math.ceil(src.height / factor), math.ceil(src.width / factor))
  scale = min(1.0, max_size / max(h, w))
  return level, (max(1, min(max_size, round(h * scale))), max(1, min(max_size, round(w * scale))))


def _kind(src, kind: str, rgb_bands) -> str:
  if kind not in QUICKLOOK_KINDS:
    raise OutputError(f"{src.name}: quicklook kind must be one of {', '.join(QUICKLOOK_KINDS)}, got {kind!r}")
  if kind != "auto":
    return kind
  if rgb_bands is not None:
    return "rgb"
  if src.count == 1 and np.dtype(src.dtypes[0]).kind in "ui" and _colormap(src) is not None:
    return "classes"
  return "continuous"


def _colormap(src) -> dict | None:
  try:
    return src.colormap(1)
  except ValueError:  # no colour table
    return None


def _bands(src, kind: str, rgb_bands) -> list[int]:
  if kind != "rgb":
    return [1]
  bands = list(rgb_bands) if rgb_bands is not None else [1, 2, 3]
  if len(bands) != 3 or not all(1 <= int(b) <= src.count for b in bands):
    raise OutputError(f"{src.name}: rgb_bands {tuple(bands)} must be three band numbers in 1..{src.count}")
  return [int(b) for b in bands]


def _read(path: str, level, shape, bands) -> np.ndarray:
  """[len(bands), h, w] from the chosen overview level, decimated (nearest) to `shape`."""
  options = {} if level is None else {"overview_level": level}
  with rasterio.open(path, **options) as ds:
    return ds.read(bands, out_shape=(len(bands), *shape), resampling=Resampling.nearest)


def _valid(data: np.ndarray, nodata) -> np.ndarray:
  valid = np.ones(data.shape[1:], bool)
  for band in data:
    if band.dtype.kind == "f":
      valid &= np.isfinite(band)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
      valid &= band != nodata
  return valid


def _stretch(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """Values mapped to [0, 1] between their 2nd and 98th percentile over the valid pixels."""
  values = band[valid].astype(np.float64)
  if values.size == 0:
    return np.zeros(band.shape)
  lo, hi = np.percentile(values, STRETCH_PERCENTILES)
  if hi <= lo:
    return np.full(band.shape, 0.5)
  return np.clip((band.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)


def _ramp(t: np.ndarray) -> np.ndarray:
  pos = np.nan_to_num(t) * (len(_VIRIDIS) - 1)
  lo = np.clip(pos.astype(np.int64), 0, len(_VIRIDIS) - 2)
  frac = (pos - lo)[..., None]
  return _VIRIDIS[lo] + frac * (_VIRIDIS[lo + 1] - _VIRIDIS[lo])


def _class_colours(band: np.ndarray, colormap: dict | None) -> np.ndarray:
  """RGB per pixel from the colour table; values without an entry take the fixed palette colour of that index."""
  values, inverse = np.unique(band, return_inverse=True)
  colours = np.array([colormap[v][:3] if colormap and v in colormap else palette_colour(int(v))
                      for v in values.tolist()], np.float64)
  return colours[inverse.reshape(band.shape)]


def quicklook_png(cog_path: str, png_path: str | None = None, *, max_size: int = 1024, kind: str = "auto",
                  rgb_bands: tuple[int, int, int] | None = None) -> str:
  """Writes an RGBA PNG preview (at most max_size px on its long side) of a GeoTIFF; returns its path.

  Default path: beside the COG with the same stem and .png. kind="auto" picks "classes" for a single integer band
  with a colour table (drawn with that table), "rgb" when rgb_bands (1-based band numbers, as in rasterio) are
  given (each band stretched 2-98 %), else "continuous": band 1 through a viridis ramp, stretched 2-98 %.
  Nodata (and NaN) pixels are transparent. Written atomically.
  """
  cog_path = os.fspath(cog_path)
  png_path = os.fspath(png_path) if png_path is not None else os.path.splitext(cog_path)[0] + ".png"
  if int(max_size) < 1:
    raise OutputError(f"{png_path}: max_size must be >= 1, got {max_size}")
  try:
    with rasterio.open(cog_path) as src:
      kind = _kind(src, kind, rgb_bands)
      bands = _bands(src, kind, rgb_bands)
      level, shape = _plan(src, int(max_size))
      nodata, colormap = src.nodata, _colormap(src)
  except rasterio.errors.RasterioIOError as e:
    raise OutputError(f"{cog_path}: cannot open for a quicklook ({e})") from e
  data = _read(cog_path, level, shape, bands)
  valid = _valid(data, nodata)
  if kind == "classes":
    if data.dtype.kind not in "ui":
      raise OutputError(f"{cog_path}: a class quicklook needs integer data, got {data.dtype}")
    rgb = _class_colours(data[0], colormap)
  elif kind == "rgb":
    rgb = np.stack([_stretch(b, valid) for b in data], axis=-1) * 255.0
  else:
    rgb = _ramp(_stretch(data[0], valid))
  rgba = np.zeros((*shape, 4), np.uint8)
  rgba[..., :3] = np.where(valid[..., None], np.clip(np.round(rgb), 0, 255), 0).astype(np.uint8)
  rgba[..., 3] = np.where(valid, 255, 0).astype(np.uint8)
  return _save_png(png_path, Image.fromarray(rgba, "RGBA"))
