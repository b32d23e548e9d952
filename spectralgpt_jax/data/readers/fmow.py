"""fMoW-Sentinel reader: a CSV per split (`,category,location_id,image_id,timestamp,polygon,image_path`) and one
13-band uint16 GeoTIFF per row, of varying size.

Band order in the files is B01..B08,B8A,B09,B10,B11,B12 (the SatMAE layout; inferred from the per-band statistics,
see docs/data.md). We reorder to canonical by name, which drops B10 (the reference drops index 10 too).
`image_path` is taken relative to the data root; when that file does not exist we try SatMAE's reconstruction
`fmow-sentinel/<split>/<category>/<category>_<location_id>/<category>_<location_id>_<image_id>.tif`.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.data.readers import common
from spectralgpt_jax.data.readers.common import DataError

CATEGORIES = (
    "airport",
    "airport_hangar",
    "airport_terminal",
    "amusement_park",
    "aquaculture",
    "archaeological_site",
    "barn",
    "border_checkpoint",
    "burial_site",
    "car_dealership",
    "construction_site",
    "crop_field",
    "dam",
    "debris_or_rubble",
    "educational_institution",
    "electric_substation",
    "factory_or_powerplant",
    "fire_station",
    "flooded_road",
    "fountain",
    "gas_station",
    "golf_course",
    "ground_transportation_station",
    "helipad",
    "hospital",
    "impoverished_settlement",
    "interchange",
    "lake_or_pond",
    "lighthouse",
    "military_facility",
    "multi-unit_residential",
    "nuclear_powerplant",
    "office_building",
    "oil_or_gas_facility",
    "park",
    "parking_lot_or_garage",
    "place_of_worship",
    "police_station",
    "port",
    "prison",
    "race_track",
    "railway_bridge",
    "recreational_facility",
    "road_bridge",
    "runway",
    "shipyard",
    "shopping_mall",
    "single-unit_residential",
    "smokestack",
    "solar_farm",
    "space_facility",
    "stadium",
    "storage_tank",
    "surface_mine",
    "swimming_pool",
    "toll_booth",
    "tower",
    "tunnel_opening",
    "waste_disposal",
    "water_treatment_facility",
    "wind_farm",
    "zoo",
)  # fmt: skip  (SatMAE / SpectralGPT util/datasets.py CATEGORIES, 62 classes)
COLUMNS = ("category", "location_id", "image_id", "timestamp", "polygon", "image_path")
SPLITS = ("train", "val", "test")
YEARS = (2000, 2020)  # the reference keeps images whose timestamp year is in [2000, 2020]


def read_csv(path: str) -> list[dict]:
  if not os.path.exists(path):
    raise DataError(f"{path}: fMoW-Sentinel CSV not found")
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  if not rows:
    raise DataError(f"{path}: CSV has no rows")
  missing = [c for c in COLUMNS if c not in rows[0]]
  if missing:
    raise DataError(f"{path}: CSV lacks columns {missing} (header {list(rows[0])})")
  return rows


def _year(row: dict, csv_path: str) -> int:
  try:
    return int(row["timestamp"][:4])
  except ValueError:
    raise DataError(f"{csv_path}: unparseable timestamp {row['timestamp']!r} ({row['image_path']})") from None


def _location(row: dict):
  return (0, int(row["location_id"]), "") if row["location_id"].isdigit() else (1, 0, row["location_id"])


class FMoWSentinel:
  """`rows(split)` follows the reference: sorted by (category, location_id, timestamp) and restricted to the years
  in `years` (pass `years=None` to keep every row)."""

  def __init__(self, root: str, years: tuple[int, int] | None = YEARS):
    common.require_dir(root, "fMoW-Sentinel")
    self.root = root
    self.years = years

  def available_splits(self) -> list[str]:
    return [s for s in SPLITS if os.path.exists(self.csv_path(s))]

  def csv_path(self, split: str) -> str:
    return os.path.join(self.root, f"{split}.csv")

  def rows(self, split: str) -> list[dict]:
    path = self.csv_path(split)
    rows = [dict(r, _split=split, _csv=path) for r in read_csv(path)]
    if self.years is not None:
      first, last = self.years
      rows = [r for r in rows if first <= _year(r, path) <= last]
    return sorted(rows, key=lambda r: (r["category"], _location(r), r["timestamp"]))

  def image_path(self, row: dict) -> str:
    path = os.path.join(self.root, row["image_path"])
    if os.path.exists(path):
      return path
    c, loc, img = row["category"], row["location_id"], row["image_id"]
    rebuilt = os.path.join(self.root, "fmow-sentinel", row["_split"], c, f"{c}_{loc}", f"{c}_{loc}_{img}.tif")
    return rebuilt if os.path.exists(rebuilt) else path

  def read(self, row: dict) -> dict:
    if row["category"] not in CATEGORIES:
      raise DataError(f"{row['_csv']}: unknown fMoW category {row['category']!r} ({row['image_path']})")
    path = self.image_path(row)
    image = common.read_tif(path, ndim=3)
    if image.shape[0] == 13 and image.shape[-1] != 13:  # planar (band-separate) tif: CHW -> HWC
      image = np.moveaxis(image, 0, -1)
    if image.shape[-1] != 13:
      raise DataError(f"{path}: expected 13 bands (H, W, 13), got shape {image.shape}")
    return {
        "image": bandlib.reorder(image, bandlib.ON_DISK["fmow_sentinel"], bandlib.CANONICAL),
        "label": CATEGORIES.index(row["category"]),
        "id": row["image_path"],
    }
