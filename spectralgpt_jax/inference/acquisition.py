"""When a scene was acquired (sensing start, UTC), read from what the input declares; None when nothing does.

In this order: a STAC item's `datetime` (else `start_datetime`); a .SAFE product's (or a folder inside one) metadata
PRODUCT_START_TIME, else the sensing time in the product name (`S2A_MSIL2A_20200101T155511_...`); GDAL metadata of
a raster (ACQUISITION_DATE, DATATAKE_1_DATATAKE_SENSING_START, PRODUCT_START_TIME, SENSING_TIME, datetime); the
first date in the file names (`T32TQM_20200101T101421_B02.jp2`, `s2_2020-06-01.tif`, `..._20200601_...`). A
TIFF's TIFFTAG_DATETIME is when the file was written, not the acquisition, and is never used.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import xml.etree.ElementTree as ElementTree
from typing import Sequence

from spectralgpt_jax.inference import radiometry as radiometry_lib
from spectralgpt_jax.inference import scene_sources
from spectralgpt_jax.inference.scene_sources import SceneError

GDAL_KEYS = ("ACQUISITION_DATE", "DATATAKE_1_DATATAKE_SENSING_START", "PRODUCT_START_TIME", "SENSING_TIME",
             "datetime")
_STAMP = re.compile(r"(?<!\d)(\d{8}T\d{6})(?!\d)")                        # 20200101T155511
_DAY = re.compile(r"(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?!\d)")              # 2020-06-01 or 20200601
_PRODUCT = re.compile(r"_MSIL[12][AC]_(\d{8}T\d{6})")


def parse(text: str) -> datetime.datetime:
  """An ISO 8601 / Sentinel-2 time ('2020-01-01T15:55:11.024Z', '20200101T155511', '2020-06-01') as UTC; naive
  times are UTC. ValueError otherwise."""
  text = str(text).strip()
  if _STAMP.fullmatch(text):
    when = datetime.datetime.strptime(text, "%Y%m%dT%H%M%S")
  else:
    when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
  if when.tzinfo is None:
    when = when.replace(tzinfo=datetime.timezone.utc)
  return when.astimezone(datetime.timezone.utc)


def iso(when: datetime.datetime | None) -> str:
  return "unknown" if when is None else when.strftime("%Y-%m-%dT%H:%M:%SZ")


def for_scene(kind: str, path: str, files: Sequence[str], datasets: Sequence) -> tuple[datetime.datetime | None, str]:
  """(acquisition time or None, where it came from) of a scene of `kind` at `path`, read from its band `files`
  (opened as `datasets`)."""
  if kind == "stac":
    return _stac(path)
  if kind in ("safe", "folder"):
    found = _product(path)
    if found[0] is not None:
      return found
  for ds in datasets:
    tags = ds.tags()
    for key in GDAL_KEYS:
      if tags.get(key):
        when = _parsed(tags[key])
        if when is not None:
          return when, f"GDAL metadata {key}"
  for file in files:
    when = _from_name(os.path.basename(file))
    if when is not None:
      return when, f"file name {os.path.basename(file)}"
  return None, "nothing declares it"


def _parsed(text: str) -> datetime.datetime | None:
  try:
    return parse(text)
  except ValueError:
    return None


def _from_name(name: str) -> datetime.datetime | None:
  stem = name.rsplit(".", 1)[0]
  stamp = _STAMP.search(stem)
  if stamp:
    return _parsed(stamp.group(1))
  for match in _DAY.finditer(stem):
    year, month, day = (int(g) for g in match.groups())
    if 2015 <= year <= 2100:   # Sentinel-2A launched in 2015: other 8-digit runs are not dates
      try:
        return datetime.datetime(year, month, day, tzinfo=datetime.timezone.utc)
      except ValueError:
        continue
  return None


def _stac(item_path: str) -> tuple[datetime.datetime | None, str]:
  properties = scene_sources.read_stac_item(item_path).get("properties") or {}
  for key in ("datetime", "start_datetime"):
    if properties.get(key):
      try:
        return parse(properties[key]), f"STAC {key}"
      except ValueError:
        raise SceneError(f"{item_path}: properties.{key} {json.dumps(properties[key])} is not an ISO 8601 "
                         f"time") from None
  return None, "the STAC item has no datetime"


def _product(path: str) -> tuple[datetime.datetime | None, str]:
  """PRODUCT_START_TIME of the product metadata, else the sensing time in the .SAFE directory's name."""
  xml_path = radiometry_lib.product_metadata(path, required=False)
  if xml_path is not None:
    try:
      root = scene_sources.read_xml(xml_path)
    except (ElementTree.ParseError, OSError):
      root = None   # radiometry reports unreadable metadata; the product name below may still date it
    for element in [] if root is None else root.iter():
      if str(element.tag).rsplit("}", 1)[-1] == "PRODUCT_START_TIME" and element.text:
        when = _parsed(element.text)
        if when is not None:
          return when, f"{os.path.basename(xml_path)} PRODUCT_START_TIME"
  folder = os.path.abspath(path)
  for _ in range(5):                  # SAFE / GRANULE / <granule> / IMG_DATA / R10m
    match = _PRODUCT.search(os.path.basename(folder))
    if match:
      return _parsed(match.group(1)), "product name"
    folder = os.path.dirname(folder)
  return None, ""
