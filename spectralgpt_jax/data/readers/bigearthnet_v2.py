"""BigEarthNet v2.0 (reBEN) reader: `metadata.parquet` + `BigEarthNet-S2/<tile>/<patch>/<patch>_<band>.tif` x12,
optionally `Reference_Maps/<tile>/<patch>/<patch>_reference_map.tif`.

What we rely on (sources in docs/data.md, section "BigEarthNet v2.0 (reBEN)"):
* `metadata.parquet`, one row per patch: `patch_id` (the S2 patch folder name), `labels` (a list of BEN-19 class
  names, used as they are), `split` ("train" | "validation" | "test": reBEN's geographic split). The release also
  has `country`, `s1_name`, `s2v1_name`, `contains_seasonal_snow`, `contains_cloud_or_shadow`; only the first three
  are required. "validation" becomes our `val`.
* Exclusions: the release keeps the patches with seasonal snow or cloud/shadow out of `metadata.parquet` (its flags
  are all False) and lists them, flags set, in `metadata_for_patches_with_snow_cloud_or_shadow.parquet`. Flagged
  rows of either file are dropped and counted by reason in the report (v1's reason names); without flag columns
  and without that file nothing can be excluded for snow or clouds, which is logged.
* Folders: the tile folder is the patch id without its last two `_` fields (as torchgeo's BigEarthNetV2).
* Bands: one single-band GeoTIFF per band (no B10). Whatever size a band is stored at, it is brought to the 120 px
  10 m grid with v1's bilinear, pixel-area aligned resampling (a band must be square: every band covers the same
  1.2 km patch). Sen2cor L2A digital numbers are unsigned 16-bit; any integer file whose values fit uint16 (e.g.
  int16 without negatives, as the torchgeo-made fixture) is read losslessly, a negative value is an error.
* Reference maps: one band of CORINE Land Cover Level-3 codes (111 ... 523) per 10 m pixel. We map each code with
  v1's official 43 -> 19 table to a BEN-19 class index; codes without a 19-class target (e.g. 122 roads, 332 bare
  rock) and any value that is not a CLC code (unlabelled pixels) become IGNORE (255).
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.data.readers import bigearthnet as v1
from spectralgpt_jax.data.readers import common
from spectralgpt_jax.data.readers.common import DataError

METADATA = "metadata.parquet"
FLAGGED_METADATA = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"
S2_DIR, MAPS_DIR = "BigEarthNet-S2", "Reference_Maps"
REQUIRED_COLUMNS = ("patch_id", "labels", "split")
# Flag column -> reason in the report (v1's names, so the two builders' reports read alike).
FLAGS = {"contains_cloud_or_shadow": "cloud_and_shadow", "contains_seasonal_snow": "seasonal_snow"}
FLAGGED_FILE_REASON = "snow_cloud_or_shadow"   # a row of the flagged file whose flags do not say which
SPLIT_VALUES = {"train": "train", "validation": "val", "val": "val", "test": "test"}
SPLITS = v1.SPLITS
PATCH_SIZE = v1.PATCH_SIZE
IGNORE = 255   # reference_map value of pixels without a 19-class label

# CORINE Land Cover Level-3 code -> BigEarthNet's 43-class name (v1.LABEL_43_TO_19 keys; 335 has no BEN class).
CLC_CODES = {
    111: "Continuous urban fabric", 112: "Discontinuous urban fabric", 121: "Industrial or commercial units",
    122: "Road and rail networks and associated land", 123: "Port areas", 124: "Airports",
    131: "Mineral extraction sites", 132: "Dump sites", 133: "Construction sites", 141: "Green urban areas",
    142: "Sport and leisure facilities", 211: "Non-irrigated arable land", 212: "Permanently irrigated land",
    213: "Rice fields", 221: "Vineyards", 222: "Fruit trees and berry plantations", 223: "Olive groves",
    231: "Pastures", 241: "Annual crops associated with permanent crops", 242: "Complex cultivation patterns",
    243: "Land principally occupied by agriculture, with significant areas of natural vegetation",
    244: "Agro-forestry areas", 311: "Broad-leaved forest", 312: "Coniferous forest", 313: "Mixed forest",
    321: "Natural grassland", 322: "Moors and heathland", 323: "Sclerophyllous vegetation",
    324: "Transitional woodland/shrub", 331: "Beaches, dunes, sands", 332: "Bare rock",
    333: "Sparsely vegetated areas", 334: "Burnt areas", 335: "Glaciers and perpetual snow", 411: "Inland marshes",
    412: "Peatbogs", 421: "Salt marshes", 422: "Salines", 423: "Intertidal flats", 511: "Water courses",
    512: "Water bodies", 521: "Coastal lagoons", 522: "Estuaries", 523: "Sea and ocean",
}  # fmt: skip


def _clc_lookup() -> np.ndarray:
  lut = np.full(1000, IGNORE, np.uint8)
  for code, name in CLC_CODES.items():
    target = v1.LABEL_43_TO_19.get(name)
    if target is not None:
      lut[code] = v1.LABELS_19.index(target)
  return lut


CLC_TO_19 = _clc_lookup()


def clc_to_19(codes: np.ndarray) -> np.ndarray:
  """uint8 BEN-19 class indices (IGNORE where a pixel has none) of a map of CLC codes."""
  codes = np.asarray(codes, np.int64)
  inside = (codes >= 0) & (codes < len(CLC_TO_19))
  return np.where(inside, CLC_TO_19[np.clip(codes, 0, len(CLC_TO_19) - 1)], IGNORE).astype(np.uint8)


def tile_of(patch_id: str) -> str:
  return patch_id.rsplit("_", 2)[0]


def find_root(path: str) -> str:
  """The folder holding metadata.parquet: `path`, its parent when `path` is BigEarthNet-S2/ itself, or the one
  subfolder of `path` that holds it (an archive extracted into its own folder)."""
  common.require_dir(path, "BigEarthNet v2.0 manual_dir")
  if os.path.isfile(os.path.join(path, METADATA)):
    return path
  parent = os.path.dirname(os.path.abspath(path))
  if os.path.basename(os.path.normpath(path)) == S2_DIR and os.path.isfile(os.path.join(parent, METADATA)):
    return parent
  entries = sorted(os.listdir(path))
  found = [e for e in entries if os.path.isfile(os.path.join(path, e, METADATA))]
  if len(found) > 1:
    raise DataError(f"{path}: several BigEarthNet v2.0 folders ({', '.join(found)}); point --manual_dir at one")
  if found:
    return os.path.join(path, found[0])
  hint = ""
  if "BigEarthNet-v1.0" in entries or any(e.endswith("_labels_metadata.json") for e in entries):
    hint = "; this looks like BigEarthNet-S2 v1.0: prepare it with --dataset bigearthnet"
  elif S2_DIR in entries:
    hint = f"; {S2_DIR}/ is there: download metadata.parquet (https://zenodo.org/records/10891137) next to it"
  raise DataError(f"{os.path.join(path, METADATA)}: not found (BigEarthNet v2.0 has metadata.parquet beside "
                  f"{S2_DIR}/<tile>/<patch>/){hint}")


def read_metadata(path: str) -> tuple[dict[str, list], list[str]]:
  """(the required and flag columns as lists, the flag columns the file lacks). Errors name file and column."""
  import pyarrow.parquet as pq

  try:
    table = pq.read_table(path)
  except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for truncated or non-parquet files
    raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from e
  missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
  if missing:
    raise DataError(f"{path}: missing column(s) {', '.join(missing)} (it has {', '.join(table.column_names)})")
  present = [c for c in REQUIRED_COLUMNS + tuple(FLAGS) if c in table.column_names]
  return table.select(present).to_pydict(), [f for f in FLAGS if f not in table.column_names]


class BigEarthNetV2:
  """Rows of metadata.parquet (validated when constructed), split listing and per-patch reading."""

  def __init__(self, root: str, reference_maps: bool = False):
    self.root = find_root(root)
    self.s2_root = os.path.join(self.root, S2_DIR)
    self.maps_root = os.path.join(self.root, MAPS_DIR)
    self.metadata_path = os.path.join(self.root, METADATA)
    self.reference_maps = reference_maps
    if reference_maps and not os.path.isdir(self.maps_root):
      raise DataError(f"{self.maps_root}: folder not found (extract Reference_Maps.tar.zst here for the "
                      "reference_maps config)")
    self.labels: dict[str, tuple[int, ...]] = {}   # patch id -> BEN-19 indices
    self.by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
    self.excluded: dict[str, str] = {}              # patch id -> reason
    lacks = self._add_rows(self.metadata_path, flagged_file=False)
    flagged = os.path.join(self.root, FLAGGED_METADATA)
    if os.path.isfile(flagged):
      self._add_rows(flagged, flagged_file=True)
    elif lacks:
      logging.warning("%s has no column(s) %s and %s is absent: no patch is excluded for snow, cloud or shadow",
                      self.metadata_path, ", ".join(lacks), FLAGGED_METADATA)
    self._listing: dict[str, set[str]] = {}        # tile folder -> patch folders on disk

  def _add_rows(self, path: str, flagged_file: bool) -> list[str]:
    cols, lacks = read_metadata(path)
    for i, pid in enumerate(cols["patch_id"]):
      where = f"{path}: row {i} (patch_id {pid!r})"
      if not isinstance(pid, str) or not pid:
        raise DataError(f"{path}: row {i}: column 'patch_id' is empty")
      if pid in self.labels:
        raise DataError(f"{where}: patch listed twice (in {METADATA} / {FLAGGED_METADATA})")
      split = cols["split"][i]
      if split not in SPLIT_VALUES:
        raise DataError(f"{where}: column 'split' has {split!r}; expected train, validation or test")
      names = cols["labels"][i]
      if names is None or isinstance(names, str):
        raise DataError(f"{where}: column 'labels' must be a list of BEN-19 class names, got {names!r}")
      unknown = [n for n in names if n not in v1.LABELS_19]
      if unknown:
        raise DataError(f"{where}: column 'labels' has unknown BigEarthNet-19 class name(s) {unknown}")
      reason = None
      for flag, why in FLAGS.items():
        value = cols[flag][i] if flag in cols else False
        if value is None:
          raise DataError(f"{where}: column {flag!r} is null; expected true or false")
        if value and reason is None:
          reason = why
      if flagged_file and reason is None:
        reason = FLAGGED_FILE_REASON
      self.labels[pid] = tuple(sorted(v1.LABELS_19.index(n) for n in set(names)))
      self.by_split[SPLIT_VALUES[split]].append(pid)
      if reason is not None:
        self.excluded[pid] = reason
    return lacks

  def patch_dir(self, pid: str) -> str:
    return os.path.join(self.s2_root, tile_of(pid), pid)

  def _on_disk(self, pid: str) -> bool:
    tile = tile_of(pid)
    if tile not in self._listing:   # one listdir per tile folder instead of a stat per patch
      folder = os.path.join(self.s2_root, tile)
      self._listing[tile] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    return pid in self._listing[tile]

  def split_names(
      self, split: str, report: common.Report | None = None, subset_fraction: float = 1.0, subset_seed: int = 0
  ) -> list[str]:
    """Patches of an official split that are on disk and not flagged, in metadata order. Flagged and absent
    patches are counted in the report (`not_on_disk`: a partial download is visible, not fatal)."""
    if split not in SPLITS:
      raise ValueError(f"unknown BigEarthNet v2.0 split {split!r}; choose from {SPLITS}")
    names = v1.keep_usable(self.by_split[split], self.excluded, self._on_disk, report)
    return v1.seeded_subset(names, subset_fraction, subset_seed) if subset_fraction < 1 else names

  def require_nonempty(self, splits: dict[str, list[str]]) -> None:
    """DataError when a split has no usable patch (an empty "prepared" dataset would be written and reused),
    naming what its rows became."""
    empty = [split for split, names in splits.items() if not names]
    if not empty:
      return
    listed = self.by_split[empty[0]]
    if not listed:
      raise DataError(f"{self.metadata_path}: no row has split {empty[0]!r} (column 'split'; "
                      f"splits without patches: {', '.join(empty)})")
    flagged = sum(pid in self.excluded for pid in listed)
    if os.path.isdir(self.s2_root):
      what = f"{flagged} are flagged for snow/cloud/shadow and {len(listed) - flagged} not on disk"
    else:
      what = f"none is on disk: {self.s2_root} is missing (extract BigEarthNet-S2.tar.zst here)"
    expected = [os.path.relpath(self.patch_dir(pid), self.root) for pid in listed[:3]]
    raise DataError(f"{self.root}: no usable patch of BigEarthNet v2.0 split(s) {', '.join(empty)}: of the "
                    f"{len(listed)} {empty[0]!r} rows of {METADATA}, {what} (expected folders such as "
                    f"{', '.join(expected)})")

  def read_band(self, path: str) -> np.ndarray:
    band = common.read_tif(path, ndim=2)
    if band.shape[0] != band.shape[1]:
      raise DataError(f"{path}: expected a square band (every band covers the same 1.2 km patch), got {band.shape}")
    if band.shape != (PATCH_SIZE, PATCH_SIZE):
      band = common.to_uint16(common.resample_bilinear(band, (PATCH_SIZE, PATCH_SIZE)))
    return band

  def read_image(self, pid: str) -> np.ndarray:
    """uint16 [120, 120, 12] in canonical band order."""
    folder = self.patch_dir(pid)
    return np.stack([self.read_band(os.path.join(folder, f"{pid}_{b}.tif")) for b in bandlib.CANONICAL], axis=-1)

  def read_reference_map(self, pid: str) -> np.ndarray:
    """uint8 [120, 120] BEN-19 class indices, IGNORE where a pixel has none."""
    path = os.path.join(self.maps_root, tile_of(pid), pid, f"{pid}_reference_map.tif")
    codes = common.read_tif(path, ndim=2)
    if codes.shape[0] != codes.shape[1]:
      raise DataError(f"{path}: expected a square map, got {codes.shape}")
    if codes.shape[0] != PATCH_SIZE:  # nearest neighbour, pixel-area aligned: codes must not be blended
      idx = ((np.arange(PATCH_SIZE) + 0.5) * codes.shape[0] / PATCH_SIZE).astype(np.int64)
      codes = codes[np.ix_(idx, idx)]
    return clc_to_19(codes)

  def read(self, pid: str) -> dict:
    indices = self.labels[pid]
    if not indices:
      raise DataError(f"{self.metadata_path}: patch_id {pid!r} has no label (column 'labels')")
    labels = np.zeros(len(v1.LABELS_19), np.uint8)
    labels[list(indices)] = 1
    out = {"image": self.read_image(pid), "labels": labels, "id": pid}
    if self.reference_maps:
      out["reference_map"] = self.read_reference_map(pid)
    return out
