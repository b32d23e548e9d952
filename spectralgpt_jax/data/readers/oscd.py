"""OSCD reader: city pairs `<Images>/<city>/imgs_{1,2}_rect/<band>.tif`, change maps `<city>/cm/cm.png`.

The `_rect` band files are already co-registered on one 10 m grid, so we read them as they are (the reference
zooms 20/60 m bands a second time and crops the top-left, misaligning them: docs/data.md). All bands of both
dates and the change map must have the same size; otherwise it is an error naming the file.
Labels are looked for in `<root>/Onera Satellite Change Detection dataset - {Train,Test} Labels/<city>/cm/cm.png`
and then in `<Images>/<city>/cm/cm.png` (the reference's merged layout). Splits: `train.txt`/`test.txt` in the
Images folder, one comma-separated line of city names; where one is missing, the cities of that split are the
subfolders of its `... - {Train,Test} Labels` folder (each with `cm/cm.png`), with a warning. A city in both
splits is an error.
"""

from __future__ import annotations

import logging
import os

import numpy as np
from PIL import Image

from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.data.readers import common
from spectralgpt_jax.data.readers.common import DataError

PREFIX = "Onera Satellite Change Detection dataset - "
SPLITS = ("train", "test")


class OSCD:

  def __init__(self, root: str):
    images = os.path.join(root, PREFIX + "Images")
    self.images = images if os.path.isdir(images) else root
    common.require_dir(self.images, "OSCD Images")
    self.root = root
    self._found = {}  # split -> (cities, source) or None

  def cities(self, split: str) -> list[str]:
    """The split's cities from `<split>.txt`, else from its labels folder; none found or a city in both: error."""
    found = self._find_cities(split)
    if found is None:
      raise DataError(f"{os.path.join(self.images, f'{split}.txt')}: OSCD city list not found, and no "
                      f"{self._labels_dir(split)} folder to take the {split} cities from")
    cities, where = found
    for other in SPLITS:
      theirs = self._find_cities(other) if other != split else None
      both = sorted(set(cities) & set(theirs[0] if theirs else ()))
      if both:  # a city in both would be trained on and evaluated on
        raise DataError(f"{where} and {theirs[1]}: city(ies) {', '.join(both)} in both {split} and {other}")
    return cities

  def _labels_dir(self, split: str) -> str:
    return os.path.join(self.root, f"{PREFIX}{split.title()} Labels")

  def _find_cities(self, split: str) -> tuple[list[str], str] | None:
    """(cities, where they came from), or None if neither `<split>.txt` nor the split's labels folder exists."""
    if split not in self._found:  # each split is looked up for the other's overlap check too: warn once
      self._found[split] = self._look_for_cities(split)
    return self._found[split]

  def _look_for_cities(self, split: str) -> tuple[list[str], str] | None:
    path = os.path.join(self.images, f"{split}.txt")
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        cities = [c.strip() for c in f.read().replace("\n", ",").split(",") if c.strip()]
      if not cities:
        raise DataError(f"{path}: city list is empty")
      dups = sorted({c for c in cities if cities.count(c) > 1})
      if dups:  # a repeated city would be stored (and weighted) twice
        raise DataError(f"{path}: city(ies) listed more than once: {', '.join(dups)}")
      return cities, path
    labels = self._labels_dir(split)
    if not os.path.isdir(labels):
      return None
    cities, broken = [], []
    for name in sorted(os.listdir(labels)):
      if name.startswith((".", "__MACOSX")) or not os.path.isdir(os.path.join(labels, name)):
        continue  # archive debris, not cities
      (cities if os.path.exists(os.path.join(labels, name, "cm", "cm.png")) else broken).append(name)
    if broken:  # skipping them would shrink the split without a word
      raise DataError(f"{labels}: city folder(s) without cm/cm.png: {', '.join(broken)}")
    if not cities:
      raise DataError(f"{labels}: no city folders (<city>/cm/cm.png) to take the {split} cities from")
    logging.warning("OSCD: %s not found; the %d %s cities are the folders of %s", path, len(cities), split, labels)
    return cities, labels

  def _label_path(self, city: str) -> str:
    for sub in (PREFIX + "Train Labels", PREFIX + "Test Labels"):
      p = os.path.join(self.root, sub, city, "cm", "cm.png")
      if os.path.exists(p):
        return p
    return os.path.join(self.images, city, "cm", "cm.png")

  def _read_date(self, city: str, date: int) -> np.ndarray:
    folder = os.path.join(self.images, city, f"imgs_{date}_rect")
    common.require_dir(folder, f"OSCD {city} date {date}")
    out, shape = [], None
    for b in bandlib.CANONICAL:
      path = os.path.join(folder, f"{b}.tif")
      band = common.read_tif(path, ndim=2, shape=shape)
      shape = band.shape
      out.append(band)
    return np.stack(out, axis=-1)

  def read(self, city: str) -> dict:
    image1, image2 = self._read_date(city, 1), self._read_date(city, 2)
    if image1.shape != image2.shape:
      raise DataError(
          f"{os.path.join(self.images, city)}: imgs_1_rect {image1.shape[:2]} and imgs_2_rect "
          f"{image2.shape[:2]} differ in size"
      )
    path = self._label_path(city)
    if not os.path.exists(path):
      raise DataError(f"{path}: OSCD change map not found")
    try:
      with Image.open(path) as im:
        cm = np.asarray(im.convert("L"))
    except OSError as e:
      raise DataError(f"{path}: unreadable change map ({e})") from e
    if cm.shape != image1.shape[:2]:
      raise DataError(f"{path}: change map {cm.shape} does not match the images {image1.shape[:2]}")
    return {"image1": image1, "image2": image2, "change": (cm != 0).astype(np.uint8), "id": city}
