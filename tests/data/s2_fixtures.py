"""Writes tiny trees in each dataset's real on-disk layout (numpy + tifffile, seeded, milliseconds).

Band files hold a distinct constant per band so reorders can be pinned: `band_value(name)` = 100 * (index of the
band in ALL_13 + 1), e.g. B01 -> 100, B8A -> 900, B10 -> 1100, B12 -> 1300, plus a small per-image offset so
examples differ.
"""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import tifffile
from PIL import Image

from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.data.readers import eurosat as eurosat_reader

REAL_BEN = os.path.join(os.path.dirname(__file__), "bigearthnet_s2_example")


def band_value(name: str, offset: int = 0) -> int:
  return 100 * (bandlib.ALL_13.index(name) + 1) + offset


def stack(bands, h, w, offset=0) -> np.ndarray:
  return np.stack([np.full((h, w), band_value(b, offset), np.uint16) for b in bands], axis=-1)


def tif_bytes(arr) -> bytes:
  buf = io.BytesIO()
  tifffile.imwrite(buf, arr)
  return buf.getvalue()


def write(path: str, data: bytes | str) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb" if isinstance(data, bytes) else "w") as f:
    f.write(data)
  return path


# ------------------------------------------------------------------------------------------------ EuroSAT
EUROSAT_CLASSES = ("AnnualCrop", "Forest", "SeaLake")


def eurosat(root: str, layout: str = "zenodo", as_zip: bool = False, per_class: int = 2, splits: bool = True):
  """EuroSAT_MS/<Class>/<Class>_<n>.tif (zenodo) or ds/images/.../tif/<Class>/... (old), B8A last."""
  prefix = "EuroSAT_MS" if layout == "zenodo" else "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"
  files = {}
  for ci, cls in enumerate(EUROSAT_CLASSES):
    for n in range(1, per_class + 1):
      files[f"{prefix}/{cls}/{cls}_{n}.tif"] = tif_bytes(stack(bandlib.ON_DISK["eurosat"], 64, 64, 10 * ci + n))
  os.makedirs(root, exist_ok=True)
  if as_zip:
    with zipfile.ZipFile(os.path.join(root, "EuroSAT_MS.zip"), "w") as z:
      for rel, data in files.items():
        z.writestr(rel, data)
  else:
    for rel, data in files.items():
      write(os.path.join(root, rel), data)
  if splits:  # Neumann format: <Class>_<n>.jpg
    write(os.path.join(root, "eurosat-train.txt"), "".join(f"{c}_1.jpg\n" for c in EUROSAT_CLASSES))
    write(os.path.join(root, "eurosat-val.txt"), "".join(f"{c}_2.jpg\n" for c in EUROSAT_CLASSES[:2]))
    write(os.path.join(root, "eurosat-test.txt"), f"{EUROSAT_CLASSES[2]}_2.jpg\n")
  return root


def eurosat_lists(root: str, files: dict) -> dict:
  """Writes split files {file name: stems}: SpectralGPT's line format for `*_euro_result.txt`, else Neumann's."""
  paths = {}
  for name, stems in files.items():
    if name.endswith("_euro_result.txt"):  # `tif/<Class>/<stem>.tif <label id>`
      classes = [s.rsplit("_", 1)[0] for s in stems]
      lines = [f"tif/{c}/{s}.tif {eurosat_reader.CLASSES.index(c)}\n" for c, s in zip(classes, stems)]
    else:
      lines = [f"{s}.jpg\n" for s in stems]
    paths[name] = write(os.path.join(root, name), "".join(lines))
  return paths


# ------------------------------------------------------------------------------------------------ BigEarthNet
BEN_PATCHES = {  # name -> 43-class labels
    "S2A_MSIL2A_20170613T101031_1_1": ["Rice fields", "Airports"],  # merge + dropped class
    "S2A_MSIL2A_20170613T101031_1_2": ["Sea and ocean", "Pastures"],
    "S2A_MSIL2A_20170613T101031_1_3": ["Airports", "Port areas"],  # all labels drop -> excluded
    "S2A_MSIL2A_20170613T101031_1_4": ["Coniferous forest"],  # in the snow list
    "S2A_MSIL2A_20170613T101031_1_5": ["Water bodies"],  # val
    "S2A_MSIL2A_20170613T101031_1_6": ["Mixed forest"],  # test
}


