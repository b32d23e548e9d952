"""Readers on fixture trees in each real layout, on the 6 real BigEarthNet patches, and on bad input."""

import json
import os
import shutil

import numpy as np
import pytest
import s2_fixtures as fx
import tifffile

from spectralgpt_jax.data import bands
from spectralgpt_jax.data.readers import bigearthnet, common, eurosat, fmow, oscd, segmunich
from spectralgpt_jax.data.readers.common import DataError

CANON_VALUES = [fx.band_value(b) for b in bands.CANONICAL]


def band_consts(img, offset=0):
  return [int(img[..., i].min()) - offset for i in range(img.shape[-1])]


# ----------------------------------------------------------------------------------------------- EuroSAT
@pytest.mark.parametrize("layout,as_zip", [("zenodo", False), ("old", True), ("zenodo", True)])
def test_eurosat_layouts(tmp_path, layout, as_zip):
  fx.eurosat(str(tmp_path), layout, as_zip)
  src = str(tmp_path / "EuroSAT_MS.zip") if as_zip else str(tmp_path)
  reader = eurosat.EuroSAT(src, split_dir=str(tmp_path))
  splits = reader.splits()
  assert {k: len(v) for k, v in splits.items()} == {"train": 3, "val": 2, "test": 1}
  ex = reader.read("SeaLake_2")
  assert ex["image"].shape == (64, 64, 12) and ex["image"].dtype == np.uint16
  assert ex["label"] == eurosat.CLASSES.index("SeaLake") == 9
  # B8A (stored last in the file) lands at canonical index 8; B10 is gone.
  assert band_consts(ex["image"], offset=22) == CANON_VALUES
  import pickle  # readers are pickled into tfds/grain workers; the zip handle must survive that

  assert pickle.loads(pickle.dumps(reader)).read("Forest_1")["label"] == 1


def test_eurosat_without_split_files_puts_all_in_train(tmp_path):
  fx.eurosat(str(tmp_path), splits=False)
  assert {k: len(v) for k, v in eurosat.EuroSAT(str(tmp_path)).splits().items()} == {"train": 6}


# ----------------------------------------------------------------------------------------------- BigEarthNet
def test_bigearthnet_fixture_labels_lists_and_resampling(tmp_path):
  data, lists = fx.bigearthnet(str(tmp_path))
  reader = bigearthnet.BigEarthNet(str(tmp_path), lists)
  report = common.Report()
  names = list(fx.BEN_PATCHES)
  assert reader.split_names("train", report) == names[:2]  # no-19-label and snowy patches dropped
  assert reader.split_names("val", report) == [names[4]]
  assert reader.split_names("test", report) == [names[5]]
  assert dict(report.excluded) == {"no_19_class_targets": 1, "seasonal_snow": 1, "not_on_disk": 1}
  ex = reader.read(names[0])
  assert ex["image"].shape == (120, 120, 12) and ex["image"].dtype == np.uint16
  assert band_consts(ex["image"]) == CANON_VALUES  # constants survive resampling: band order pinned
  assert np.flatnonzero(ex["labels"]).tolist() == [bigearthnet.LABELS_19.index("Arable land")]  # Rice fields
  with pytest.raises(DataError, match="no label maps"):
    reader.read(names[2])  # Airports + Port areas: nothing left in the 19 classes


