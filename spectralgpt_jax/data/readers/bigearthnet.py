"""BigEarthNet-S2 v1.0 reader: `<root>/<patch>/<patch>_<band>.tif` x12 + `<patch>_labels_metadata.json`.

* Bands: 10 m (120 px), 20 m (60 px) and 60 m (20 px) single-band uint16 GeoTIFFs, all covering the same
  1.2 km footprint. We bring them to the common 120 px (10 m) grid with **bilinear** interpolation,
  pixel-area aligned (`align_corners=False`). Why bilinear: it never leaves the range of its inputs (bicubic
  overshoots, which can give negative reflectances that uint16 cannot hold), it keeps the 10 m bands exactly as
  they are, and it matches torchgeo's BigEarthNet loader (rasterio bilinear). Nearest would keep 6x6 blocks of
  the 60 m bands, which the 8 px patch embedding would see as hard edges.
* Labels: 43 CLC names -> the official 19-class nomenclature (BigEarthNet-S2_19-classes_models label_indices.json);
  eleven classes have no 19-class target and are dropped. Names are checked: an unknown name is an error.
* Exclusion and splits: the official cloud/shadow and seasonal-snow lists and the official BEN-19
  train/val/test lists (shipped in `spectralgpt_jax/data/lists/`, from bigearthnet-common 2.8.0).
"""

from __future__ import annotations

import json
import os

import numpy as np

from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.data.readers import common
from spectralgpt_jax.data.readers.common import DataError

LABELS_19 = (
    "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops", "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland and sparsely vegetated areas", "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub", "Beaches, dunes, sands", "Inland wetlands", "Coastal wetlands",
    "Inland waters", "Marine waters",
)  # fmt: skip

# 43-class CLC name -> 19-class name (None: no 19-class target, dropped).
LABEL_43_TO_19 = {
    "Continuous urban fabric": "Urban fabric",
    "Discontinuous urban fabric": "Urban fabric",
    "Industrial or commercial units": "Industrial or commercial units",
    "Road and rail networks and associated land": None,
    "Port areas": None,
    "Airports": None,
    "Mineral extraction sites": None,
    "Dump sites": None,
    "Construction sites": None,
    "Green urban areas": None,
    "Sport and leisure facilities": None,
    "Non-irrigated arable land": "Arable land",
    "Permanently irrigated land": "Arable land",
    "Rice fields": "Arable land",
    "Vineyards": "Permanent crops",
    "Fruit trees and berry plantations": "Permanent crops",
    "Olive groves": "Permanent crops",
    "Annual crops associated with permanent crops": "Permanent crops",
    "Pastures": "Pastures",
    "Complex cultivation patterns": "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation":
        "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas": "Agro-forestry areas",
    "Broad-leaved forest": "Broad-leaved forest",
    "Coniferous forest": "Coniferous forest",
    "Mixed forest": "Mixed forest",
    "Natural grassland": "Natural grassland and sparsely vegetated areas",
    "Sparsely vegetated areas": "Natural grassland and sparsely vegetated areas",
    "Moors and heathland": "Moors, heathland and sclerophyllous vegetation",
    "Sclerophyllous vegetation": "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland/shrub": "Transitional woodland, shrub",
    "Beaches, dunes, sands": "Beaches, dunes, sands",
    "Bare rock": None,
    "Burnt areas": None,
    "Inland marshes": "Inland wetlands",
    "Peatbogs": "Inland wetlands",
    "Salt marshes": "Coastal wetlands",
    "Salines": "Coastal wetlands",
    "Intertidal flats": None,
    "Water courses": "Inland waters",
    "Water bodies": "Inland waters",
    "Coastal lagoons": "Marine waters",
    "Estuaries": "Marine waters",
    "Sea and ocean": "Marine waters",
}  # fmt: skip

NATIVE_SIZE = {"B02": 120, "B03": 120, "B04": 120, "B08": 120,
               "B05": 60, "B06": 60, "B07": 60, "B8A": 60, "B11": 60, "B12": 60,
               "B01": 20, "B09": 20}  # fmt: skip
PATCH_SIZE = 120
SPLITS = ("train", "val", "test")
LIST_NAMES = {
    "cloud_and_shadow": "patches_with_cloud_and_shadow",
    "seasonal_snow": "patches_with_seasonal_snow",
    "no_19_class_targets": "patches_with_no_19_class_targets",
    "train": "train", "val": "val", "test": "test",
}  # fmt: skip
PACKAGED_LISTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "lists")


def multi_hot_19(names_43, where: str) -> np.ndarray:
  out = np.zeros(len(LABELS_19), np.uint8)
  for n in names_43:
    if n not in LABEL_43_TO_19:
      raise DataError(f"{where}: unknown BigEarthNet class name {n!r}")
    target = LABEL_43_TO_19[n]
    if target is not None:
      out[LABELS_19.index(target)] = 1
  return out


def find_list(lists_dir: str | None, key: str) -> str:
  """Path of an official list: `<dir>/[bigearthnet_]<name>.csv[.bz2]` (packaged copies by default)."""
  base = lists_dir or PACKAGED_LISTS
  for prefix in ("bigearthnet_", ""):
    for ext in (".csv.bz2", ".csv", ".txt"):
      p = os.path.join(base, prefix + LIST_NAMES[key] + ext)
      if os.path.exists(p):
        return p
  raise DataError(f"{base}: no BigEarthNet list {LIST_NAMES[key]}.csv[.bz2] found")


