"""Rasters read on an output grid: a file on the grid's pixel lattice is read directly (bit-exact), any other one
through a GDAL WarpedVRT onto the grid, so a window read touches only the source pixels under that window.

Used by `scene_io` (the scene's bands, resampled bilinearly) and `clouds` (class-coded masks, nearest neighbour).
Every problem is a one-line SceneError naming the file.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import affine
import numpy as np
import rasterio
import rasterio.crs
import rasterio.errors
import rasterio.transform
import rasterio.warp
import rasterio.windows
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.vrt import WarpedVRT

from spectralgpt_jax.inference.scene_sources import SceneError, one_line

ALPHA_VALID = 127.5  # warp alpha is 0 or 255 for bilinear; the midpoint keeps any partial value conservative


@dataclasses.dataclass(frozen=True)
class Grid:
  crs: rasterio.crs.CRS
  transform: affine.Affine
  width: int
  height: int


class GridSource:
  """One opened dataset and the output-grid pixel where its pixel (0, 0) lies: a file already on the output grid's
  lattice (any integer offset) or a WarpedVRT onto the output grid (offset 0)."""

  def __init__(self, path, dataset, indexes, offset=(0, 0), alpha=None, band_nodata=None, owned=()):
    self.path, self.dataset, self.indexes, self.offset = path, dataset, dict(indexes), offset
    self.alpha = alpha  # band index of the warp's validity alpha, else None
    self.band_nodata = band_nodata  # band files: per-band nodata value; None: the dataset mask (multi-band rasters)
    self.owned = list(owned)  # datasets under a WarpedVRT, closed with it

  def read(self, names, col, row, width, height):
    """(float32 [h, w, len(names)], valid [h, w]) for an output-grid window; outside the dataset: 0 and invalid."""
    data = np.zeros((height, width, len(names)), np.float32)
    valid = np.zeros((height, width), bool)
    ds, (ox, oy) = self.dataset, self.offset
    c0, r0 = max(col, ox), max(row, oy)
    c1, r1 = min(col + width, ox + ds.width), min(row + height, oy + ds.height)
    if c1 <= c0 or r1 <= r0:
      return data, valid
    window = rasterio.windows.Window(c0 - ox, r0 - oy, c1 - c0, r1 - r0)
    indexes = [self.indexes[n] for n in names] + ([self.alpha] if self.alpha else [])
    try:
      block = ds.read(indexes, window=window, out_dtype=np.float32)
      if self.alpha:
        ok = block[-1] >= ALPHA_VALID
        block = block[:-1]
      elif self.band_nodata is not None:
        ok = not_nodata(block, self.band_nodata).all(axis=0) & self._mask(window)
      else:
        ok = self._mask(window)
    except rasterio.errors.RasterioError as e:
      raise SceneError(f"{self.path}: read failed ({one_line(e)})") from None
    data[r0 - row : r1 - row, c0 - col : c1 - col] = np.moveaxis(block, 0, -1)
    valid[r0 - row : r1 - row, c0 - col : c1 - col] = ok
    return data, valid

  def _mask(self, window) -> np.ndarray:
    ds = self.dataset
    if all(MaskFlags.all_valid in flags for flags in ds.mask_flag_enums):
      return np.ones((window.height, window.width), bool)
    return ds.dataset_mask(window=window) > 0

  def close(self) -> None:
    for ds in [self.dataset, *self.owned]:
      ds.close()


def not_nodata(block: np.ndarray, nodata: float) -> np.ndarray:
  return ~np.isnan(block) if math.isnan(nodata) else block != np.float32(nodata)


def open_dataset(path: str):
  """A georeferenced rasterio dataset, or a one-line SceneError naming the file."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
      ds = rasterio.open(path)
  except (rasterio.errors.RasterioError, OSError) as e:
    raise SceneError(f"{path}: not a readable raster ({one_line(e)})") from None
  if ds.crs is None or ds.transform == affine.Affine.identity():
    ds.close()
    raise SceneError(f"{path}: has no georeferencing (no CRS or no geotransform); cannot place it on a map grid")
  return ds


def offset_on(ds, grid: Grid) -> tuple[int, int] | None:
  """Integer output-grid position of `ds`'s pixel (0, 0) when ds lies on the grid's pixel lattice, else None."""
  t, g = ds.transform, grid.transform
  tol = 1e-9 * max(abs(g.a), abs(g.e), 1e-12)
  if any(abs(x - y) > tol for x, y in zip((t.a, t.b, t.d, t.e), (g.a, g.b, g.d, g.e))) or ds.crs != grid.crs:
    return None
  col, row = ~g @ (t.c, t.f)
  if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
    return None
  return int(round(col)), int(round(row))


def warp(ds, grid: Grid, src_nodata=None, resampling=Resampling.bilinear) -> tuple[WarpedVRT, int]:
  """A float32 WarpedVRT of `ds` onto `grid` and the index of its alpha band (the warp's validity: the source
  footprint, nodata and mask). A source alpha band is carried over; otherwise one is added."""
  kwargs = {} if src_nodata is None else {"src_nodata": src_nodata}
  has_alpha = ColorInterp.alpha in ds.colorinterp
  try:
    vrt = WarpedVRT(ds, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                    resampling=resampling, dtype="float32", add_alpha=not has_alpha, **kwargs)
  except (rasterio.errors.RasterioError, ValueError) as e:
    raise SceneError(f"{ds.name}: cannot resample onto the output grid ({one_line(e)})") from None
  return vrt, (vrt.colorinterp.index(ColorInterp.alpha) + 1 if has_alpha else vrt.count)


def source_on(path, ds, indexes, grid: Grid, band_nodata=None, resampling=Resampling.bilinear) -> GridSource:
  """`ds` as seen on `grid`: a direct read when it is on the grid's lattice (exact), else a WarpedVRT resampling
  with `resampling` (bilinear for reflectances, nearest for class-coded masks)."""
  offset = offset_on(ds, grid)
  if offset is not None:
    return GridSource(path, ds, indexes, offset=offset, band_nodata=band_nodata)
  vrt, alpha = warp(ds, grid, src_nodata=band_nodata if band_nodata is not None else ds.nodata,
                    resampling=resampling)
  return GridSource(path, vrt, indexes, alpha=alpha, owned=[ds])


def check_overlap(path: str, ds, grid: Grid, grid_source: str) -> None:
  box = rasterio.transform.array_bounds(grid.height, grid.width, grid.transform)
  try:
    left, bottom, right, top = rasterio.warp.transform_bounds(ds.crs, grid.crs, *ds.bounds, densify_pts=21)
  except (rasterio.errors.RasterioError, ValueError) as e:
    raise SceneError(f"{path}: cannot map its footprint into the CRS of {grid_source} ({one_line(e)})") from None
  if min(right, box[2]) <= max(left, box[0]) or min(top, box[3]) <= max(bottom, box[1]):
    raise SceneError(f"{path}: its footprint does not overlap {grid_source} at all")

