"""Cloud masks for scene inference: pixels a cloud mask flags become invalid, exactly like nodata.

Invalid pixels are left out of the model's inputs (prepared as nodata is), are nodata in every output raster,
lower an embedding tile's `valid_fraction`, and a tile with no valid pixel left is skipped. Off by default (what
counts as cloud is an analysis choice); `open_mask(choice, ...)` takes

  "off"   no mask (the log says when the input has one that `auto` would use);
  "auto"  the input's own mask, and an error if it has none: a .SAFE (or a folder inside one) -> L2A's SCL
          (R20m), else the MSK_CLASSI_B00 raster in the granule's QI_DATA (L1C and L2A since baseline 04.00), else
          its vector mask MSK_CLOUDS_B00.gml (L1C before 04.00; `cloud_polygons`); a band folder -> its *_SCL*
          file; a STAC item -> its `scl` asset; a multi-band raster -> its band described SCL or QA60 (an
          Earth Engine export);
  a path  any raster that lies over the scene (another CRS or resolution is fine), or a Sentinel-2 GML mask.

How a mask says "cloud" (`CloudRule`), decided by its name or band description:
  SCL         scene classification classes; by default 3 cloud shadows, 8 cloud medium probability, 9 cloud high
              probability, 10 thin cirrus (`classes=` / --cloud_classes chooses others, e.g. add 1 saturated or
              defective, 11 snow);
  MSK_CLASSI  band 1 opaque clouds or band 2 cirrus set (band 3, snow and ice, is not cloud);
  MSK_CLOUDS  inside an OPAQUE or CIRRUS polygon of the GML mask (a pixel whose centre is inside);
  QA60        bit 10 opaque clouds or bit 11 cirrus;
  other       a single-band raster whose cloud values `classes` names (required): "1" for a binary mask,
              "40-100" for a cloud probability in percent (L2A's MSK_CLDPRB, s2cloudless x 100).
Masks are resampled onto the scene's grid by nearest neighbour; pixels outside a mask's footprint, or nodata in
it, are not cloud. `buffer=N` (--cloud_buffer) grows every cloud by N output pixels. Every problem is a one-line
SceneError naming the file.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Sequence

import numpy as np
from rasterio.enums import Resampling
from scipy import ndimage

from spectralgpt_jax.inference import cloud_polygons, gridded, scene_sources
from spectralgpt_jax.inference.scene_sources import SceneError

SCL_CLASSES = {0: "no data", 1: "saturated or defective", 2: "dark area or topographic shadow", 3: "cloud shadows",
               4: "vegetation", 5: "not vegetated", 6: "water", 7: "unclassified", 8: "cloud medium probability",
               9: "cloud high probability", 10: "thin cirrus", 11: "snow or ice"}
SCL_CLOUD = (3, 8, 9, 10)
QA60_BITS = (10, 11)       # opaque clouds, cirrus
CLASSI_BANDS = (1, 2)      # opaque clouds, cirrus (band 3 is snow and ice)
_SCL = re.compile(r"(?<![A-Za-z0-9])SCL(?![A-Za-z])", re.IGNORECASE)
_CLASSI = re.compile(r"^MSK_CLASSI", re.IGNORECASE)
# MSK_CLOUDS_B00.gml; in products of format 13 and older S2A_OPER_MSK_CLOUDS_SGS__<date>_<orbit>_<tile>_B00_MSIL1C.gml
_GML_MASK = re.compile(r"(.*_)?MSK_CLOUDS(_.*)?_B00(_.*)?\.gml", re.IGNORECASE)
_QA60 = re.compile(r"(?<![A-Za-z0-9])QA60(?![A-Za-z0-9])", re.IGNORECASE)

Intervals = tuple[tuple[float, float], ...]


def parse_classes(text: str | None) -> Intervals | None:
  """'3,8,9,10' or '40-100' -> ((3, 3), (8, 8), ...) / ((40, 100),); None for None or ''."""
  if not text or not text.strip():
    return None
  out = []
  for part in (p.strip() for p in text.split(",")):
    bounds = part.split("-", 1) if part.count("-") == 1 and not part.startswith("-") else [part, part]
    try:
      lo, hi = float(bounds[0]), float(bounds[1])
      if lo != lo or hi != hi:   # NaN matches no value: a typo, not a choice
        raise ValueError
    except ValueError:
      raise ValueError(f"--cloud_classes {text!r}: {part!r} is not a value or a range lo-hi (e.g. 3,8,9,10 or "
                       f"40-100)") from None
    if lo > hi:
      raise ValueError(f"--cloud_classes {text!r}: the range {part!r} is empty")
    out.append((lo, hi))
  return tuple(out)


def _text(intervals: Intervals) -> str:
  return ",".join(f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}" for lo, hi in intervals)


@dataclasses.dataclass(frozen=True)
class CloudRule:
  """Which values of which bands of a mask file are cloud: any listed band with a value in `values` or, for bit
  masks, any of `bits` set."""
  name: str                      # SCL / MSK_CLASSI / QA60 / values
  bands: tuple[int, ...] = (1,)  # 1-based bands of the mask file
  values: Intervals = ()
  bits: tuple[int, ...] = ()

  def cloudy(self, block: np.ndarray) -> np.ndarray:
    """bool [h, w] of a [len(bands), h, w] block of mask values."""
    hit = np.zeros(block.shape[1:], bool)
    for lo, hi in self.values:
      hit |= ((block >= lo) & (block <= hi)).any(axis=0)
    for bit in self.bits:
      hit |= ((block.astype(np.int64) >> bit) & 1).astype(bool).any(axis=0)
    return hit

  def describe(self) -> str:
    if self.name == "SCL":
      named = [name for code, name in SCL_CLASSES.items() if any(lo <= code <= hi for lo, hi in self.values)]
      return f"SCL classes {_text(self.values)} ({', '.join(named) or 'none of the SCL classes 0-11'})"
    if self.name == "MSK_CLASSI":
      return "MSK_CLASSI opaque clouds or cirrus"
    if self.name == "MSK_CLOUDS":
      return "MSK_CLOUDS opaque cloud and cirrus polygons"
    if self.name == "QA60":
      return "QA60 bits 10 (opaque clouds) or 11 (cirrus)"
    return f"values {_text(self.values)}" + (f" of band {self.bands[0]}" if self.bands != (1,) else "")


class CloudMask:
  """A mask file read on a scene's output grid: `cloudy(col, row, width, height)` -> bool [h, w]. With `buffer`
  > 0 every cloudy pixel also clouds the pixels within `buffer` output pixels of it (a disk): masks under-detect
  cloud edges and thin haze. The window is read `buffer` pixels wider on each side, so a window's result never
  depends on where it starts (strips agree at their seams)."""

  def __init__(self, path: str, rule: CloudRule, source: gridded.GridSource, buffer: int = 0):
    self.path, self.rule, self._source, self.buffer = path, rule, source, int(buffer)
    self._names = [f"mask{b}" for b in rule.bands]
    r = self.buffer
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    self._disk = x * x + y * y <= r * r

  def cloudy(self, col: int, row: int, width: int, height: int) -> np.ndarray:
    r = self.buffer
    block, inside = self._source.read(self._names, col - r, row - r, width + 2 * r, height + 2 * r)
    hit = self.rule.cloudy(np.moveaxis(block, -1, 0)) & inside
    if r:
      hit = ndimage.binary_dilation(hit, structure=self._disk)
    return hit[r:r + height, r:r + width]

  def describe(self) -> str:
    buffered = f", buffered by {self.buffer} px" if self.buffer else ""
    return f"cloud mask: {self.rule.describe()} from {self.path}{buffered}"

  def close(self) -> None:
    self._source.close()


def open_mask(choice: str, classes: Intervals | None, kind: str, scene_path: str, grid: gridded.Grid,
              buffer: int = 0, descriptions: Sequence[str] = ()) -> CloudMask | None:
  """The CloudMask `choice` ("off", "auto" or a path) names for a scene of `kind` at `scene_path` on `grid`, its
  clouds grown by `buffer` output pixels; `descriptions` are a raster scene's band descriptions."""
  if int(buffer) != buffer or buffer < 0:
    raise ValueError(f"cloud buffer {buffer}: must be a whole number of pixels >= 0")
  if choice == "off":
    _hint(kind, scene_path, descriptions)
    return None
  path = find_mask(kind, scene_path, descriptions) if choice == "auto" else os.fspath(choice)
  if choice != "auto" and not path.startswith("/vsi") and not os.path.isfile(path):
    raise SceneError(f"{path}: no such cloud mask file")
  if cloud_polygons.is_vector_mask(path):
    _no_classes(path, classes, "a vector (GML) cloud mask")
    rule = CloudRule("MSK_CLOUDS", (1,), values=((1.0, 1.0),))
    return CloudMask(path, rule, cloud_polygons.PolygonSource(path, grid, scene_path), buffer)
  ds = gridded.open_dataset(path)
  try:
    rule = rule_for(path, ds, classes)
    gridded.check_overlap(path, ds, grid, scene_path)
    source = gridded.source_on(path, ds, {f"mask{b}": b for b in rule.bands}, grid, resampling=Resampling.nearest)
  except BaseException:
    ds.close()
    raise
  return CloudMask(path, rule, source, buffer)