def seeded_subset(names, fraction: float, seed: int) -> list[str]:
  """A reproducible random `fraction` of `names` (the reference fine-tunes on an unpublished 10 % subset;
  ours is drawn with numpy's PCG64 from the sorted official train list)."""
  names = sorted(names)
  k = int(round(fraction * len(names)))
  pick = np.random.default_rng(seed).choice(len(names), size=k, replace=False)
  return [names[i] for i in sorted(pick)]


def keep_usable(listed, excluded: dict[str, str], on_disk, report: common.Report | None = None) -> list[str]:
  """The names of `listed` that are neither excluded (name -> reason) nor missing (`on_disk(name)` false); the
  others are counted in the report by reason (`not_on_disk` for missing ones)."""
  names = []
  for name in listed:
    reason = excluded.get(name)
    if reason is None and not on_disk(name):
      reason = "not_on_disk"
    if reason is None:
      names.append(name)
    elif report is not None:
      report.excluded[reason] += 1
  return names


class BigEarthNet:

  def __init__(self, root: str, lists_dir: str | None = None):
    for sub in ("BigEarthNet-v1.0", "BigEarthNet-S2-Example"):
      if os.path.isdir(os.path.join(root, sub)):
        root = os.path.join(root, sub)
    common.require_dir(root, "BigEarthNet-S2 v1.0")
    self.root = root
    self.lists_dir = lists_dir
    self.excluded = {}
    for key in ("cloud_and_shadow", "seasonal_snow", "no_19_class_targets"):
      for name in common.read_name_list(find_list(lists_dir, key)):
        self.excluded.setdefault(name, key)

  def exclusion_reason(self, name: str) -> str | None:
    return self.excluded.get(name)

  def split_names(
      self, split: str, report: common.Report | None = None, subset_fraction: float = 1.0, subset_seed: int = 0
  ) -> list[str]:
    """Patches of an official BEN-19 split that are present under root, minus the exclusion lists.

    Patches listed but absent on disk are counted in the report (`not_on_disk`) so a partial download is
    visible; a patch folder that exists but is broken is an error at read time.
    """
    if split not in SPLITS:
      raise ValueError(f"unknown BigEarthNet split {split!r}; choose from {SPLITS}")
    listed = common.read_name_list(find_list(self.lists_dir, split))
    on_disk = set(os.listdir(self.root))
    names = keep_usable(listed, self.excluded, on_disk.__contains__, report)
    return seeded_subset(names, subset_fraction, subset_seed) if subset_fraction < 1 else names

  def require_nonempty(self, splits: dict[str, list[str]]) -> None:
    """Raise DataError when a split has no patch on disk: an empty "prepared" dataset would otherwise be written
    (and later reused), and training would fail much later without saying why. Names the root, a few expected
    patch folders, and what the root looks like instead (BigEarthNet v2.0 / reBEN, or one level too high)."""
    empty = [split for split, names in splits.items() if not names]
    if not empty:
      return
    expected = common.read_name_list(find_list(self.lists_dir, empty[0]))[:3]
    entries = sorted(os.listdir(self.root))
    if "metadata.parquet" in entries or "BigEarthNet-S2" in entries:
      hint = ("this is the BigEarthNet v2.0 (reBEN) layout (metadata.parquet, BigEarthNet-S2/<tile>/<patch>): "
              "prepare it with --dataset bigearthnet_v2")
    elif entries and all(os.path.isdir(os.path.join(self.root, e)) for e in entries) and len(entries) <= 5:
      hint = (f"it holds only {', '.join(entries)}: is --manual_dir one level too high? point it at the folder "
              "that holds the patch folders")
    else:
      hint = f"it holds {len(entries)} entries, none of them a listed patch"
    raise DataError(f"{self.root}: no patch of BigEarthNet split(s) {', '.join(empty)} is there (expected folders "
                    f"such as {', '.join(expected)}); {hint}")

  def read_labels(self, name: str) -> np.ndarray:
    path = os.path.join(self.root, name, f"{name}_labels_metadata.json")
    if not os.path.exists(path):
      raise DataError(f"{path}: label file not found")
    try:
      with open(path, encoding="utf-8") as f:
        labels = json.load(f)["labels"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise DataError(f"{path}: not a BigEarthNet labels json ({e})") from e
    return multi_hot_19(labels, path)

  def read_image(self, name: str) -> np.ndarray:
    """uint16 [120, 120, 12] in canonical band order."""
    out = []
    for b in bandlib.CANONICAL:
      path = os.path.join(self.root, name, f"{name}_{b}.tif")
      n = NATIVE_SIZE[b]
      band = common.read_tif(path, ndim=2, shape=(n, n))
      if n != PATCH_SIZE:
        band = common.to_uint16(common.resample_bilinear(band, (PATCH_SIZE, PATCH_SIZE)))
      out.append(band)
    return np.stack(out, axis=-1)

  def read(self, name: str) -> dict:
    labels = self.read_labels(name)
    if not labels.any():
      raise DataError(f"{os.path.join(self.root, name)}: no label maps to the 19-class nomenclature")
    return {"image": self.read_image(name), "labels": labels, "id": name}
