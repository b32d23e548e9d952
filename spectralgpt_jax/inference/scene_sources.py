"""Where a scene's band files are: a folder of band files, a Sentinel-2 .SAFE product, or a STAC item.

Each finder returns {canonical band: GDAL path} and never opens a raster (`raster_band_indexes` names the bands of
a multi-band raster scene_io has opened); opening, grids and resampling are the job of scene_io. Every problem is a
SceneError whose one-line message names the offending file or folder.
"""

from __future__ import annotations

import copy
import functools
import glob
import json
import os
import xml.etree.ElementTree as ElementTree

from rasterio.enums import ColorInterp

from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.inference.band_names import band_of_filename, canonical_band_name


class SceneError(ValueError):
  """Bad input: the message is ONE line naming the file and the problem."""


def one_line(error: BaseException) -> str:
  """A library error's message on one line, for the one-line SceneErrors that wrap it."""
  return " ".join(str(error).split()) or type(error).__name__


RASTER_EXTENSIONS = (".tif", ".tiff", ".jp2", ".j2k", ".vrt", ".img")
SAFE_METADATA = ("MTD_MSIL1C.xml", "MTD_MSIL2A.xml")
L2A_RESOLUTIONS = ("R10m", "R20m", "R60m")
# GDAL virtual file systems for remote STAC hrefs; GDAL streams ranged reads from them, so windows stay windows.
REMOTE_PREFIXES = {
    "http://": "/vsicurl/http://",
    "https://": "/vsicurl/https://",
    "s3://": "/vsis3/",
    "gs://": "/vsigs/",
    "az://": "/vsiaz/",
}


def input_kind(path: str) -> str:
  """'safe', 'folder', 'stac' or 'raster', decided by the path alone (nothing is opened)."""
  if os.path.isdir(path):
    is_safe = path.rstrip("/\\").upper().endswith(".SAFE")
    return "safe" if is_safe or any(os.path.exists(os.path.join(path, m)) for m in SAFE_METADATA) else "folder"
  return "stac" if path.lower().endswith(".json") else "raster"


def folder_bands(folder: str) -> dict[str, str]:
  """The band files of a folder, by the band token in their names. Other files (previews, TCI, XML) are ignored;
  a granule folder is read through its IMG_DATA, and one that holds L2A's R10m/R20m/R60m sub-folders like an L2A
  IMG_DATA folder."""
  if os.path.isdir(os.path.join(folder, "IMG_DATA")):
    return folder_bands(os.path.join(folder, "IMG_DATA"))
  if any(os.path.isdir(os.path.join(folder, r)) for r in L2A_RESOLUTIONS):
    return _l2a_bands(folder)
  found: dict[str, str] = {}
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    band = band_of_filename(name) if name.lower().endswith(RASTER_EXTENSIONS) else None
    if band is None or not os.path.isfile(path):
      continue
    if band in found:
      raise SceneError(f"{folder}: two files for band {band}: {os.path.basename(found[band])} and {name}")
    found[band] = path
  if not found:
    raise SceneError(f"{folder}: no band files (expected names like *_B02.tif or *_B8A.jp2)")
  return found


def safe_bands(safe: str) -> dict[str, str]:
  """The band files of a Sentinel-2 L1C or L2A product (the .SAFE directory), each at its native resolution."""
  return folder_bands(granule_img_data(safe))


def granule_img_data(safe: str) -> str:
  """The IMG_DATA folder of a .SAFE product's one granule."""
  granules = sorted(glob.glob(os.path.join(safe, "GRANULE", "*", "IMG_DATA")))
  if not granules:
    raise SceneError(f"{safe}: no GRANULE/*/IMG_DATA folder; not a complete Sentinel-2 .SAFE product")
  if len(granules) > 1:
    raise SceneError(f"{safe}: holds {len(granules)} granules (an old multi-tile product); pass one granule's "
                     f"IMG_DATA folder instead")
  return granules[0]


def _l2a_bands(img_data: str) -> dict[str, str]:
  """L2A stores most bands at several resolutions (B02 in R10m, R20m and R60m); take each from its native one."""
  found: dict[str, str] = {}
  for res in L2A_RESOLUTIONS:
    sub = os.path.join(img_data, res)
    if not os.path.isdir(sub):
      continue
    gsd = int(res[1:-1])
    try:
      files = folder_bands(sub)
    except SceneError:
      continue  # an empty resolution folder just contributes nothing
    found.update({b: p for b, p in files.items() if bandlib.BANDS[b].gsd_m == gsd})
  if not found:
    raise SceneError(f"{img_data}: no band files in its {'/'.join(L2A_RESOLUTIONS)} folders")
  return found


def asset_path(href: str, item_path: str) -> str:
  """The GDAL path of a STAC asset href: remote URLs through GDAL's virtual file systems, file:// stripped, relative
  paths resolved against the item's folder (the STAC rule), GDAL /vsi paths unchanged."""
  for prefix, vsi in REMOTE_PREFIXES.items():
    if href.lower().startswith(prefix):
      return vsi + href[len(prefix):]
  if href.startswith("/vsi"):
    return href
  if href.startswith("file://"):
    href = href[len("file://"):]
  if os.path.isabs(href):
    return href
  return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(item_path)), href))