def rule_for(path: str, ds, classes: Intervals | None) -> CloudRule:
  """The CloudRule of an opened mask file, by its name or its band descriptions."""
  name = os.path.basename(path)
  descriptions = [(d or "").strip() for d in ds.descriptions]
  described = {d.upper(): i + 1 for i, d in enumerate(descriptions) if d}
  if _CLASSI.search(name):
    _no_classes(path, classes, "an MSK_CLASSI mask")
    if ds.count < max(CLASSI_BANDS):
      raise SceneError(f"{path}: an MSK_CLASSI mask has bands opaque clouds, cirrus, snow; this file has {ds.count}")
    return CloudRule("MSK_CLASSI", CLASSI_BANDS, values=((1, np.inf),))
  if "SCL" in described or (ds.count == 1 and _SCL.search(name)):
    return CloudRule("SCL", (described.get("SCL", 1),), classes or _points(SCL_CLOUD))
  if "QA60" in described or (ds.count == 1 and _QA60.search(name)):
    _no_classes(path, classes, "a QA60 bit mask")
    return CloudRule("QA60", (described.get("QA60", 1),), bits=QA60_BITS)
  if ds.count != 1:
    raise SceneError(f"{path}: a cloud mask must have one band (or a band described SCL or QA60); this one has "
                     f"{ds.count} ({', '.join(descriptions) if any(descriptions) else 'none described'})")
  if classes is None:
    raise SceneError(f"{path}: not an SCL, MSK_CLASSI or QA60 mask by its name; pass --cloud_classes with the "
                     f"values that are cloud (e.g. 1, or 40-100 for a probability)")
  return CloudRule("values", (1,), classes)