def test_bigearthnet_real_patches():
  reader = bigearthnet.BigEarthNet(fx.REAL_BEN)  # official lists shipped with the package
  assert reader.exclusion_reason("S2B_MSIL2A_20180204T94161_57_38") == "seasonal_snow"
  train = reader.split_names("train")
  assert "S2B_MSIL2A_20180204T94161_57_38" not in train + reader.split_names("val") + reader.split_names("test")
  assert sorted(train) == sorted(
      [
          "S2A_MSIL2A_20170617T113321_36_85",
          "S2A_MSIL2A_20170617T113321_4_55",
          "S2A_MSIL2A_20171221T112501_56_35",
          "S2B_MSIL2A_20170924T93020_69_24",
      ]
  )
  assert reader.split_names("test") == ["S2A_MSIL2A_20170613T101031_87_48"]
  name = "S2A_MSIL2A_20171221T112501_56_35"
  ex = reader.read(name)
  img = ex["image"]
  assert img.shape == (120, 120, 12) and img.dtype == np.uint16
  got = [bigearthnet.LABELS_19[i] for i in np.flatnonzero(ex["labels"])]
  assert got == [
      "Complex cultivation patterns",
      "Land principally occupied by agriculture, with significant areas of natural vegetation",
      "Broad-leaved forest",
      "Transitional woodland, shrub",
  ]
  assert np.flatnonzero(reader.read("S2A_MSIL2A_20170617T113321_4_55")["labels"]).tolist() == [4]  # Pastures
  folder = os.path.join(reader.root, name)
  b02 = tifffile.imread(os.path.join(folder, f"{name}_B02.tif"))
  assert np.array_equal(img[..., bands.CANONICAL.index("B02")], b02)  # 10 m bands untouched
  b05 = tifffile.imread(os.path.join(folder, f"{name}_B05.tif")).astype(np.float64)
  up = img[..., bands.CANONICAL.index("B05")].astype(np.float64)
  assert abs(up.mean() - b05.mean()) < 0.01 * b05.mean()  # bilinear keeps the radiometry
  # pixel-area alignment: output pixels (2i+0.5, 2j+0.5) average 2x2 blocks -> exactly the source pixel
  # interior; check a 2x2 block centre equals the bilinear mix of its 20 m neighbours.
  assert up[1:-1:2, 1:-1:2].shape == (59, 59)
  expect = 0.75 * b05[:-1, :] + 0.25 * b05[1:, :]  # row 2i+1 sits 1/4 of the way from source row i to i+1
  expect = 0.75 * expect[:, :-1] + 0.25 * expect[:, 1:]
  assert np.abs(up[1:-1:2, 1:-1:2] - expect).max() <= 0.5 + 1e-6  # within uint16 rounding
  assert img.min() > 0 and img.max() < 20000


# ----------------------------------------------------------------------------------------------- fMoW / SegMunich / OSCD
def test_fmow_varying_sizes_and_band_order(tmp_path):
  fx.fmow(str(tmp_path))
  reader = fmow.FMoWSentinel(str(tmp_path))
  assert reader.available_splits() == ["train", "val"]
  rows = reader.rows("train")
  ex = [reader.read(r) for r in rows]
  assert [e["image"].shape for e in ex] == [(20, 25, 12), (32, 32, 12)]
  assert band_consts(ex[1]["image"], offset=1) == CANON_VALUES
  assert [e["label"] for e in ex] == [fmow.CATEGORIES.index("airport"), fmow.CATEGORIES.index("zoo")]
  assert len(fmow.CATEGORIES) == 62


def test_fmow_year_filter_and_reference_order(tmp_path):
  fx.fmow(str(tmp_path))
  csv_path = tmp_path / "train.csv"
  lines = csv_path.read_text().splitlines()
  old = lines[1].replace("2015-07-25", "1999-12-31").replace(",0,0,", ",0,7,")  # same image, year 1999
  late = lines[2].replace("2015-07-25", "2015-01-01")  # zoo row sorted before its later twin
  csv_path.write_text("\n".join(lines + [old, late]) + "\n")
  rows = fmow.FMoWSentinel(str(tmp_path)).rows("train")
  assert [(r["category"], r["timestamp"][:10]) for r in rows] == [
      ("airport", "2015-07-25"),
      ("zoo", "2015-01-01"),
      ("zoo", "2015-07-25"),
  ]
  assert len(fmow.FMoWSentinel(str(tmp_path), years=None).rows("train")) == 4
  csv_path.write_text("\n".join(lines + [lines[1].replace("2015-07-25T08:45:14Z", "unknown")]) + "\n")
  with pytest.raises(DataError, match="train.csv: unparseable timestamp 'unknown'"):
    fmow.FMoWSentinel(str(tmp_path)).rows("train")


def test_segmunich_remap(tmp_path):
  fx.segmunich(str(tmp_path))
  reader = segmunich.SegMunich(str(tmp_path))
  keys = reader.ids("train")
  ex = reader.read(keys[1])
  assert ex["image"].shape == (128, 128, 10)
  assert band_consts(ex["image"], offset=1) == [fx.band_value(b) for b in bands.canonical_subset(segmunich.BANDS)]
  raw = np.resize(np.array(fx.SEG_RAW_CODES, np.uint8), (128, 128))
  expected = {0: 0, 5: 5, 11: 11, 12: 12, 13: 9, 14: 10, 21: 1, 22: 2, 23: 3, 31: 4, 32: 6, 33: 7, 41: 8}
  assert all((ex["mask"][raw == r] == c).all() for r, c in expected.items())
  assert sorted(np.unique(ex["mask"]).tolist()) == list(range(13))


