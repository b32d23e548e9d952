"""Sentinel-2's vector cloud masks: QI_DATA/MSK_CLOUDS_B00.gml (named `S2A_OPER_MSK_CLOUDS_..._B00_MSIL1C.gml` in
products of format 13 and older), the L1C cloud mask of every product before processing baseline 04.00 (January
2022), when ESA replaced it with the MSK_CLASSI raster.

The file is a GML 3.2 `eop:Mask` whose `eop:MaskFeature`s are polygons (exterior ring, optional holes) of type
OPAQUE (opaque clouds) or CIRRUS, in the tile's UTM CRS (`srsName`, e.g. "urn:ogc:def:crs:EPSG:8.7:32632"), traced
along the 60 m pixel edges. A product without clouds has no feature (and often no envelope): that is an empty mask,
not an error. The polygons are burnt onto the scene's output grid window by window (a pixel is cloud when its centre
is inside a polygon; GDAL's rasterisation), so memory follows the window as for raster masks.
"""
from __future__ import annotations

import collections
import functools
import logging
import re
from xml.etree import ElementTree

import numpy as np
import rasterio.crs
import rasterio.errors
import rasterio.features
import rasterio.transform
import rasterio.warp

from spectralgpt_jax.inference import gridded, scene_sources
from spectralgpt_jax.inference.scene_sources import SceneError, one_line

CLOUD_TYPES = ("OPAQUE", "CIRRUS")
_GML = "{http://www.opengis.net/gml/3.2}"
_EOP = "{http://www.opengis.net/eop/2.0}"
# urn:ogc:def:crs:EPSG:8.7:32632, EPSG::32632, EPSG:32632, http://www.opengis.net/def/crs/EPSG/0/32632 and GML 2's
# http://www.opengis.net/gml/srs/epsg.xml#32632
_EPSG = re.compile(r"(?:EPSG[:/](?:[0-9.]*[:/])?|epsg\.xml#)(\d+)\s*$", re.IGNORECASE)


def is_vector_mask(path: str) -> bool:
  return path.lower().endswith(".gml")


def read_polygons(path: str) -> tuple[rasterio.crs.CRS | None, list[tuple[str, dict]]]:
  """(CRS, [(mask type, GeoJSON polygon)]) of the OPAQUE and CIRRUS features of a Sentinel-2 GML mask."""
  try:
    root = scene_sources.read_xml(path)
  except (ElementTree.ParseError, OSError) as e:
    raise SceneError(f"{path}: not a readable GML cloud mask ({one_line(e)})") from None
  if root.tag != f"{_EOP}Mask":
    raise SceneError(f"{path}: not a Sentinel-2 GML mask (its root element is {root.tag!r}, not eop:Mask)")
  default_crs = _crs(path, root.find(f"{_GML}boundedBy/{_GML}Envelope"))
  polygons = []
  for feature in root.iter(f"{_EOP}MaskFeature"):
    kind = (feature.findtext(f"{_EOP}maskType") or "").strip().upper()
    if kind not in CLOUD_TYPES:
      continue
    for polygon in feature.iter(f"{_GML}Polygon"):
      crs = _crs(path, polygon) or default_crs
      if crs is None:
        raise SceneError(f"{path}: polygon {polygon.get(f'{_GML}id', '?')} has no srsName and the file no envelope "
                         f"with one; cannot place it on the map")
      if default_crs is not None and crs != default_crs:
        raise SceneError(f"{path}: polygons in two CRSs ({default_crs} and {crs}); a Sentinel-2 mask has one")
      default_crs = crs
      exterior = polygon.findall(f"{_GML}exterior/{_GML}LinearRing")
      if len(exterior) != 1:
        raise SceneError(f"{path}: polygon {polygon.get(f'{_GML}id', '?')} has {len(exterior)} exterior "
                         f"LinearRings, not one")
      rings = [_ring(path, polygon, ring) for ring in exterior + polygon.findall(f"{_GML}interior/{_GML}LinearRing")]
      polygons.append((kind, {"type": "Polygon", "coordinates": rings}))
  return default_crs, polygons


def _crs(path: str, element) -> rasterio.crs.CRS | None:
  name = element.get("srsName") if element is not None else None
  return _named_crs(path, name) if name else None