def _points(values) -> Intervals:
  return tuple((float(v), float(v)) for v in values)


def _no_classes(path: str, classes, what: str) -> None:
  if classes is not None:
    raise SceneError(f"{path}: is {what}; --cloud_classes applies to class-coded masks (SCL or a file of values)")


def find_mask(kind: str, scene_path: str, descriptions: Sequence[str] = ()) -> str:
  """The path of the input's own cloud mask (see the module docstring), or a SceneError saying what was looked for;
  `descriptions`: the band descriptions of a raster scene."""
  if kind == "stac":
    return _stac_mask(scene_path)
  if kind == "raster":
    if {(d or "").strip().upper() for d in descriptions} & {"SCL", "QA60"}:
      return scene_path
    raise SceneError(f"{scene_path}: --cloud_mask auto found no band described SCL or QA60; pass --cloud_mask "
                     f"MASK.tif (and --cloud_classes for a mask that is not SCL/MSK_CLASSI/QA60) or off")
  folder = scene_sources.granule_img_data(scene_path) if kind == "safe" else scene_path
  found = _scl_file(folder) or _granule_file(folder, "MSK_CLASSI_B00.jp2") or _granule_file(folder, _GML_MASK)
  if found:
    return found
  raise SceneError(f"{scene_path}: --cloud_mask auto found no SCL file and no QI_DATA/MSK_CLASSI_B00 raster or "
                   f"MSK_CLOUDS_B00 GML; pass --cloud_mask MASK.tif or off")


def _hint(kind: str, scene_path: str, descriptions: Sequence[str]) -> None:
  try:
    found = find_mask(kind, scene_path, descriptions)
  except SceneError:
    return
  logging.info("%s: has a cloud mask (%s) that is not applied; --cloud_mask auto masks its clouds", scene_path,
               os.path.basename(found))


def _scl_file(folder: str) -> str | None:
  """An *_SCL* raster in `folder`, its IMG_DATA, or (L2A) its R20m then R60m sub-folder."""
  for sub in ("", "IMG_DATA", "R20m", "R60m", os.path.join("IMG_DATA", "R20m"), os.path.join("IMG_DATA", "R60m")):
    where = os.path.join(folder, sub)
    if not os.path.isdir(where):
      continue
    for name in sorted(os.listdir(where)):
      stem = name.rsplit(".", 1)[0]
      if name.lower().endswith(scene_sources.RASTER_EXTENSIONS) and _SCL.search(stem):
        return os.path.join(where, name)
  return None


def _granule_file(folder: str, pattern: "str | re.Pattern") -> str | None:
  """The file in QI_DATA matching `pattern` (a name or a regular expression) of the granule `folder` is (or lies
  in: IMG_DATA, IMG_DATA/R20m), if there is one."""
  here = os.path.abspath(folder)
  for _ in range(3):
    qi_data = os.path.join(here, "QI_DATA")
    if os.path.isdir(qi_data):
      for name in sorted(os.listdir(qi_data)):
        if (name == pattern if isinstance(pattern, str) else pattern.fullmatch(name)):
          return os.path.join(qi_data, name)
    here = os.path.dirname(here)
  return None


def _stac_mask(item_path: str) -> str:
  item = scene_sources.read_stac_item(item_path)
  for key, asset in item["assets"].items():
    if key.lower() == "scl" and isinstance(asset, dict) and isinstance(asset.get("href"), str):
      return scene_sources.asset_path(asset["href"], item_path)
  raise SceneError(f"{item_path}: --cloud_mask auto found no 'scl' asset in the STAC item; pass --cloud_mask "
                   f"MASK.tif or off")