def test_oscd_reads_rect_bands_as_is(tmp_path):
  fx.oscd(str(tmp_path))
  reader = oscd.OSCD(str(tmp_path))
  assert reader.cities("train") == ["abudhabi", "beirut"] and reader.cities("test") == ["dubai"]
  ex = reader.read("beirut")
  assert ex["image1"].shape == ex["image2"].shape == (130, 140, 12)
  assert band_consts(ex["image1"], offset=11) == CANON_VALUES
  assert band_consts(ex["image2"], offset=21) == CANON_VALUES
  assert ex["change"].dtype == np.uint8 and ex["change"][:65].all() and not ex["change"][65:].any()


# ----------------------------------------------------------------------------------------------- bad input
def test_truncated_tif_names_the_file(tmp_path):
  fx.eurosat(str(tmp_path), splits=False)
  path = tmp_path / "EuroSAT_MS" / "Forest" / "Forest_1.tif"
  path.write_bytes(path.read_bytes()[:2000])
  with pytest.raises(DataError, match="Forest_1.tif.*(truncated|unreadable)"):
    eurosat.EuroSAT(str(tmp_path)).read("Forest_1")


def test_wrong_band_count_and_size(tmp_path):
  fx.eurosat(str(tmp_path), splits=False)
  bad = tmp_path / "EuroSAT_MS" / "Forest" / "Forest_1.tif"
  tifffile.imwrite(bad, np.ones((64, 64, 12), np.uint16))
  with pytest.raises(DataError, match="Forest_1.tif: expected 13 bands"):
    eurosat.EuroSAT(str(tmp_path)).read("Forest_1")
  tifffile.imwrite(bad, np.ones((60, 64, 13), np.uint16))
  with pytest.raises(DataError, match="Forest_1.tif: expected spatial size"):
    eurosat.EuroSAT(str(tmp_path)).read("Forest_1")


def test_missing_band_file(tmp_path):
  fx.bigearthnet(str(tmp_path))
  name = list(fx.BEN_PATCHES)[0]
  os.remove(tmp_path / "BigEarthNet-v1.0" / name / f"{name}_B8A.tif")
  with pytest.raises(DataError, match=f"{name}_B8A.tif: file not found"):
    bigearthnet.BigEarthNet(str(tmp_path), str(tmp_path / "lists")).read(name)


@pytest.mark.parametrize("value,match", [(np.nan, "NaN"), (-5.0, "negative")])
def test_nan_and_negative_pixels(tmp_path, value, match):
  fx.fmow(str(tmp_path))
  reader = fmow.FMoWSentinel(str(tmp_path))
  row = reader.rows("train")[0]
  arr = np.full((20, 25, 13), 100.0, np.float32)
  arr[3, 4, 5] = value
  tifffile.imwrite(os.path.join(str(tmp_path), row["image_path"]), arr)
  with pytest.raises(DataError, match=f"airport_0_0.tif: contains 1 {match}"):
    reader.read(row)


def test_unknown_class_names(tmp_path):
  fx.eurosat(str(tmp_path / "e"), splits=False)
  shutil.copytree(tmp_path / "e" / "EuroSAT_MS" / "Forest", tmp_path / "e" / "EuroSAT_MS" / "Desert")
  with pytest.raises(DataError, match="Desert.*unknown EuroSAT class name 'Desert'"):
    eurosat.EuroSAT(str(tmp_path / "e"))
  fx.bigearthnet(str(tmp_path / "b"))
  name = list(fx.BEN_PATCHES)[0]
  js = tmp_path / "b" / "BigEarthNet-v1.0" / name / f"{name}_labels_metadata.json"
  js.write_text(json.dumps({"labels": ["Pastures", "Moon craters"]}))
  with pytest.raises(DataError, match="labels_metadata.json: unknown BigEarthNet class name 'Moon craters'"):
    bigearthnet.BigEarthNet(str(tmp_path / "b"), str(tmp_path / "b" / "lists")).read(name)
  fx.segmunich(str(tmp_path / "s"))
  tifffile.imwrite(tmp_path / "s" / "TUM_128" / "train" / "label" / "train_0.tif", np.full((128, 128), 99, np.uint8))
  with pytest.raises(DataError, match=r"train_0.tif: unknown SegMunich label code\(s\) \[99\]"):
    segmunich.SegMunich(str(tmp_path / "s")).read("train/train_0")


