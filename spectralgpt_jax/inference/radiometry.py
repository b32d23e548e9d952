"""Sentinel-2 radiometry: bring a scene's digital numbers (DN) to the encoding SpectralGPT's training data used.

ESA changed the encoding with processing baseline 04.00 (operational since 25 January 2022; ESA's Collection-1
reprocessing gives older acquisitions newer baselines too): reflectance = (DN + ADD_OFFSET) / QUANTIFICATION_VALUE,
with ADD_OFFSET = -1000 in every band so far (RADIO_ADD_OFFSET in L1C, BOA_ADD_OFFSET in L2A), where it was
DN / 10000 before. Every dataset SpectralGPT was pretrained and fine-tuned on (fMoW-Sentinel, BigEarthNet v1.0,
EuroSAT, SegMunich, OSCD) predates 04.00, and so do the normalisation statistics of its checkpoints: a newer product
read as stored is 1000 DN (0.1 reflectance) too bright in every band.

A `Radiometry` maps stored DN to harmonised DN = reflectance x 10000 = (DN + add_offset) * 10000 / quantification,
clipped at 0 (the range of the old encoding; Sentinel Hub's harmonizeValues and Earth Engine's HARMONIZED
collections do the same). Validity is decided on the stored values first, so DN 0 stays nodata.

`for_scene(choice, ...)`: `"off"` keeps DN as stored, a number adds that many DN to every band, `"auto"` (the
default) reads what the input declares, in this order:
  - a .SAFE product, or a band folder inside one: its MTD_MSIL1C.xml / MTD_MSIL2A.xml (per-band offsets and the
    quantification value; a product before 04.00 declares no offsets);
  - a STAC item: `earthsearch:boa_offset_applied: true` (Earth Search already harmonised the files) wins; then the
    assets' raster scale/offset (`raster:bands`, or STAC 1.1 `raster:scale` / `raster:offset`); then the processing
    baseline in the properties (`s2:processing_baseline`, `sentinel:processing_baseline`, `processing:version`);
  - GDAL scale/offset metadata of the files (band i: reflectance = DN * scale + offset) when not the default 1 / 0;
  - nothing declared (a plain GeoTIFF, a folder of band files): DN as stored, with a warning naming the override.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import xml.etree.ElementTree as ElementTree
from typing import Mapping, Sequence

import numpy as np

from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.inference import scene_sources
from spectralgpt_jax.inference.band_names import canonical_band_name
from spectralgpt_jax.inference.scene_sources import SceneError, one_line

QUANTIFICATION = 10000.0         # DN per unit reflectance in the old encoding, and in every product so far
FIRST_OFFSET_BASELINE = (4, 0)   # processing baseline 04.00 introduced the offsets
ESA_OFFSET = -1000.0             # the offset of every band of every product since 04.00, as ESA announced it
BASELINE_PROPERTIES = ("s2:processing_baseline", "sentinel:processing_baseline", "processing:version")
_OFFSET_TAGS = ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET")
_QUANTIFICATION_TAGS = ("BOA_QUANTIFICATION_VALUE", "L2A_BOA_QUANTIFICATION_VALUE", "QUANTIFICATION_VALUE")


@dataclasses.dataclass(frozen=True)
class Radiometry:
  """Per-band add_offset (DN) and quantification (DN per unit reflectance); bands not listed are kept as stored."""
  add_offset: Mapping[str, float] = dataclasses.field(default_factory=dict)
  quantification: Mapping[str, float] = dataclasses.field(default_factory=dict)
  source: str = "as stored"
  declared: bool = True          # False: nothing in the input said how its DN are encoded

  def is_identity(self, names: Sequence[str]) -> bool:
    return all(self.add_offset.get(b, 0.0) == 0.0 and self.quantification.get(b, QUANTIFICATION) == QUANTIFICATION
               for b in names)

  def apply(self, data: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Harmonised float32 DN of `data` [..., len(names)], clipped at 0; returned as is when nothing changes."""
    if self.is_identity(names):
      return data
    add = np.asarray([self.add_offset.get(b, 0.0) for b in names], np.float32)
    gain = np.asarray([QUANTIFICATION / self.quantification.get(b, QUANTIFICATION) for b in names], np.float32)
    return np.maximum((data + add) * gain, np.float32(0))

  def describe(self) -> str:
    names = sorted(set(self.add_offset) | set(self.quantification), key=bandlib.ALL_13.index)
    if self.is_identity(names):
      return f"DN as stored ({self.source})"
    terms = {(self.add_offset.get(b, 0.0), self.quantification.get(b, QUANTIFICATION)) for b in names}
    if len(terms) == 1:
      (add, q), = terms
      formula = f"(DN {'+' if add >= 0 else '-'} {abs(add):g})" + ("" if q == QUANTIFICATION else f" * 10000/{q:g}")
    else:
      formula = "per band " + ", ".join(f"{b}: (DN + {self.add_offset.get(b, 0.0):g}) * 10000/"
                                        f"{self.quantification.get(b, QUANTIFICATION):g}" for b in names)
    return f"harmonised DN = {formula}, clipped at 0 ({self.source})"


