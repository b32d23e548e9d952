"""Band names as users and products write them, mapped to the registry's canonical names.

The rule is deliberately narrow (strip, case-insensitive, an exact band token or an exact STAC/EO common name):
guessing from free-text descriptions would silently map "Band 4" of a Landsat file to Sentinel-2 B04.
"""

from __future__ import annotations

import re

from spectralgpt_jax.data import bands as bandlib

# STAC `eo` extension common names (Sentinel-2 MSI), as Earth Search / Planetary Computer items use them. The
# generic "rededge" is absent on purpose: it names three bands.
COMMON_NAMES: dict[str, str] = {
    "coastal": "B01",
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "rededge1": "B05",
    "rededge2": "B06",
    "rededge3": "B07",
    "nir": "B08",
    "nir08": "B8A",
    "nir09": "B09",
    "cirrus": "B10",
    "swir16": "B11",
    "swir22": "B12",
}

_TOKEN = re.compile(r"B(\d{1,2})(A?)", re.IGNORECASE)
# A band token inside a file stem: not glued to a preceding letter ("sub1") nor to a following letter or digit
# ("B02x", "B123"), so "T32TQM_20200101T101421_B8A", "s2_B02" and "..._B02_10m" match and "preview" does not.
_IN_STEM = re.compile(r"(?<![A-Za-z])B\d{1,2}A?(?![0-9A-Za-z])", re.IGNORECASE)


def canonical_band_name(text: str) -> str | None:
  """The canonical name ("B02", "B8A", "B10"...) of a band token ("b2", "B08", "B8a", "B08A") or a common name
  ("blue", "nir08"); None for anything else (including "B13", "B8" is B08 and never B8A)."""
  if not isinstance(text, str):
    return None
  text = text.strip()
  common = COMMON_NAMES.get(text.lower())
  if common:
    return common
  match = _TOKEN.fullmatch(text)
  if not match:
    return None
  number, narrow = int(match.group(1)), bool(match.group(2))
  name = "B8A" if narrow and number == 8 else (None if narrow else f"B{number:02d}")
  return name if name in bandlib.BANDS else None


def band_of_filename(name: str) -> str | None:
  """The canonical band of a band file ("T32TQM_..._B02_10m.jp2" -> "B02"): the last band token of its stem."""
  stem = name.rsplit(".", 1)[0] if "." in name else name
  tokens = _IN_STEM.findall(stem)
  return canonical_band_name(tokens[-1]) if tokens else None