def test_empty_dirs(tmp_path):
  (tmp_path / "empty").mkdir()
  for make in (eurosat.EuroSAT, bigearthnet.BigEarthNet, fmow.FMoWSentinel, segmunich.SegMunich, oscd.OSCD):
    with pytest.raises(DataError, match="empty"):
      make(str(tmp_path / "empty"))
  (tmp_path / "noimg" / "sub").mkdir(parents=True)
  with pytest.raises(DataError, match="no EuroSAT-MS .tif files"):
    eurosat.EuroSAT(str(tmp_path / "noimg"))


def test_skip_policy_counts_bad_files(tmp_path):
  fx.eurosat(str(tmp_path), splits=False)
  (tmp_path / "EuroSAT_MS" / "Forest" / "Forest_2.tif").write_bytes(b"II*\x00garbage")
  reader = eurosat.EuroSAT(str(tmp_path))
  report = common.Report()
  got = list(common.guarded(sorted(reader.files), reader.read, "skip", report))
  assert len(got) == 5 and report.read == 5
  assert len(report.skipped) == 1 and report.skipped[0][0] == "Forest_2" and "Forest_2.tif" in report.skipped[0][1]
  with pytest.raises(DataError, match="Forest_2.tif"):
    list(common.guarded(sorted(reader.files), reader.read, "raise", report))


def test_seeded_ten_percent_subset():
  names = [f"p{i:03d}" for i in range(200)]
  a = bigearthnet.seeded_subset(names, 0.1, seed=0)
  assert len(a) == 20 and set(a) <= set(names) and a == sorted(a)
  assert a == bigearthnet.seeded_subset(list(reversed(names)), 0.1, seed=0)  # independent of list order
  assert a != bigearthnet.seeded_subset(names, 0.1, seed=1)


def test_eurosat_archive_choice(tmp_path, caplog):
  """Only the multispectral archives count: EuroSAT100.zip / the RGB EuroSAT.zip sorted first used to be taken."""
  fx.eurosat(str(tmp_path), as_zip=True)
  os.rename(tmp_path / "EuroSAT_MS.zip", tmp_path / "EuroSATallBands.zip")
  for decoy in ("EuroSAT.zip", "EuroSAT100.zip"):
    (tmp_path / decoy).write_bytes(b"PK\x05\x06" + bytes(18))      # an empty zip
  assert eurosat.find_source(str(tmp_path)) == str(tmp_path / "EuroSATallBands.zip")
  assert "ignoring EuroSAT.zip, EuroSAT100.zip" in caplog.text
  shutil.copy(tmp_path / "EuroSATallBands.zip", tmp_path / "EuroSAT_MS.zip")
  with pytest.raises(DataError, match=r"several EuroSAT-MS archives \(EuroSAT_MS.zip, EuroSATallBands.zip\)"):
    eurosat.find_source(str(tmp_path))


def test_eurosat_only_rgb_or_subset_zips_is_an_error(tmp_path):
  (tmp_path / "EuroSAT.zip").write_bytes(b"PK\x05\x06" + bytes(18))
  with pytest.raises(DataError, match=r"EuroSAT.zip is not the EuroSAT-MS \(13-band\) archive"):
    eurosat.find_source(str(tmp_path))
  fx.eurosat(str(tmp_path))                                          # extracted GeoTIFFs beside it: fine
  assert eurosat.find_source(str(tmp_path)) == str(tmp_path)


def test_bigearthnet_split_without_patches_is_an_error_naming_the_layout(tmp_path):
  """An empty split used to "prepare" fine (splits {}), and was reused later: now one error naming what is there."""
  _, lists = fx.bigearthnet(str(tmp_path / "v1"))
  reben = tmp_path / "reben"
  (reben / "BigEarthNet-S2" / "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP").mkdir(parents=True)
  (reben / "metadata.parquet").write_bytes(b"")
  reader = bigearthnet.BigEarthNet(str(reben), lists)
  splits = {s: reader.split_names(s) for s in bigearthnet.SPLITS}
  with pytest.raises(DataError, match=r"no patch of BigEarthNet split\(s\) train, val, test .*S2A_MSIL2A_20170613T"
                     r"101031_1_1.*BigEarthNet v2.0 \(reBEN\) layout"):
    reader.require_nonempty(splits)
  high = tmp_path / "high"
  fx.bigearthnet(str(high / "downloads"))          # the data one level further down than --manual_dir
  reader = bigearthnet.BigEarthNet(str(high), lists)
  with pytest.raises(DataError, match=r"one level too high"):
    reader.require_nonempty({s: reader.split_names(s) for s in bigearthnet.SPLITS})