@functools.lru_cache(maxsize=16)
def _named_crs(path: str, name: str) -> rasterio.crs.CRS:
  match = _EPSG.search(name)
  if not match and re.match(r"^[a-z]+://", name, re.IGNORECASE):   # GDAL would fetch it: never from a data file
    raise SceneError(f"{path}: srsName {name!r} is a URL without an EPSG code; cannot place the mask on the map")
  try:
    crs = rasterio.crs.CRS.from_epsg(int(match.group(1))) if match else rasterio.crs.CRS.from_user_input(name)
  except rasterio.errors.CRSError as e:
    raise SceneError(f"{path}: srsName {name!r} is not a CRS GDAL knows ({one_line(e)})") from None
  if crs.is_geographic:   # GML's EPSG axis order is latitude first; Sentinel-2 masks are in the tile's UTM zone
    raise SceneError(f"{path}: srsName {name!r} is a geographic CRS; a Sentinel-2 mask is in its tile's projected "
                     f"(UTM) CRS")
  return crs


def _ring(path: str, polygon, ring) -> list[tuple[float, float]]:
  where = f"{path}: polygon {polygon.get(f'{_GML}id', '?')}"
  pos_list = ring.find(f"{_GML}posList")
  if pos_list is None:
    raise SceneError(f"{where}: a LinearRing without gml:posList")
  try:
    dims = int(pos_list.get("srsDimension", "2"))
    values = np.array(pos_list.text.split() if pos_list.text else [], np.float64)
  except ValueError:
    raise SceneError(f"{where}: gml:posList holds something other than numbers") from None
  if dims not in (2, 3) or values.size % dims or values.size < 4 * dims:
    raise SceneError(f"{where}: gml:posList has {values.size} numbers, not a ring of at least four {dims}-D points")
  points = values.reshape(-1, dims)[:, :2]         # a 3-D ring's heights are not needed
  if not np.array_equal(points[0], points[-1]):
    raise SceneError(f"{where}: a LinearRing must end where it starts (GML); this one starts at {tuple(points[0])} "
                     f"and ends at {tuple(points[-1])}")
  return [(float(x), float(y)) for x, y in points]


class PolygonSource:
  """Cloud polygons burnt onto an output grid, read like a `gridded.GridSource` of one band: `read(names, col, row,
  width, height)` -> (float32 [h, w, 1] with 1 where cloud, all-True validity: the mask has no footprint)."""

  def __init__(self, path: str, grid: gridded.Grid, scene_path: str):
    crs, polygons = read_polygons(path)
    self.path, self._grid = path, grid
    self.counts = collections.Counter(kind for kind, _ in polygons)
    shapes = [shape for _, shape in polygons]
    if shapes and crs != grid.crs:
      try:
        shapes = rasterio.warp.transform_geom(crs, grid.crs, shapes)
      except (rasterio.errors.RasterioError, ValueError) as e:
        raise SceneError(f"{path}: cannot reproject its polygons to {scene_path}'s CRS ({one_line(e)})") from None
    self._shapes = shapes
    # pixel bounds (col0, row0, col1, row1) of each polygon on the grid: windows burn only the polygons they touch
    self._boxes = np.array([_pixel_box(shape, grid.transform) for shape in shapes]).reshape(-1, 4)
    on_scene = self._touching(0, 0, grid.width, grid.height)
    logging.info("%s: %d cloud polygons (%s), %d of them over %s", path, len(shapes),
                 ", ".join(f"{self.counts[k]} {k}" for k in CLOUD_TYPES), len(on_scene), scene_path)
    if shapes and not on_scene.size:
      # A GML has no footprint to check (its envelope bounds the clouds): a mask of another tile looks like this.
      logging.warning("%s: none of its %d cloud polygons lies over %s, so it masks nothing there; is it the mask "
                      "of another tile?", path, len(shapes), scene_path)

  def _touching(self, col: int, row: int, width: int, height: int) -> np.ndarray:
    b = self._boxes
    return np.flatnonzero((b[:, 0] < col + width) & (b[:, 2] > col) & (b[:, 1] < row + height) & (b[:, 3] > row))

  def read(self, names, col, row, width, height):
    cloud = np.zeros((height, width, 1), np.float32)
    touching = self._touching(col, row, width, height)
    if touching.size:
      transform = self._grid.transform * rasterio.transform.Affine.translation(col, row)
      cloud[..., 0] = rasterio.features.rasterize([self._shapes[i] for i in touching], out_shape=(height, width),
                                                  transform=transform, fill=0, default_value=1, dtype=np.uint8)
    return cloud, np.ones((height, width), bool)

  def close(self) -> None:
    pass


def _pixel_box(shape: dict, transform) -> tuple[float, float, float, float]:
  points = np.array([p for ring in shape["coordinates"] for p in ring], np.float64)
  cols, rows = ~transform * (points[:, 0], points[:, 1])
  return cols.min(), rows.min(), cols.max(), rows.max()
