"""Split files (issue #10 defect 4): EuroSAT split schemes, their md5s, overlaps and duplicates; OSCD city lists
taken from the label folders when train.txt / test.txt are missing."""

import hashlib
import logging
import os
import re
import shutil
import zipfile

import pytest
import s2_fixtures as fx

from spectralgpt_jax.data.readers import eurosat, oscd
from spectralgpt_jax.data.readers.common import DataError

NEUMANN = {"eurosat-train.txt": ["AnnualCrop_1", "Forest_1"], "eurosat-val.txt": ["SeaLake_1"],
           "eurosat-test.txt": ["SeaLake_2"]}
SPATIAL = {"eurosat-spatial-train.txt": ["AnnualCrop_1", "AnnualCrop_2", "Forest_1"],
           "eurosat-spatial-val.txt": ["Forest_2"], "eurosat-spatial-test.txt": ["SeaLake_1", "SeaLake_2"]}
E100 = {"eurosat-100-train.txt": ["AnnualCrop_1"], "eurosat-100-val.txt": ["Forest_1"],
        "eurosat-100-test.txt": ["SeaLake_1"]}
SPECTRALGPT = {"train_euro_result.txt": ["AnnualCrop_1", "AnnualCrop_2", "Forest_1", "Forest_2"],
               "val_euro_result.txt": ["SeaLake_1", "SeaLake_2"]}


def _tree(tmp_path, *lists):
  fx.eurosat(str(tmp_path), splits=False)  # 6 images: {AnnualCrop,Forest,SeaLake}_{1,2}
  for files in lists:
    fx.eurosat_lists(str(tmp_path), files)
  return str(tmp_path)


def _sizes(splits):
  return {k: len(v) for k, v in splits.items()}


