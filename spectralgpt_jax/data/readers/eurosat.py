"""EuroSAT-MS reader: 64x64x13 uint16 GeoTIFFs, one folder per class, from a folder or a zip.

Layouts accepted (anywhere inside the folder/zip): the Zenodo `EuroSAT_MS/<Class>/<Class>_<n>.tif` and the old
`ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<Class>/<Class>_<n>.tif`. A tif is recognised by its
parent folder name; a tif under a folder that is not one of the 10 classes is an error (unknown class name).

The files store the bands as B01..B12 then **B8A last**; we reorder by name to canonical and drop B10.

Splits: EuroSAT has no official split. Split files next to the data are recognised by name (SPLIT_SCHEMES):
  * `neumann`: Neumann et al. / torchgeo `eurosat-{train,val,test}.txt` (lines `<Class>_<n>.jpg` or `.tif`),
  * `spectralgpt`: SpectralGPT's `train_euro_result.txt` / `val_euro_result.txt`
    (lines `tif/<Class>/<Class>_<n>.tif  <label>`),
  * `spatial`: torchgeo's EuroSATSpatial `eurosat-spatial-*.txt` (by longitude), used only when selected,
  * `eurosat100`: torchgeo's EuroSAT100 `eurosat-100-*.txt` (a 100-image test subset), used only when selected.
Without a choice the first complete one of AUTO_PRIORITY is used and the others are named in a warning; with none
everything goes to a single `train` split (as tfds's `eurosat`), also with a warning. A partial set of files, an
image in two splits or twice in one, and a standard file whose md5 differs from torchgeo's are errors.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
FULL_SIZE = 27000  # images in EuroSAT-MS; the published torchgeo lists cover exactly these


@dataclasses.dataclass(frozen=True)
class SplitScheme:
  files: dict  # split -> file name
  what: str  # for messages
  md5: dict | None = None  # split -> torchgeo's published md5 (None: nothing published)
  size: int = FULL_SIZE  # how many images the published lists are for


# md5s: torchgeo/datasets/eurosat.py, `split_md5s` of EuroSAT, EuroSATSpatial and EuroSAT100 (torchgeo 0.6, files
# at hf.co/datasets/torchgeo/eurosat rev 1ce6f1bf); later torchgeo versions publish sha256s of the same files.
SPLIT_SCHEMES = {
    "neumann": SplitScheme(
        {s: f"eurosat-{s}.txt" for s in ("train", "val", "test")}, "the Neumann et al. / torchgeo standard split",
        md5={"train": "908f142e73d6acdf3f482c5e80d851b1", "val": "95de90f2aa998f70a3b2416bfe0687b4",
             "test": "7ae5ab94471417b6e315763121e67c5f"}),
    "spectralgpt": SplitScheme(
        {"train": "train_euro_result.txt", "val": "val_euro_result.txt"}, "SpectralGPT's split"),
    "spatial": SplitScheme(
        {s: f"eurosat-spatial-{s}.txt" for s in ("train", "val", "test")},
        "torchgeo's EuroSATSpatial split (60/20/20 by longitude, an alternative to the standard split)",
        md5={"train": "7be3254be39f23ce4d4d144290c93292", "val": "acf392290050bb3df790dc8fc0ebf193",
             "test": "5ec1733f9c16116bf0aa2d921fc613ef"}),
    "eurosat100": SplitScheme(
        {s: f"eurosat-100-{s}.txt" for s in ("train", "val", "test")},
        "torchgeo's EuroSAT100 split (a 100-image subset for tutorials and tests, not a benchmark)",
        md5={"train": "033d0c23e3a75e3fa79618b0e35fe1c7", "val": "3e3f8b3c344182b8d126c4cc88f3f215",
             "test": "f908f151b950f270ad18e61153579794"}, size=100),
}
# Used without split_scheme=..., in this order: the benchmark split first (as before), then the reference's.
AUTO_PRIORITY = ("neumann", "spectralgpt")
ALL_TRAIN = "all_train"  # split_scheme when no split file is used: everything in `train`
SHOWN = 5  # stems quoted in overlap / duplicate errors


class EuroSAT:
  """`source` is a folder or a .zip. `split_dir` holds optional split files (defaults to the source's folder).

  `split_scheme`: one of SPLIT_SCHEMES or ALL_TRAIN, None = the first complete one of AUTO_PRIORITY.
  `verify_split_md5`: True = a split file with a published md5 must match it; False = not checked; None = checked
  when the source holds all the images the published lists are for (a smaller source, e.g. a test tree, cannot
  use the published lists anyway: it gets a warning). After `splits()`, `split_scheme` is the scheme used and
  `split_report` says which files, their md5s and what was ignored (for the prepare report)."""

  def __init__(self, source: str, split_dir: str | None = None, split_scheme: str | None = None,
               verify_split_md5: bool | None = None):
    if split_scheme is not None and split_scheme not in (*SPLIT_SCHEMES, ALL_TRAIN):
      raise ValueError(f"split_scheme={split_scheme!r}: expected one of {', '.join((*SPLIT_SCHEMES, ALL_TRAIN))} "
                       "or None (automatic)")
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
    self.requested_scheme = split_scheme
    self.verify_split_md5 = verify_split_md5
    self.split_scheme: str | None = None  # set by splits()
    self.split_report: dict = {}

  def __getstate__(self):  # zip handles are not picklable; reopen lazily
    return {**self.__dict__, "_zip": None, "_reopen": self._zip is not None}

  def __setstate__(self, state):
    reopen = state.pop("_reopen")
    self.__dict__.update(state)
    if reopen:
      self._zip = zipfile.ZipFile(self.source)

  def splits(self) -> dict[str, list[str]]:
    """split name -> file stems, from the chosen split files, else {'train': everything} (see the class doc)."""
    present = {}  # scheme -> {split: path} of its files that exist
    for name, scheme in SPLIT_SCHEMES.items():
      paths = {s: os.path.join(self.split_dir, f) for s, f in scheme.files.items()}
      if any(os.path.exists(p) for p in paths.values()):
        present[name] = {s: p for s, p in paths.items() if os.path.exists(p)}
    chosen = self._choose_scheme(present)
    ignored = sorted(set(present) - {chosen})
    if ignored:
      logging.warning("EuroSAT: split scheme %s; ignoring the %s split files in %s (select with split_scheme=...)",
                      chosen, ", ".join(f"{n} ({_names(present[n])})" for n in ignored), self.split_dir)
    self.split_scheme = chosen
    self.split_report = {"scheme": chosen, "split_dir": self.split_dir, "ignored": ignored, "files": {}}
    if chosen == ALL_TRAIN:
      if self.requested_scheme is None:
        logging.warning("EuroSAT: no split files in %s; putting all %d images in 'train'", self.split_dir,
                        len(self.files))
      return {"train": sorted(self.files)}
    logging.info("EuroSAT: split scheme %s (%s) from %s", chosen, SPLIT_SCHEMES[chosen].what, self.split_dir)
    out = {}
    for split, path in present[chosen].items():
      self.split_report["files"][split] = {"file": path, "md5": self._check_md5(chosen, split, path)}
      out[split] = self._read_split(path)
    _refuse_overlaps(out, present[chosen])
    return out

  def _choose_scheme(self, present: dict) -> str:
    """The scheme to use: the requested one (it must be complete), else the first complete of AUTO_PRIORITY."""
    missing = {n: [os.path.join(self.split_dir, f) for s, f in SPLIT_SCHEMES[n].files.items() if s not in paths]
               for n, paths in present.items()}
    want = self.requested_scheme
    if want == ALL_TRAIN:
      return want
    if want is not None:
      if want not in present:
        raise DataError(f"{self.split_dir}: split_scheme={want!r} but none of its files "
                        f"({', '.join(SPLIT_SCHEMES[want].files.values())}) is there")
      if missing[want]:
        raise DataError(f"{', '.join(missing[want])}: missing; the other {want} split files "
                        f"({_names(present[want])}) are there")
      return want
    for name, paths in missing.items():
      if paths:  # a partial download must not quietly become another split or 'all in train'
        raise DataError(f"{', '.join(paths)}: missing; the other {name} split files ({_names(present[name])}) "
                        "are there: add the missing ones or remove these")
    complete = [n for n in AUTO_PRIORITY if n in present]
    if complete:
      return complete[0]
    if present:  # only files that are used only on request: saying nothing would make them 'all in train'
      name = next(iter(present))
      raise DataError(f"{self.split_dir}: {_names(present[name])} are {SPLIT_SCHEMES[name].what}; they are used "
                      f"only with split_scheme={name!r} (or add the standard {_names(SPLIT_SCHEMES['neumann'].files)})")
    return ALL_TRAIN

  def _check_md5(self, scheme: str, split: str, path: str) -> str:
    """The file's md5; an error (or, on a smaller source in automatic mode, a warning) if not the published one."""
    with open(path, "rb") as f:
      actual = hashlib.md5(f.read()).hexdigest()
    published = SPLIT_SCHEMES[scheme].md5
    if published is None or self.verify_split_md5 is False or actual == published[split]:
      return actual
    known = [f"{n} {s}" for n, sc in SPLIT_SCHEMES.items() if sc.md5 for s, m in sc.md5.items() if m == actual]
    msg = (f"{path}: md5 {actual}, expected {published[split]} (torchgeo's {scheme} {split} list)"
           + (f"; it is torchgeo's {known[0]} list" if known else "; edited, truncated or another split"))
    size = SPLIT_SCHEMES[scheme].size
    if self.verify_split_md5 is None and len(self.files) < size:
      logging.warning("EuroSAT: %s; accepted: the source holds %d images, the published lists are for %d", msg,
                      len(self.files), size)
      return actual
    raise DataError(f"{msg}. Put the published file there, or pass verify_split_md5=False to use this one")

  def _read_split(self, path: str) -> list[str]:
    stems, lines = [], {}
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if line.strip():
          stem = os.path.splitext(os.path.basename(line.split()[0]))[0]
          if stem not in self.files:
            raise DataError(f"{path}: lists {stem!r}, which is not in {self.source}")
          lines.setdefault(stem, []).append(n)
          stems.append(stem)
    dups = {s: ln for s, ln in lines.items() if len(ln) > 1}
    if dups:  # a repeated image would be weighted twice in training or evaluation
      shown = ", ".join(f"{s} (lines {', '.join(map(str, ln))})" for s, ln in list(dups.items())[:SHOWN])
      raise DataError(f"{path}: {len(dups)} image(s) listed more than once: {shown}")
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


def _names(paths) -> str:
  return ", ".join(os.path.basename(p) for p in paths.values())


def _refuse_overlaps(splits: dict[str, list[str]], paths: dict[str, str]) -> None:
  """An image in two splits would leak training data into evaluation."""
  names = list(splits)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      both = sorted(set(splits[a]) & set(splits[b]))
      if both:
        raise DataError(f"{paths[a]} and {paths[b]}: {len(both)} image(s) in both {a} and {b}: "
                        f"{', '.join(both[:SHOWN])}{', ...' if len(both) > SHOWN else ''}")


def _walk(root: str) -> list[str]:
  out = []
  for d, _, files in os.walk(root):
    out += [os.path.relpath(os.path.join(d, f), root) for f in files]
  return sorted(out)