def parse_choice(text: str) -> str | float:
  """'auto', 'off' or a finite number of DN to add (the --harmonize flag); ValueError otherwise."""
  value = str(text).strip().lower()
  if value in ("auto", "off"):
    return value
  try:
    number = float(value)
  except ValueError:
    number = math.nan
  if not math.isfinite(number):
    raise ValueError(f"{text!r}: expected auto, off, or a number of DN to add to every band (e.g. -1000)")
  return number


def for_scene(choice, kind: str, path: str, bands: Sequence[str], gdal_scaling: Mapping[str, tuple]) -> Radiometry:
  """The radiometry of an opened scene. `gdal_scaling`: {band: (scale, offset)} of its files (GDAL metadata)."""
  choice = parse_choice(choice) if isinstance(choice, str) else float(choice)
  if choice == "off":
    return Radiometry(source="--harmonize=off")
  if not isinstance(choice, str):
    return Radiometry({b: choice for b in bands}, source=f"--harmonize={choice:g}")
  found = None
  metadata = product_metadata(path, required=kind == "safe") if kind in ("safe", "folder") else None
  if metadata:
    found = from_product_metadata(metadata)
  elif kind == "stac":
    found = from_stac(path)
  if found is None:
    found = from_gdal(gdal_scaling)
  if found is None:
    found = Radiometry(source="no metadata declares a radiometric offset; assumed none", declared=False)
    logging.warning("%s: nothing declares how its DN are encoded; using them as stored (the encoding before "
                    "processing baseline 04.00). For data of baseline 04.00 or later (produced or reprocessed "
                    "since 2022) pass --harmonize=-1000", path)
  return found


def product_metadata(path: str, *, required: bool) -> str | None:
  """MTD_MSIL1C/2A.xml of the .SAFE product at or above `path` (a band folder inside a product counts)."""
  start = folder = os.path.abspath(path)
  for _ in range(5):                  # SAFE / GRANULE / <granule> / IMG_DATA / R10m
    is_product = folder == start or os.path.isdir(os.path.join(folder, "GRANULE"))
    for name in scene_sources.SAFE_METADATA if is_product else ():
      if os.path.isfile(os.path.join(folder, name)):
        return os.path.join(folder, name)
    folder = os.path.dirname(folder)
  if required:
    raise SceneError(f"{path}: no {' or '.join(scene_sources.SAFE_METADATA)}, so its radiometric offset is "
                     f"unknown; pass --harmonize=off (DN as stored) or --harmonize=-1000 (baseline 04.00 or later)")
  return None


def from_product_metadata(xml_path: str) -> Radiometry:
  """Per-band ADD_OFFSET and the quantification value of a Sentinel-2 product metadata file (parsed safely, see
  `scene_sources.read_xml`)."""
  name = os.path.basename(xml_path)
  try:
    root = scene_sources.read_xml(xml_path)
  except (ElementTree.ParseError, OSError) as e:
    raise SceneError(f"{xml_path}: not readable Sentinel-2 product metadata ({one_line(e)})") from None
  by_tag: dict[str, list] = {}
  for element in root.iter():
    by_tag.setdefault(str(element.tag).rsplit("}", 1)[-1], []).append(element)
  band_ids = {e.get("bandId"): canonical_band_name(e.get("physicalBand", "")) for e in by_tag.get(
      "Spectral_Information", [])} or {str(i): b for i, b in enumerate(bandlib.ALL_13)}
  offsets = {}
  listed = [by_tag[tag] for tag in _OFFSET_TAGS if by_tag.get(tag)]   # L2A's BOA offsets win over any L1C ones
  for element in listed[0] if listed else []:
    band = band_ids.get(element.get("band_id"))
    if band is None:
      raise SceneError(f"{xml_path}: {element.tag} for unknown band_id {element.get('band_id')!r}")
    offsets[band] = _number(element, xml_path)
  q_elements = [e for tag in _QUANTIFICATION_TAGS for e in by_tag.get(tag, [])]
  q = _number(q_elements[0], xml_path) if q_elements else QUANTIFICATION
  if q <= 0:
    raise SceneError(f"{xml_path}: quantification value {q:g} must be positive")
  baseline_elements = by_tag.get("PROCESSING_BASELINE", [])
  baseline = (baseline_elements[0].text or "").strip() if baseline_elements else "unknown"
  if not offsets and (_baseline(baseline) or (0, 0)) >= FIRST_OFFSET_BASELINE and baseline != "99.99":
    logging.warning("%s: processing baseline %s but no ADD_OFFSET values; DN used as stored", xml_path, baseline)
  return Radiometry(offsets, {b: q for b in offsets},
                    source=f"{name}: processing baseline {baseline}, " + ("ADD_OFFSET" if offsets else "no offsets"))