def _full_source(tmp_path):
  """A zip naming all 27,000 EuroSAT-MS images (empty entries: only the names are read before the splits)."""
  os.makedirs(tmp_path, exist_ok=True)
  path = str(tmp_path / "EuroSAT_MS.zip")
  with zipfile.ZipFile(path, "w") as z:
    for cls in eurosat.CLASSES:
      for n in range(1, eurosat.FULL_SIZE // len(eurosat.CLASSES) + 1):
        z.writestr(f"EuroSAT_MS/{cls}/{cls}_{n}.tif", b"")
  return path


# ----------------------------------------------------------------------------------------------- schemes
def test_eurosat100_lists_are_refused_unless_selected(tmp_path):
  """They used to be ignored silently (everything in 'train'); now an error says what they are."""
  root = _tree(tmp_path, E100)
  with pytest.raises(DataError, match=r"eurosat-100-train.txt.* EuroSAT100 split \(a 100-image subset .*not a "
                                      r"benchmark\); they are used only with split_scheme='eurosat100'"):
    eurosat.EuroSAT(root).splits()
  reader = eurosat.EuroSAT(root, split_scheme="eurosat100")
  assert reader.splits() == {"train": ["AnnualCrop_1"], "val": ["Forest_1"], "test": ["SeaLake_1"]}
  assert reader.split_scheme == "eurosat100"


def test_spatial_lists_are_used_only_when_selected(tmp_path, caplog):
  root = _tree(tmp_path, SPATIAL)
  with pytest.raises(DataError, match=r"EuroSATSpatial split .* used only with split_scheme='spatial' \(or add the "
                                      r"standard eurosat-train.txt, eurosat-val.txt, eurosat-test.txt\)"):
    eurosat.EuroSAT(root).splits()
  fx.eurosat_lists(root, NEUMANN)
  reader = eurosat.EuroSAT(root)
  with caplog.at_level(logging.WARNING):
    assert _sizes(reader.splits()) == {"train": 2, "val": 1, "test": 1}
  assert reader.split_scheme == "neumann" and reader.split_report["ignored"] == ["spatial"]
  assert "split scheme neumann; ignoring the spatial (eurosat-spatial-train.txt" in caplog.text
  reader = eurosat.EuroSAT(root, split_scheme="spatial")
  assert _sizes(reader.splits()) == {"train": 3, "val": 1, "test": 2} and reader.split_scheme == "spatial"


def test_several_schemes_pick_by_priority_and_say_so(tmp_path, caplog):
  root = _tree(tmp_path, NEUMANN, SPECTRALGPT)
  reader = eurosat.EuroSAT(root)
  assert reader.split_scheme is None  # set by splits()
  with caplog.at_level(logging.WARNING):
    assert _sizes(reader.splits()) == {"train": 2, "val": 1, "test": 1}
  assert "split scheme neumann; ignoring the spectralgpt (train_euro_result.txt, val_euro_result.txt)" in caplog.text
  report = reader.split_report
  assert report["scheme"] == "neumann" and report["ignored"] == ["spectralgpt"]
  assert report["files"]["val"] == {"file": os.path.join(root, "eurosat-val.txt"),
                                    "md5": hashlib.md5(b"SeaLake_1.jpg\n").hexdigest()}
  reader = eurosat.EuroSAT(root, split_scheme="spectralgpt")
  assert _sizes(reader.splits()) == {"train": 4, "val": 2} and reader.split_scheme == "spectralgpt"
  reader = eurosat.EuroSAT(root, split_scheme="all_train")
  assert _sizes(reader.splits()) == {"train": 6} and reader.split_report["ignored"] == ["neumann", "spectralgpt"]
  with pytest.raises(ValueError, match=r"split_scheme='torchgeo': expected one of neumann, spectralgpt, spatial"):
    eurosat.EuroSAT(root, split_scheme="torchgeo")


def test_partial_scheme_is_an_error_naming_the_missing_files(tmp_path):
  """Only eurosat-train.txt used to mean 'no split files': everything silently went to 'train'."""
  root = _tree(tmp_path, {"eurosat-train.txt": ["AnnualCrop_1"]})
  val, test = (os.path.join(root, f) for f in ("eurosat-val.txt", "eurosat-test.txt"))
  missing = re.escape(f"{val}, {test}: missing; the other neumann split files (eurosat-train.txt)")
  with pytest.raises(DataError, match=f"^{missing}"):
    eurosat.EuroSAT(root).splits()
  fx.eurosat_lists(root, SPECTRALGPT)  # a complete scheme next to it does not hide the broken one
  with pytest.raises(DataError, match=r"eurosat-val.txt, .*eurosat-test.txt: missing"):
    eurosat.EuroSAT(root).splits()
  assert _sizes(eurosat.EuroSAT(root, split_scheme="spectralgpt").splits()) == {"train": 4, "val": 2}
  fx.eurosat_lists(root, {"eurosat-spatial-train.txt": ["Forest_1"], "eurosat-spatial-test.txt": ["Forest_2"]})
  others = re.escape("eurosat-spatial-val.txt: missing; the other spatial split files (eurosat-spatial-train.txt, "
                     "eurosat-spatial-test.txt) are there")
  with pytest.raises(DataError, match=others):
    eurosat.EuroSAT(root, split_scheme="spatial").splits()
  with pytest.raises(DataError, match=r"split_scheme='eurosat100' but none of its files \(eurosat-100-train.txt"):
    eurosat.EuroSAT(root, split_scheme="eurosat100").splits()


# ----------------------------------------------------------------------------------------------- md5
def test_standard_split_file_md5_is_checked(tmp_path, caplog, monkeypatch):
  root = _tree(tmp_path, NEUMANN)
  train = os.path.join(root, "eurosat-train.txt")
  actual = hashlib.md5(open(train, "rb").read()).hexdigest()
  with pytest.raises(DataError, match=rf"^{re.escape(train)}: md5 {actual}, expected 908f142e73d6acdf3f482c5e80d851b1 "
                                      r"\(torchgeo's neumann train list\); edited, truncated or another split\. .*"
                                      r"pass verify_split_md5=False"):
    eurosat.EuroSAT(root, verify_split_md5=True).splits()
  # automatic: a 6-image tree cannot use the published lists anyway, so a mismatch is only a warning there...
  with caplog.at_level(logging.WARNING):
    assert _sizes(eurosat.EuroSAT(root).splits()) == {"train": 2, "val": 1, "test": 1}
  assert "accepted: the source holds 6 images, the published lists are for 27000" in caplog.text
  # ...but on the full dataset an edited standard list would change the benchmark: an error.
  full = _full_source(tmp_path / "full")
  with pytest.raises(DataError, match=rf"{re.escape(train)}: md5 {actual}, expected 908f142e73d6acdf3f482c5e80d851b1"):
    eurosat.EuroSAT(full, split_dir=root).splits()
  assert _sizes(eurosat.EuroSAT(full, split_dir=root, verify_split_md5=False).splits()) == {"train": 2, "val": 1,
                                                                                             "test": 1}
  # A file that is another published list under the standard name (torchgeo 0.5 saved EuroSAT100's lists so).
  e100 = eurosat.SPLIT_SCHEMES["eurosat100"]
  monkeypatch.setitem(eurosat.SPLIT_SCHEMES, "eurosat100", eurosat.SplitScheme(
      e100.files, e100.what, md5={**e100.md5, "train": actual}, size=100))
  with pytest.raises(DataError, match=r"expected 908f1.*; it is torchgeo's eurosat100 train list"):
    eurosat.EuroSAT(full, split_dir=root).splits()


def test_published_md5_passes_and_spectralgpt_lists_are_not_checked(tmp_path, monkeypatch):
  root = _tree(tmp_path, NEUMANN, SPECTRALGPT)
  digests = {s: hashlib.md5(open(os.path.join(root, f"eurosat-{s}.txt"), "rb").read()).hexdigest()
             for s in ("train", "val", "test")}
  published = eurosat.SplitScheme(eurosat.SPLIT_SCHEMES["neumann"].files, "test lists", md5=digests)
  monkeypatch.setitem(eurosat.SPLIT_SCHEMES, "neumann", published)
  assert _sizes(eurosat.EuroSAT(root, verify_split_md5=True).splits()) == {"train": 2, "val": 1, "test": 1}
  reader = eurosat.EuroSAT(root, split_scheme="spectralgpt", verify_split_md5=True)  # nothing published
  assert _sizes(reader.splits()) == {"train": 4, "val": 2}


# ----------------------------------------------------------------------------------------------- overlaps
def test_image_in_two_splits_is_an_error(tmp_path):
  root = _tree(tmp_path, {**NEUMANN, "eurosat-test.txt": ["SeaLake_2", "Forest_1", "AnnualCrop_1"]})
  with pytest.raises(DataError, match=r"eurosat-train.txt and .*eurosat-test.txt: 2 image\(s\) in both train and "
                                      r"test: AnnualCrop_1, Forest_1$"):
    eurosat.EuroSAT(root).splits()


def test_image_twice_in_one_split_is_an_error(tmp_path):
  root = _tree(tmp_path, {**NEUMANN, "eurosat-train.txt": ["AnnualCrop_1", "Forest_1", "AnnualCrop_1"]})
  with pytest.raises(DataError, match=r"eurosat-train.txt: 1 image\(s\) listed more than once: AnnualCrop_1 "
                                      r"\(lines 1, 3\)"):
    eurosat.EuroSAT(root).splits()


# ----------------------------------------------------------------------------------------------- OSCD
def _images(root):
  return os.path.join(root, oscd.PREFIX + "Images")


def test_oscd_takes_the_cities_from_the_label_folders_without_txt(tmp_path, caplog):
  root = fx.oscd(str(tmp_path))
  for split in oscd.SPLITS:
    os.remove(os.path.join(_images(root), f"{split}.txt"))
  os.makedirs(os.path.join(root, oscd.PREFIX + "Train Labels", "__MACOSX"))  # archive debris is no city
  reader = oscd.OSCD(root)
  with caplog.at_level(logging.WARNING):
    assert reader.cities("train") == ["abudhabi", "beirut"] and reader.cities("test") == ["dubai"]
  assert caplog.text.count("train.txt not found; the 2 train cities are the folders of") == 1
  assert reader.read("dubai")["change"].shape == (130, 140)


def test_oscd_without_txt_or_labels_names_both_places(tmp_path):
  root = fx.oscd(str(tmp_path))
  os.remove(os.path.join(_images(root), "test.txt"))
  labels = os.path.join(root, oscd.PREFIX + "Test Labels")
  shutil.rmtree(labels)
  txt = os.path.join(_images(root), "test.txt")
  with pytest.raises(DataError, match="^" + re.escape(f"{txt}: OSCD city list not found, and no {labels} folder")):
    oscd.OSCD(root).cities("test")
  assert oscd.OSCD(root).cities("train") == ["abudhabi", "beirut"]  # train.txt is still there


def test_oscd_city_in_both_splits_is_an_error(tmp_path):
  root = fx.oscd(str(tmp_path))
  for split in oscd.SPLITS:
    os.remove(os.path.join(_images(root), f"{split}.txt"))
  train_labels, test_labels = (os.path.join(root, oscd.PREFIX + f"{s} Labels") for s in ("Train", "Test"))
  shutil.copytree(os.path.join(train_labels, "beirut"), os.path.join(test_labels, "beirut"))
  both = re.escape(f"{train_labels} and {test_labels}: city(ies) beirut in both train and test")
  with pytest.raises(DataError, match=both):
    oscd.OSCD(root).cities("train")
  fx.write(os.path.join(_images(root), "test.txt"), "dubai,abudhabi")  # the txt lists are checked the same way
  with pytest.raises(DataError, match=r"test.txt and .*Train Labels: city\(ies\) abudhabi in both test and train"):
    oscd.OSCD(root).cities("test")


def test_oscd_label_folder_city_without_change_map_is_an_error(tmp_path):
  root = fx.oscd(str(tmp_path))
  os.remove(os.path.join(_images(root), "train.txt"))
  os.makedirs(os.path.join(root, oscd.PREFIX + "Train Labels", "paris", "cm"))
  with pytest.raises(DataError, match=r"Train Labels: city folder\(s\) without cm/cm.png: paris$"):
    oscd.OSCD(root).cities("train")


def test_oscd_city_twice_in_a_list_is_an_error(tmp_path):
  root = fx.oscd(str(tmp_path))
  fx.write(os.path.join(_images(root), "train.txt"), "abudhabi,beirut,\nabudhabi")
  with pytest.raises(DataError, match=r"train.txt: city\(ies\) listed more than once: abudhabi$"):
    oscd.OSCD(root).cities("train")
