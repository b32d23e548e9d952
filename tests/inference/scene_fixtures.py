"""Small synthetic Sentinel-2 scenes for the inference tests, written with rasterio.

Geometry mimics the embedded demo scene: a 10 m grid, a 20 m grid whose origin lies 10 m west of it and a 60 m grid
10 m west and 20 m north of it, so resampling that ignored the origins would show. Pixel values come from a
function of map coordinates evaluated at each native pixel centre, so tests can state the exact expected value of
any resampled pixel.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import numpy as np
import rasterio
from rasterio.transform import from_origin

from spectralgpt_jax.data import bands as bandlib

CRS = "EPSG:32618"
X0, Y0 = 500000.0, 4200000.0  # top-left corner of the 10 m grid
SHIFT = {10: (0.0, 0.0), 20: (-10.0, 0.0), 60: (-10.0, 20.0)}  # (dx, dy) of each grid's origin, as in the demo
SIZE_10M = 60  # 10 m bands are 60x60 px; 20 m 30x30; 60 m 10x10

ValueFn = Callable[[str, np.ndarray, np.ndarray], np.ndarray]  # (band, x, y) map coordinates -> values


def constant(band: str) -> float:
  """A distinct constant per band (100, 110, ... in ALL_13 order)."""
  return 100.0 + 10.0 * bandlib.ALL_13.index(band)


def constant_values(band, x, y):
  return np.full(np.broadcast(x, y).shape, constant(band))


def native_grid(gsd: int, size_10m: int = SIZE_10M, x0: float = X0, y0: float = Y0):
  """(transform, width, height) of a band's native grid."""
  dx, dy = SHIFT[gsd]
  n = size_10m * 10 // gsd
  return from_origin(x0 + dx, y0 + dy, gsd, gsd), n, n


def pixel_centres(transform, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
  """Map coordinates (x [h, w], y [h, w]) of the pixel centres of a north-up grid."""
  cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
  return transform.c + cols * transform.a, transform.f + rows * transform.e


def write_raster(path, data: np.ndarray, transform, crs=CRS, nodata=None, descriptions=None, driver="GTiff",
                 **profile) -> str:
  """Write [C, H, W] (or [H, W]) `data`; `descriptions` name the bands."""
  data = data[None] if data.ndim == 2 else data
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with rasterio.open(path, "w", driver=driver, width=data.shape[2], height=data.shape[1], count=data.shape[0],
                     dtype=data.dtype, crs=crs, transform=transform, nodata=nodata, **profile) as dst:
    dst.write(data)
    for i, text in enumerate(descriptions or ()):
      dst.set_band_description(i + 1, text)
  return str(path)


def band_array(band: str, values: ValueFn = constant_values, dtype="uint16", size_10m=SIZE_10M, x0=X0, y0=Y0):
  """(array, transform) of one band on its native grid."""
  transform, w, h = native_grid(bandlib.BANDS[band].gsd_m, size_10m, x0, y0)
  x, y = pixel_centres(transform, w, h)
  return np.asarray(values(band, x, y)).astype(dtype), transform


def write_band_folder(folder, bands: Sequence[str] = bandlib.ALL_13, values: ValueFn = constant_values,
                      pattern: str = "s2_{band}.jp2", dtype="uint16", size_10m=SIZE_10M, x0=X0, y0=Y0,
                      crs=CRS, driver="GTiff", **profile) -> dict[str, str]:
  """One single-band file per band at its native resolution; by default GeoTIFFs named .jp2, like the demo."""
  paths = {}
  for band in bands:
    array, transform = band_array(band, values, dtype, size_10m, x0, y0)
    paths[band] = write_raster(os.path.join(folder, pattern.format(band=band)), array, transform, crs=crs,
                               driver=driver, **profile)
  return paths


def write_safe(root, level: str = "L1C", values: ValueFn = constant_values, wrong_offset: float = 5000.0) -> str:
  """A minimal Sentinel-2 .SAFE tree. L2A also stores every band at the coarser resolutions, as ESA does, with
  `wrong_offset` added, so a reader that picks a band at the wrong resolution reads visibly wrong values."""
  tile, stamp = "T18SUJ", "20200101T155511"
  safe = os.path.join(root, f"S2A_MSI{level}_{stamp}_N0209_R054_{tile}_20200101T174035.SAFE")
  img = os.path.join(safe, "GRANULE", f"{level}_{tile}_A023613_{stamp}", "IMG_DATA")
  os.makedirs(img, exist_ok=True)
  with open(os.path.join(safe, f"MTD_MSI{level}.xml"), "w", encoding="utf-8") as f:
    f.write("<metadata/>")
  if level == "L1C":
    write_band_folder(img, bandlib.ALL_13, values, pattern=f"{tile}_{stamp}_{{band}}.jp2")
    _write_extra(os.path.join(img, f"{tile}_{stamp}_TCI.jp2"), 10)
    return safe
  for res, gsd in (("R10m", 10), ("R20m", 20), ("R60m", 60)):
    sub = os.path.join(img, res)
    for band in [b for b in bandlib.CANONICAL if bandlib.BANDS[b].gsd_m <= gsd and not (b == "B08" and gsd > 10)]:
      native = bandlib.BANDS[band].gsd_m == gsd
      transform, w, h = native_grid(gsd)
      x, y = pixel_centres(transform, w, h)
      array = np.asarray(values(band, x, y)) + (0 if native else wrong_offset)
      write_raster(os.path.join(sub, f"{tile}_{stamp}_{band}_{gsd}m.jp2"), array.astype("uint16"), transform)
    for extra in ("TCI", "AOT", "WVP", "SCL"):
      _write_extra(os.path.join(sub, f"{tile}_{stamp}_{extra}_{gsd}m.jp2"), gsd)
  return safe


def _write_extra(path, gsd):
  transform, w, h = native_grid(gsd)
  write_raster(path, np.full((h, w), 7, np.uint8), transform)


def write_stac_item(path, files: dict[str, str], keys: dict[str, str] | None = None, relative: bool = True,
                    extra_assets: dict | None = None) -> str:
  """A STAC item whose assets are `files` ({band: path}); asset keys are `keys[band]` (default: the band name)."""
  assets = {}
  for band, file in files.items():
    href = os.path.relpath(file, os.path.dirname(os.path.abspath(path))) if relative else os.path.abspath(file)
    assets[(keys or {}).get(band, band)] = {"href": href, "type": "image/tiff; application=geotiff",
                                            "roles": ["data"], "eo:bands": [{"name": band}]}
  assets.update(extra_assets or {})
  item = {"type": "Feature", "stac_version": "1.0.0", "id": "synthetic", "geometry": None, "properties": {},
          "links": [], "assets": assets}
  with open(path, "w", encoding="utf-8") as f:
    json.dump(item, f)
  return str(path)