def bigearthnet(root: str, patches=None):
  patches = patches or BEN_PATCHES
  data = os.path.join(root, "BigEarthNet-v1.0")
  for i, (name, labels) in enumerate(patches.items()):
    for b in bandlib.CANONICAL:
      n = {10: 120, 20: 60, 60: 20}[bandlib.BANDS[b].gsd_m]
      write(os.path.join(data, name, f"{name}_{b}.tif"), tif_bytes(np.full((n, n), band_value(b, i), np.uint16)))
    write(
        os.path.join(data, name, f"{name}_labels_metadata.json"),
        json.dumps(
            {
                "labels": labels,
                "coordinates": {"ulx": 0, "uly": 0, "lrx": 1200, "lry": -1200},
                "projection": "WKT",
                "tile_source": "S2A_MSIL1C_x.SAFE",
                "acquisition_date": "2017-06-13 10:10:31",
            }
        ),
    )
  names = list(patches)
  lists = os.path.join(root, "lists")
  write(os.path.join(lists, "patches_with_cloud_and_shadow.csv"), "")
  write(os.path.join(lists, "patches_with_seasonal_snow.csv"), names[3] + "\r\n")
  write(os.path.join(lists, "patches_with_no_19_class_targets.csv"), names[2] + "\n")
  write(os.path.join(lists, "train.csv"), "\r\n".join(names[:2] + names[2:4]) + "\r\n")  # 2,3 get excluded
  write(os.path.join(lists, "val.csv"), names[4] + "\r\n")
  write(os.path.join(lists, "test.csv"), names[5] + "\r\nS2A_MSIL2A_20170613T101031_9_9\r\n")  # 9_9: not on disk
  return data, lists


# ------------------------------------------------------------------------------------------------ fMoW-Sentinel
FMOW_HEADER = ",category,location_id,image_id,timestamp,polygon,image_path\n"


def fmow(root: str, sizes=((20, 25), (32, 32), (40, 28))):
  rows = {"train": [], "val": []}
  for i, (h, w) in enumerate(sizes):
    split = "train" if i < 2 else "val"
    cat = ("airport", "zoo", "dam")[i % 3]
    rel = f"fmow-sentinel/{split}/{cat}/{cat}_{i}/{cat}_{i}_{i}.tif"
    write(os.path.join(root, rel), tif_bytes(stack(bandlib.ON_DISK["fmow_sentinel"], h, w, i)))
    rows[split].append(f'{i},{cat},{i},{i},2015-07-25T08:45:14Z,"POLYGON ((0 0, 1 1, 1 0, 0 0))",{rel}\n')
  for split, lines in rows.items():
    write(os.path.join(root, f"{split}.csv"), FMOW_HEADER + "".join(lines))
  return root


# ------------------------------------------------------------------------------------------------ SegMunich
SEG_RAW_CODES = (0, 5, 11, 12, 13, 14, 21, 22, 23, 31, 32, 33, 41)


def segmunich(root: str, n_train: int = 2, n_test: int = 1):
  base = os.path.join(root, "TUM_128")
  raw = np.resize(np.array(SEG_RAW_CODES, np.uint8), (128, 128))  # every raw code appears
  for split, n in (("train", n_train), ("test", n_test)):
    ids = [f"{split}_{i}" for i in range(n)]
    write(os.path.join(base, "dataset", f"{split}.txt"), "".join(f"{i}\n" for i in ids))
    for k, i in enumerate(ids):
      write(os.path.join(base, split, "img", f"{i}.tif"), tif_bytes(stack(bandlib.ON_DISK["segmunich"], 128, 128, k)))
      write(os.path.join(base, split, "label", f"{i}.tif"), tif_bytes(raw))
  return base


# ------------------------------------------------------------------------------------------------ OSCD
OSCD_CITIES = {"train": ["abudhabi", "beirut"], "test": ["dubai"]}


def oscd(root: str, shape=(130, 140)):
  images = os.path.join(root, "Onera Satellite Change Detection dataset - Images")
  for split, cities in OSCD_CITIES.items():
    write(os.path.join(images, f"{split}.txt"), ",".join(cities))
    for ci, city in enumerate(cities):
      for date in (1, 2):
        for b in bandlib.ALL_13:  # the real folders hold all 13 bands, B10 included
          arr = np.full(shape, band_value(b, 10 * date + ci), np.uint16)
          write(os.path.join(images, city, f"imgs_{date}_rect", f"{b}.tif"), tif_bytes(arr))
      write(os.path.join(images, city, "dates.txt"), "date_1: 20161130\ndate_2: 20170829\n")
      cm = np.zeros(shape, np.uint8)
      cm[: shape[0] // 2] = 255
      label_root = os.path.join(root, f"Onera Satellite Change Detection dataset - {split.title()} Labels")
      os.makedirs(os.path.join(label_root, city, "cm"), exist_ok=True)
      Image.fromarray(cm).save(os.path.join(label_root, city, "cm", "cm.png"))
  return root