def from_stac(item_path: str) -> Radiometry | None:
  item, assets = scene_sources.stac_assets(item_path)
  properties = item.get("properties") if isinstance(item.get("properties"), dict) else {}
  if properties.get("earthsearch:boa_offset_applied") is True:
    return Radiometry(source="STAC earthsearch:boa_offset_applied = true: the files are harmonised already")
  scaling = {b: s for b, s in ((b, _stac_scaling(a)) for b, a in assets.items()) if s is not None}
  if scaling:
    return _from_scale_offset(scaling, "STAC raster scale/offset")
  for key in BASELINE_PROPERTIES:
    version = _baseline(properties.get(key))
    if version is not None:
      add = ESA_OFFSET if version >= FIRST_OFFSET_BASELINE else 0.0
      return Radiometry({b: add for b in assets}, source=f"STAC {key} = {properties[key]}")
  return None


def from_gdal(scaling: Mapping[str, tuple]) -> Radiometry | None:
  declared = {b: (float(s), float(o)) for b, (s, o) in scaling.items()
              if s is not None and o is not None and (float(s), float(o)) != (1.0, 0.0)}
  return _from_scale_offset(declared, "GDAL scale/offset of the files") if declared else None


def _from_scale_offset(scaling: Mapping[str, tuple], source: str) -> Radiometry:
  """reflectance = DN * scale + offset, i.e. add_offset = offset / scale and quantification = 1 / scale."""
  for band, (scale, _) in scaling.items():
    if not scale > 0:
      raise SceneError(f"{source}: band {band} declares scale {scale:g}; it must be positive")
  return Radiometry({b: o / s for b, (s, o) in scaling.items()}, {b: 1.0 / s for b, (s, _) in scaling.items()},
                    source=source)


def _stac_scaling(asset: dict) -> tuple[float, float] | None:
  """(scale, offset) of a single-band asset: STAC 1.0 `raster:bands[0]`, or STAC 1.1 `raster:*` on its band / itself."""
  entries = [e for e in (asset.get("raster:bands") or asset.get("bands") or [None])[:1] if isinstance(e, dict)]
  places = [(e, "scale", "offset") for e in entries] + [(e, "raster:scale", "raster:offset") for e in entries]
  for holder, scale_key, offset_key in places + [(asset, "raster:scale", "raster:offset")]:
    if scale_key in holder or offset_key in holder:
      try:
        return float(holder.get(scale_key, 1.0)), float(holder.get(offset_key, 0.0))
      except (TypeError, ValueError):
        raise SceneError(f"STAC asset {asset.get('href')}: non-numeric {scale_key}/{offset_key}") from None
  return None


def _baseline(text) -> tuple[int, int] | None:
  parts = str(text or "").strip().lstrip("Nn").split(".")
  try:
    return (int(parts[0]), int(parts[1])) if len(parts) == 2 else (int(parts[0][:2]), int(parts[0][2:4]))
  except (ValueError, IndexError):
    return None


def _number(element, xml_path: str) -> float:
  try:
    value = float((element.text or "").strip())
  except ValueError:
    value = math.nan
  if not math.isfinite(value):
    raise SceneError(f"{xml_path}: {str(element.tag).rsplit('}', 1)[-1]} {element.attrib or ''} is not a number: "
                     f"{element.text!r}")
  return value