def stac_bands(item_path: str) -> dict[str, str]:
  """Band assets of a local STAC item JSON, as {band: GDAL path} (see `stac_assets`)."""
  _, assets = stac_assets(item_path)
  return {band: asset_path(asset["href"], item_path) for band, asset in assets.items()}


def stac_assets(item_path: str) -> tuple[dict, dict[str, dict]]:
  """(item, {band: asset}) of a local STAC item JSON. An asset is a band by its key ("B02", "blue") or, failing
  that, by its single eo:bands entry (`name`, then `common_name`); key matches win, so Earth Search's "blue-jp2"
  duplicate of "blue" is ignored. Multi-band assets (the "visual" TCI) are skipped."""
  item = read_stac_item(item_path)
  assets = item["assets"]
  by_key: dict[str, str] = {}
  by_eo: dict[str, str] = {}
  for key, asset in assets.items():
    if not isinstance(asset, dict) or not isinstance(asset.get("href"), str):
      continue
    band, table = canonical_band_name(key), by_key
    if band is None:
      band, table = _eo_band(asset), by_eo
    if band is None:
      continue
    if band in table:
      raise SceneError(f"{item_path}: two assets for band {band}: '{table[band]}' and '{key}'")
    table[band] = key
  chosen = {**by_eo, **by_key}
  if not chosen:
    raise SceneError(f"{item_path}: no asset is a Sentinel-2 band (by key or eo:bands name / common_name)")
  return item, {band: assets[key] for band, key in chosen.items()}


def read_stac_item(item_path: str) -> dict:
  """A local STAC item JSON, checked to be an object with an 'assets' object. Bands, radiometry, clouds and the
  acquisition time all read the item when a scene opens: the same bytes are parsed once (a copy is returned, so no
  caller sees another's changes)."""
  try:
    with open(item_path, "rb") as f:
      data = f.read()
    item = _parsed_json(data)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise SceneError(f"{item_path}: not a readable STAC item JSON ({type(e).__name__}: {e})") from None
  if not isinstance(item, dict) or not isinstance(item.get("assets"), dict):
    raise SceneError(f"{item_path}: not a STAC item (no 'assets' object)")
  return copy.deepcopy(item)


def read_xml(path: str) -> ElementTree.Element:
  """The root of an XML file (product metadata); the same bytes are parsed once (radiometry and the acquisition time
  both read it), so callers must not modify it. ElementTree does not resolve external entities, and the expat it
  bundles refuses entity-expansion bombs: safe on untrusted files. Raises ElementTree.ParseError / OSError."""
  with open(path, "rb") as f:
    return _parsed_xml(f.read())


@functools.lru_cache(maxsize=8)
def _parsed_json(data: bytes):
  return json.loads(data.decode("utf-8"))


@functools.lru_cache(maxsize=8)
def _parsed_xml(data: bytes) -> ElementTree.Element:
  return ElementTree.fromstring(data)


def _eo_band(asset: dict) -> str | None:
  entries = asset.get("eo:bands") or asset.get("bands")  # STAC 1.1 moved eo:bands to `bands`
  if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
    return None
  entry = entries[0]
  for field in ("name", "common_name", "eo:common_name"):
    band = canonical_band_name(entry.get(field, ""))
    if band:
      return band
  return None


def raster_band_indexes(path: str, ds, bands) -> dict[str, int]:
  """{canonical band: 1-based index} of a multi-band raster, from `bands` (file order) or its descriptions.
  Alpha bands are never data; descriptions that are not band names ("SCL", "cloud mask") are skipped."""
  data = [i for i in range(1, ds.count + 1) if ds.colorinterp[i - 1] != ColorInterp.alpha]
  if bands is not None:
    names = [canonical_band_name(b) for b in bands]
    unknown = [b for b, n in zip(bands, names) if n is None]
    if unknown:
      raise SceneError(f"{path}: unknown band name(s) {unknown} in --bands (use B01..B12, B8A, B10 or STAC common "
                       f"names such as red, nir08)")
    if len(names) != len(data):
      raise SceneError(f"{path}: --bands names {len(names)} bands ({','.join(names)}) but the file has "
                       f"{len(data)} data bands")
    return _no_duplicates(path, list(zip(names, data)), "--bands")
  descriptions = [ds.descriptions[i - 1] or "" for i in data]
  if not any(d.strip() for d in descriptions):
    raise SceneError(f"{path}: has no band names in its descriptions; pass --bands B04,B03,... (one per band, "
                     f"in file order)")
  unnamed = [i for i, d in zip(data, descriptions) if not d.strip()]
  if unnamed:
    raise SceneError(f"{path}: bands {unnamed} have no description while others do; pass --bands for all "
                     f"{len(data)} bands")
  pairs = [(canonical_band_name(d), i) for i, d in zip(data, descriptions)]
  pairs = [(n, i) for n, i in pairs if n is not None]
  if not pairs:
    raise SceneError(f"{path}: none of its band descriptions {descriptions} is a Sentinel-2 band name; "
                     f"pass --bands B04,B03,... (one per band, in file order)")
  return _no_duplicates(path, pairs, "the band descriptions")


def _no_duplicates(path: str, pairs, where: str) -> dict[str, int]:
  out: dict[str, int] = {}
  for name, index in pairs:
    if name in out:
      raise SceneError(f"{path}: band {name} appears twice in {where} (bands {out[name]} and {index})")
    out[name] = index
  return out
