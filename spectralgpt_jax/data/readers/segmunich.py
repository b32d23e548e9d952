"""SegMunich `TUM_128` reader: `dataset/{train,test}.txt`, `{train,test}/img/<id>.tif` (128x128x10 uint16),
`{train,test}/label/<id>.tif` (raw class codes).

The 10 bands are B01..B07,B8A,B11,B12 (no B08/B09/B10); images are stored with just those bands, in canonical
order, and the pipeline fills B08/B09 with the missing-band policy (the reference: per-pixel band mean).
Labels: the reference remaps the raw codes 21->1, 22->2, 23->3, 31->4, 32->6, 33->7, 41->8, 13->9, 14->10 and keeps
0, 5, 11, 12, giving 13 classes 0..12. Any other raw code is an error naming the file.
"""

from __future__ import annotations

import os

import numpy as np

from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.data.readers import common
from spectralgpt_jax.data.readers.common import DataError

BANDS = bandlib.ON_DISK["segmunich"]
RAW_TO_CLASS = {0: 0, 5: 5, 11: 11, 12: 12, 21: 1, 22: 2, 23: 3, 31: 4, 32: 6, 33: 7, 41: 8, 13: 9, 14: 10}
CLASSES = (
    "Background",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Forests",
    "Surface water",
    "Shrub",
    "Open spaces",
    "Wetlands",
    "Mine, dump",
    "Artificial vegetation",
    "Urban fabric",
    "Buildings",
)
SIZE = 128
SPLITS = ("train", "test")
_LUT = np.full(256, 255, np.uint8)
for _raw, _cls in RAW_TO_CLASS.items():
  _LUT[_raw] = _cls


def remap_labels(raw: np.ndarray, where: str) -> np.ndarray:
  if raw.max() > 255 or (_LUT[raw.astype(np.int64)] == 255).any():
    bad = sorted(set(np.unique(raw).tolist()) - set(RAW_TO_CLASS))
    raise DataError(f"{where}: unknown SegMunich label code(s) {bad}")
  return _LUT[raw.astype(np.int64)]


class SegMunich:

  def __init__(self, root: str):
    if os.path.isdir(os.path.join(root, "TUM_128")):
      root = os.path.join(root, "TUM_128")
    common.require_dir(root, "SegMunich TUM_128")
    self.root = root

  def ids(self, split: str) -> list[str]:
    path = os.path.join(self.root, "dataset", f"{split}.txt")
    if not os.path.exists(path):
      raise DataError(f"{path}: SegMunich split list not found")
    with open(path, encoding="utf-8") as f:
      ids = [os.path.splitext(line.strip())[0] for line in f if line.strip()]
    if not ids:
      raise DataError(f"{path}: split list is empty")
    return [f"{split}/{i}" for i in ids]

  def read(self, key: str) -> dict:
    split, name = key.split("/", 1)
    img_path = os.path.join(self.root, split, "img", f"{name}.tif")
    lab_path = os.path.join(self.root, split, "label", f"{name}.tif")
    image = common.read_tif(img_path, ndim=3, shape=(SIZE, SIZE), bands=len(BANDS))
    raw = common.read_tif(lab_path, shape=(SIZE, SIZE))
    if raw.ndim == 3 and raw.shape[-1] in (3, 4):  # a palette label saved as RGB(A): all channels must agree
      if not (raw[..., :3] == raw[..., :1]).all():
        raise DataError(f"{lab_path}: RGB label with differing channels; expected one class code per pixel")
      raw = raw[..., 0]
    if raw.ndim != 2:
      raise DataError(f"{lab_path}: expected a single-band label, got shape {raw.shape}")
    return {
        "image": bandlib.reorder(image, BANDS, bandlib.canonical_subset(BANDS)),
        "mask": remap_labels(raw, lab_path),
        "id": name,
    }
