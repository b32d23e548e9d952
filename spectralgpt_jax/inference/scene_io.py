"""Scene inputs for inference: open a scene in any supported form and read windows of it on one grid.

Forms (decided by the path; see `scene_sources.input_kind`): a multi-band GeoTIFF / COG whose bands are named by
their descriptions or by `bands=` (the --bands flag); a folder of single-band files named by band; a Sentinel-2
L1C / L2A .SAFE product; a local STAC item JSON. Band-per-file forms keep every band at its native resolution on
disk and resample it on the fly, bilinearly in map coordinates, onto the 10 m grid of the finest band, through a
GDAL WarpedVRT: a window read warps only the source pixels under that window, so memory is bounded by the window,
never by the scene. Bands already on the output grid's pixel lattice are read directly (bit-exact).

Validity. Multi-band rasters follow GDAL's dataset mask (nodata: a pixel is invalid when all its bands are nodata;
internal masks; alpha). Band-per-file Sentinel-2 forms treat 0 (the products' NODATA value) or the file's own
nodata as nodata *per band*: the warp leaves those pixels out of the interpolation (no dark fringes where a 20 m
band meets the swath edge) and a pixel is valid only when every requested band is; in particular zeros in all bands
are invalid. Everywhere: non-finite values, pixels outside a band's footprint and, with `cloud_mask=` (see
`clouds`), pixels the cloud mask flags are invalid, and the returned data is 0 wherever `valid` is False.

Radiometry. Valid pixels are returned as harmonised DN (reflectance x 10000, the encoding before processing
baseline 04.00, which SpectralGPT's data used): `open_scene(harmonize="auto")` reads the product's offsets from its
metadata (see `radiometry`); "off" keeps the stored DN; a number adds that many DN to every band.

Datasets are GDAL handles: use one Scene from one thread at a time.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
from typing import Sequence

import affine
import numpy as np
import rasterio
import rasterio.coords
import rasterio.crs
import rasterio.transform
import rasterio.windows

from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.inference import acquisition
from spectralgpt_jax.inference import clouds as clouds_lib
from spectralgpt_jax.inference import gridded
from spectralgpt_jax.inference import radiometry as radiometry_lib
from spectralgpt_jax.inference import scene_sources
from spectralgpt_jax.inference.band_names import canonical_band_name  # noqa: F401  (part of this module's API)
from spectralgpt_jax.inference.scene_sources import SceneError

__all__ = ["SceneError", "Scene", "canonical_band_name", "open_scene", "require_bands"]

FINE_BANDS = ("B02", "B03", "B04", "B08")  # the 10 m bands; the output grid of band-per-file forms is one of theirs
KIND_LABELS = {"folder": "band folder", "safe": "Sentinel-2 .SAFE", "stac": "STAC item"}


@dataclasses.dataclass(eq=False)
class Scene:
  """An opened scene on one output grid. Use as a context manager (or call close()): it holds GDAL datasets."""

  source: str  # the path the user gave
  crs: rasterio.crs.CRS
  transform: affine.Affine  # of the output grid (the scene's 10 m grid, or the grid= scene's)
  width: int
  height: int
  bands: tuple[str, ...]  # canonical names available, in canonical order (B10 included when present)
  kind: str = "raster"  # raster / folder / safe / stac
  resampled_onto: str | None = None  # the grid= scene's source, when this scene was resampled onto it
  radiometry: radiometry_lib.Radiometry = dataclasses.field(default_factory=radiometry_lib.Radiometry)
  clouds: clouds_lib.CloudMask | None = None  # pixels it flags are invalid
  acquired: datetime.datetime | None = None   # sensing start (UTC), when the input declares it
  acquired_from: str = ""
  _sources: dict = dataclasses.field(default_factory=dict, repr=False)  # band -> gridded.GridSource
  _zero_is_nodata: bool = dataclasses.field(default=False, repr=False)
  _driver: str = dataclasses.field(default="", repr=False)

  def read(self, bands: Sequence[str], window: rasterio.windows.Window) -> tuple[np.ndarray, np.ndarray]:
    """float32 [h, w, len(bands)] in the requested band order, and valid bool [h, w]. The window is in output-grid
    pixels and may extend beyond the scene on any side (pixels outside are invalid and 0)."""
    names = list(bands)
    if self.bands and not self._sources:
      raise ValueError(f"{self.source}: the scene is closed")
    missing = [b for b in names if b not in self._sources]
    if missing:
      raise SceneError(f"{self.source}: bands {missing} are not in this scene (available: {','.join(self.bands)})")
    col, row, width, height = _window_ints(window)
    data = np.zeros((height, width, len(names)), np.float32)
    valid = np.zeros((height, width), bool)
    c0, r0 = max(col, 0), max(row, 0)
    c1, r1 = min(col + width, self.width), min(row + height, self.height)
    if c1 <= c0 or r1 <= r0 or not names:
      return data, valid
    inner = data[r0 - row : r1 - row, c0 - col : c1 - col]
    ok = np.ones(inner.shape[:2], bool)
    groups: dict[int, tuple[gridded.GridSource, list[int]]] = {}
    for i, name in enumerate(names):  # one read per dataset: a multi-band file reads all its bands at once
      groups.setdefault(id(self._sources[name]), (self._sources[name], []))[1].append(i)
    for source, positions in groups.values():
      block, block_ok = source.read([names[i] for i in positions], c0, r0, c1 - c0, r1 - r0)
      inner[..., positions] = block
      ok &= block_ok
    ok &= np.isfinite(inner).all(axis=-1)
    if self.clouds is not None:
      ok &= ~self.clouds.cloudy(c0, r0, c1 - c0, r1 - r0)
    if self._zero_is_nodata:
      ok &= (inner != 0).any(axis=-1)
    inner[...] = self.radiometry.apply(inner, names)   # after validity: stored DN 0 stays nodata
    inner[~ok] = 0
    valid[r0 - row : r1 - row, c0 - col : c1 - col] = ok
    return data, valid

  @property
  def bounds(self) -> rasterio.coords.BoundingBox:
    """(left, bottom, right, top) of the output grid, in the scene CRS."""
    return rasterio.coords.BoundingBox(*rasterio.transform.array_bounds(self.height, self.width, self.transform))

  @property
  def resolution(self) -> float:
    return math.hypot(self.transform.a, self.transform.d)

  def block_row_bytes(self) -> int:
    """Decoded bytes of one row of blocks across every file behind the scene: what GDAL's block cache must hold for
    strip reads not to decode the same blocks again."""
    total = 0
    for source in self._unique_sources():
      for ds in source.owned or [source.dataset]:
        block_rows = max(ds.block_shapes[0][0], 1) if ds.block_shapes else 1
        total += ds.count * ds.width * block_rows * np.dtype(ds.dtypes[0]).itemsize
    return total

  def describe(self) -> str:
    kind = KIND_LABELS.get(self.kind) or f"{self._driver or 'raster'} raster"
    unit = "m" if self.crs.is_projected else "deg"
    onto = f", resampled onto the grid of {self.resampled_onto}" if self.resampled_onto else ""
    return (f"{kind} {self.source}: {self.width}x{self.height} px at {self.resolution:g} {unit}, "
            f"{self.crs.to_string()}, bands {','.join(self.bands)}{onto}; {self.radiometry.describe()}; "
            f"{self.clouds.describe() if self.clouds else 'no cloud mask'}; acquired "
            f"{acquisition.iso(self.acquired)} ({self.acquired_from})")

  def gdal_scaling(self) -> dict[str, tuple[float, float]]:
    """{band: (scale, offset)} from the GDAL metadata of the files behind the scene (1, 0 when unset)."""
    out = {}
    for band, source in self._sources.items():
      ds, index = (source.owned or [source.dataset])[0], source.indexes[band]
      out[band] = (ds.scales[index - 1], ds.offsets[index - 1])
    return out

  def _unique_sources(self) -> list[gridded.GridSource]:
    return list({id(s): s for s in self._sources.values()}.values())    # a multi-band file serves many bands

  def close(self) -> None:
    for source in self._unique_sources():
      source.close()
    self._sources = {}
    if self.clouds is not None:
      self.clouds.close()
      self.clouds = None

  def __enter__(self) -> Scene:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _window_ints(window) -> tuple[int, int, int, int]:
  values = (window.col_off, window.row_off, window.width, window.height)
  ints = tuple(int(round(v)) for v in values)
  if any(abs(v - i) > 1e-6 for v, i in zip(values, ints)) or ints[2] < 0 or ints[3] < 0:
    raise ValueError(f"scene windows are whole output pixels with non-negative size, got {window}")
  return ints


def require_bands(scene: Scene, needed: Sequence[str], what: str) -> None:
  """SceneError unless the scene has every band `what` (e.g. "the checkpoint runs/x/export") needs."""
  missing = [b for b in needed if b not in scene.bands]
  if missing:
    raise SceneError(f"{scene.source}: {what} needs bands {','.join(missing)}, which the scene lacks "
                     f"(it has {','.join(scene.bands) or 'none'})")


def open_scene(path: str, *, bands: Sequence[str] | None = None, grid: Scene | None = None,
               harmonize: str | float = "auto", cloud_mask: str = "off",
               cloud_classes: clouds_lib.Intervals | None = None, cloud_buffer: int = 0) -> Scene:
  """Open a scene. `bands` names a multi-band raster's bands in file order (only needed when its descriptions do
  not); `grid` resamples every band onto another scene's grid instead of this scene's own 10 m grid; `harmonize`
  ("auto", "off" or a DN offset) says how stored DN become harmonised DN (see `radiometry`); `cloud_mask` ("off",
  "auto" or a mask file), `cloud_classes` and `cloud_buffer` (px) say which pixels are cloud and so invalid (see
  `clouds`)."""
  scene = _open_scene(path, bands, grid)
  try:
    scene.radiometry = radiometry_lib.for_scene(harmonize, scene.kind, scene.source, scene.bands,
                                                scene.gdal_scaling())
    on = gridded.Grid(scene.crs, scene.transform, scene.width, scene.height)
    sources = scene._unique_sources()
    files = [(s.owned or [s.dataset])[0] for s in sources]      # the datasets as opened (under any warp)
    descriptions = files[0].descriptions if scene.kind == "raster" else ()
    scene.clouds = clouds_lib.open_mask(cloud_mask, cloud_classes, scene.kind, scene.source, on, cloud_buffer,
                                        descriptions)
    scene.acquired, scene.acquired_from = acquisition.for_scene(scene.kind, scene.source, [s.path for s in sources],
                                                                files)
  except BaseException:
    scene.close()
    raise
  return scene


def _open_scene(path: str, bands, grid) -> Scene:
  path = os.fspath(path)
  if not path.startswith("/vsi") and not os.path.exists(path):
    raise SceneError(f"{path}: no such file or directory")
  target = None if grid is None else gridded.Grid(grid.crs, grid.transform, grid.width, grid.height)
  kind = scene_sources.input_kind(path)
  if kind == "raster":
    return _open_raster(path, bands, target, grid)
  if bands is not None:
    raise SceneError(f"{path}: --bands names the bands of a multi-band raster; a {KIND_LABELS[kind]} is read by "
                     f"the band names of its files, drop --bands")
  finders = {"safe": scene_sources.safe_bands, "folder": scene_sources.folder_bands, "stac": scene_sources.stac_bands}
  return _open_band_files(path, kind, finders[kind](path), target, grid)


def _open_raster(path: str, bands, target: gridded.Grid | None, grid: Scene | None) -> Scene:
  ds = gridded.open_dataset(path)
  try:
    indexes = scene_sources.raster_band_indexes(path, ds, bands)
    own = gridded.Grid(ds.crs, ds.transform, ds.width, ds.height)
    if target is not None:
      gridded.check_overlap(path, ds, target, grid.source)
    source = gridded.source_on(path, ds, indexes, target or own)
  except BaseException:
    ds.close()
    raise
  out = target or own
  names = tuple(b for b in bandlib.ALL_13 if b in indexes)
  return Scene(path, out.crs, out.transform, out.width, out.height, names, kind="raster",
               resampled_onto=grid.source if grid else None, _sources={b: source for b in names}, _driver=ds.driver)


def _open_band_files(path: str, kind: str, files: dict[str, str], target: gridded.Grid | None, grid) -> Scene:
  opened: dict[str, object] = {}
  sources: dict[str, gridded.GridSource] = {}
  try:
    for band in sorted(files, key=bandlib.ALL_13.index):
      opened[band] = gridded.open_dataset(files[band])
      if opened[band].count != 1:
        raise SceneError(f"{files[band]}: a band file must hold one band, this one has {opened[band].count}")
    _check_one_crs(path, files, opened)
    fine = [b for b in FINE_BANDS if b in opened]
    if not fine:
      raise SceneError(f"{path}: none of the 10 m bands {'/'.join(FINE_BANDS)} is present (found "
                       f"{','.join(opened)}); the output grid is their 10 m grid")
    ref_band = min(fine, key=lambda b: abs(opened[b].res[0]))  # canonical order breaks ties
    ref = opened[ref_band]
    if target is not None:
      gridded.check_overlap(files[ref_band], ref, target, grid.source)
    out = target or gridded.Grid(ref.crs, ref.transform, ref.width, ref.height)
    for band, ds in opened.items():
      nodata = 0.0 if ds.nodata is None else float(ds.nodata)  # 0 is the Sentinel-2 products' NODATA value
      sources[band] = gridded.source_on(files[band], ds, {band: 1}, out, band_nodata=nodata)
  except BaseException:
    for band, ds in opened.items():
      (sources[band] if band in sources else ds).close()
    raise
  return Scene(path, out.crs, out.transform, out.width, out.height, tuple(sources), kind=kind,
               resampled_onto=grid.source if grid else None, _sources=sources, _zero_is_nodata=True)


def _check_one_crs(path: str, files: dict[str, str], opened: dict) -> None:
  first = next(iter(opened))
  for band, ds in opened.items():
    if ds.crs != opened[first].crs:
      raise SceneError(f"{path}: mixed CRSs: {os.path.basename(files[first])} is {opened[first].crs.to_string()}, "
                       f"{os.path.basename(files[band])} is {ds.crs.to_string()}")
