"""EuroSAT-MS reader: 64x64x13 uint16 GeoTIFFs, one folder per class, from a folder or a zip.

Layouts accepted (anywhere inside the folder/zip): the Zenodo `EuroSAT_MS/<Class>/<Class>_<n>.tif` and the old
`ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>/<Class>_<n>.tif`. A tif is recognised by its
parent folder name; a tif under a folder that is not one of the 10 classes is an error (unknown class name).

The files store the bands as B01..B12 then **B8A last**; we reorder by name to canonical and drop B10.

Splits: EuroSAT has no official split. If split files sit next to the data we use them:
  * Neumann et al. / torchgeo `eurosat-{train,val,test}.txt` (lines `<Class>_<n>.jpg` or `.tif`), or
  * SpectralGPT's `train_euro_result.txt` / `val_euro_result.txt` (lines `tif/<Class>/<Class>_<n>.tif  <label>`).
Otherwise everything goes to a single `train` split (as tfds's `eurosat`), and a warning says so.
"""

from __future__ import annotations

import logging
import os
import zipfile

from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.data.readers import common
from spectralgpt_jax.data.readers.common import DataError

# The archives EuroSAT-MS (13-band GeoTIFFs) is distributed as: Zenodo's and torchgeo's. Others that match
# "*eurosat*.zip" are not it: EuroSAT.zip holds the RGB JPEGs, EuroSAT100.zip a 100-image test subset.
MS_ARCHIVES = ("EuroSAT_MS.zip", "EuroSATallBands.zip")


def find_source(root: str) -> str:
  """The EuroSAT-MS archive in `root` (exactly one of MS_ARCHIVES), else `root` itself (an extracted folder).

  Other EuroSAT zips are ignored with a warning when `root` holds extracted GeoTIFFs, else an error names them;
  two multispectral archives are an error (which one was meant cannot be guessed)."""
  zips = sorted(f for f in os.listdir(root) if f.lower().endswith(".zip") and "eurosat" in f.lower())
  known = {a.lower() for a in MS_ARCHIVES}
  archives = [f for f in zips if f.lower() in known]
  others = [f for f in zips if f.lower() not in known]
  if len(archives) > 1:
    raise DataError(f"{root}: several EuroSAT-MS archives ({', '.join(archives)}); keep one of them")
  if archives:
    if others:
      logging.warning("%s: using %s, ignoring %s (not the multispectral archive)", root, archives[0], ", ".join(others))
    return os.path.join(root, archives[0])
  if others:
    has_tifs = any(f.lower().endswith((".tif", ".tiff")) for _, _, files in os.walk(root) for f in files)
    if not has_tifs:
      raise DataError(f"{root}: {', '.join(others)} is not the EuroSAT-MS (13-band) archive: EuroSAT.zip holds RGB "
                      f"JPEGs, EuroSAT100.zip a 100-image subset; put one of {', '.join(MS_ARCHIVES)} (or its "
                      "extracted folder) there")
    logging.warning("%s: reading the extracted GeoTIFFs, ignoring %s", root, ", ".join(others))
  return root


CLASSES = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)  # label id = alphabetical index, as tfds and the reference
SIZE = 64
SPLIT_FILES = {
    "neumann": {s: f"eurosat-{s}.txt" for s in ("train", "val", "test")},
    "spectralgpt": {"train": "train_euro_result.txt", "val": "val_euro_result.txt"},
}


class EuroSAT:
  """`source` is a folder or a .zip. `split_dir` holds optional split files (defaults to the source's folder)."""

  def __init__(self, source: str, split_dir: str | None = None):
    self.source = source
    if not os.path.exists(source):
      raise DataError(f"{source}: EuroSAT-MS folder or zip not found")
    self._zip = zipfile.ZipFile(source) if zipfile.is_zipfile(source) else None
    members = self._zip.namelist() if self._zip else _walk(source)
    self.files = {}  # file stem -> relative path
    for rel in members:
      if not rel.lower().endswith(".tif") or "__MACOSX" in rel or os.path.basename(rel).startswith("._"):
        continue  # macOS zip resource forks are not images
      parent = rel.replace("\\", "/").split("/")[-2] if "/" in rel else ""
      if parent not in CLASSES:
        raise DataError(f"{os.path.join(source, rel)}: unknown EuroSAT class name {parent!r}")
      self.files[os.path.splitext(os.path.basename(rel))[0]] = rel
    if not self.files:
      raise DataError(f"{source}: no EuroSAT-MS .tif files found (empty or wrong folder)")
    self.split_dir = split_dir or (os.path.dirname(source) if self._zip else source)

  def __getstate__(self):  # zip handles are not picklable; reopen lazily
    return {**self.__dict__, "_zip": None, "_reopen": self._zip is not None}

  def __setstate__(self, state):
    reopen = state.pop("_reopen")
    self.__dict__.update(state)
    if reopen:
      self._zip = zipfile.ZipFile(self.source)

  def splits(self) -> dict[str, list[str]]:
    """split name -> file stems, from split files if present, else {'train': everything}."""
    for scheme, files in SPLIT_FILES.items():
      paths = {s: os.path.join(self.split_dir, f) for s, f in files.items()}
      if all(os.path.exists(p) for p in paths.values()):
        return {s: self._read_split(p) for s, p in paths.items()}
    logging.warning("EuroSAT: no split files in %s; putting all %d images in 'train'", self.split_dir, len(self.files))
    return {"train": sorted(self.files)}

  def _read_split(self, path: str) -> list[str]:
    stems = []
    with open(path, encoding="utf-8") as f:
      for line in f:
        if line.strip():
          stem = os.path.splitext(os.path.basename(line.split()[0]))[0]
          if stem not in self.files:
            raise DataError(f"{path}: lists {stem!r}, which is not in {self.source}")
          stems.append(stem)
    return stems

  def read(self, stem: str) -> dict:
    rel = self.files[stem]
    where = os.path.join(self.source, rel)
    data = self._zip.read(rel) if self._zip else os.path.join(self.source, rel)
    image = common.read_tif(data, name=where, ndim=3, shape=(SIZE, SIZE), bands=13)
    cls = rel.replace("\\", "/").split("/")[-2]
    return {
        "image": bandlib.reorder(image, bandlib.ON_DISK["eurosat"], bandlib.CANONICAL),
        "label": CLASSES.index(cls),
        "id": stem,
    }


def _walk(root: str) -> list[str]:
  out = []
  for d, _, files in os.walk(root):
    out += [os.path.relpath(os.path.join(d, f), root) for f in files]
  return sorted(out)
