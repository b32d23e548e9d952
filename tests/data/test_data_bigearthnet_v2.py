"""BigEarthNet v2.0 (reBEN): the reader on the real layout fixture (torchgeo's, random pixels), exclusions, errors
naming file and column, preparation through the CLI, the pipelines, and one fine-tuning run from main.py."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds
import tifffile

from spectralgpt_jax.data import families, pipeline, prepare, sources, transforms
from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.data.readers import bigearthnet as v1
from spectralgpt_jax.data.readers import bigearthnet_v2 as v2
from spectralgpt_jax.data.readers import common
from spectralgpt_jax.data.readers.common import DataError
from spectralgpt_jax.data.builders.base import Sentinel2Builder

VERSION = str(Sentinel2Builder.VERSION)   # the prepared datasets' folder

FIXTURE = os.path.join(os.path.dirname(__file__), "bigearthnet_v2_layout")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROWS = pq.read_table(os.path.join(FIXTURE, v2.METADATA)).to_pylist()   # patch_id, s1_name, split, labels
TRAIN, VAL, TEST = ([r["patch_id"] for r in ROWS if r["split"] == s] for s in ("train", "validation", "test"))


def layout(tmp_path, name="reben"):
  return shutil.copytree(FIXTURE, tmp_path / name)


def band_path(root, pid, band):
  return os.path.join(root, v2.S2_DIR, v2.tile_of(pid), pid, f"{pid}_{band}.tif")


def write_metadata(root, rows, name=v2.METADATA):
  pq.write_table(pa.Table.from_pylist(rows), os.path.join(root, name))


def test_fixture_splits_labels_bands_and_reference_maps():
  reader = v2.BigEarthNetV2(FIXTURE, reference_maps=True)
  report = common.Report()
  assert {s: reader.split_names(s, report) for s in v2.SPLITS} == {"train": TRAIN, "val": VAL, "test": TEST}
  assert len(TRAIN) == 2 and not report.excluded
  for row in ROWS:
    ex = reader.read(row["patch_id"])
    assert [v1.LABELS_19[i] for i in np.flatnonzero(ex["labels"])] == sorted(row["labels"], key=v1.LABELS_19.index)
    assert ex["image"].shape == (120, 120, 12) and ex["image"].dtype == np.uint16 and ex["id"] == row["patch_id"]
    for i, b in enumerate(bandlib.CANONICAL):           # stored int16 at 120 px: canonical order, values kept
      raw = tifffile.imread(band_path(FIXTURE, row["patch_id"], b))
      assert raw.dtype == np.int16 and np.array_equal(ex["image"][..., i], raw.astype(np.uint16))
    # The fixture's maps hold exactly the CLC codes of the patch's labels: mapped, they give its label indices.
    assert ex["reference_map"].shape == (120, 120) and ex["reference_map"].dtype == np.uint8
    assert set(np.unique(ex["reference_map"])) == set(np.flatnonzero(ex["labels"]))


def test_clc_codes_cover_the_19_classes_and_the_rest_is_ignored():
  assert [c for c, n in v2.CLC_CODES.items() if n not in v1.LABEL_43_TO_19] == [335]   # glaciers: no BEN class
  assert len(v2.CLC_CODES) == 44
  assert set(v2.CLC_TO_19[list(v2.CLC_CODES)]) == set(range(19)) | {v2.IGNORE}
  mapped = v2.clc_to_19(np.array([[111, 112, 122, 221, 222, 241], [523, 0, 999, 4000, 335, 313]]))
  assert mapped.tolist() == [[0, 0, 255, 3, 3, 3], [18, 255, 255, 255, 255, 10]]


def test_any_stored_band_size_is_resampled_bilinearly_to_120(tmp_path):
  root = layout(tmp_path)
  pid = TRAIN[0]
  ramp = (np.arange(60)[:, None] * 7 + np.arange(60)[None, :] * 3 + 100).astype(np.uint16)
  tifffile.imwrite(band_path(root, pid, "B05"), ramp)                       # 20 m band stored at 60 px
  tifffile.imwrite(band_path(root, pid, "B01"), np.full((20, 20), 321, np.int16))   # 60 m at 20 px, int16
  img = v2.BigEarthNetV2(str(root)).read(pid)["image"]
  expected = common.to_uint16(common.resample_bilinear(ramp, (120, 120)))   # v1's resampling, bit for bit
  assert np.array_equal(img[..., bandlib.CANONICAL.index("B05")], expected)
  assert (img[..., 0] == 321).all()
  tifffile.imwrite(band_path(root, pid, "B01"), np.full((20, 20), -5, np.int16))
  with pytest.raises(DataError, match=r"_B01\.tif: contains 400 negative pixels"):
    v2.BigEarthNetV2(str(root)).read(pid)
  tifffile.imwrite(band_path(root, pid, "B01"), np.ones((20, 30), np.uint16))
  with pytest.raises(DataError, match=r"_B01\.tif: expected a square band"):
    v2.BigEarthNetV2(str(root)).read(pid)
  tifffile.imwrite(band_path(root, pid, "B01"), np.ones((20, 20), np.uint16))
  os.remove(band_path(root, pid, "B12"))
  with pytest.raises(DataError, match=r"_B12\.tif: file not found"):
    v2.BigEarthNetV2(str(root)).read(pid)


def test_root_is_found_from_a_parent_or_from_the_s2_folder(tmp_path):
  root = layout(tmp_path / "downloads")
  assert v2.BigEarthNetV2(str(tmp_path / "downloads")).root == str(root)      # one level up
  assert v2.BigEarthNetV2(str(root / v2.S2_DIR)).root == str(root)           # BigEarthNet-S2/ itself
  layout(tmp_path / "downloads", "second")
  with pytest.raises(DataError, match=r"several BigEarthNet v2.0 folders \(reben, second\)"):
    v2.BigEarthNetV2(str(tmp_path / "downloads"))
  (tmp_path / "v1" / "BigEarthNet-v1.0").mkdir(parents=True)
  with pytest.raises(DataError, match=r"v1/metadata.parquet: not found .* --dataset bigearthnet$"):
    v2.BigEarthNetV2(str(tmp_path / "v1"))


def test_exclusions_by_flag_and_flagged_file_are_counted(tmp_path, caplog):
  root = layout(tmp_path)
  rows = [dict(r, contains_cloud_or_shadow=r["patch_id"] == TRAIN[0], contains_seasonal_snow=r["split"] == "test")
          for r in ROWS]
  rows.append(dict(ROWS[1], patch_id=v2.tile_of(TRAIN[1]) + "_99_99", contains_cloud_or_shadow=False,
                   contains_seasonal_snow=False))                          # listed, never downloaded
  write_metadata(root, rows)
  flagged = dict(ROWS[1], patch_id=v2.tile_of(TRAIN[1]) + "_98_98", contains_cloud_or_shadow=True,
                 contains_seasonal_snow=True)
  snowy = dict(flagged, patch_id=v2.tile_of(TRAIN[1]) + "_97_97", contains_cloud_or_shadow=False)
  write_metadata(root, [flagged, snowy], v2.FLAGGED_METADATA)
  reader = v2.BigEarthNetV2(str(root))
  report = common.Report()
  splits = {s: reader.split_names(s, report) for s in v2.SPLITS}
  assert splits == {"train": [TRAIN[1]], "val": VAL, "test": []}
  assert dict(report.excluded) == {"cloud_and_shadow": 2, "seasonal_snow": 2, "not_on_disk": 1}
  with pytest.raises(DataError, match=r"no usable patch of BigEarthNet v2.0 split\(s\) test: of the 1 'test' rows "
                     r"of metadata.parquet, 1 are flagged for snow/cloud/shadow and 0 not on disk"):
    reader.require_nonempty(splits)
  write_metadata(root, ROWS)
  os.remove(root / v2.FLAGGED_METADATA)
  with caplog.at_level("WARNING"):
    v2.BigEarthNetV2(str(root))
  assert "no patch is excluded for snow, cloud or shadow" in caplog.text


@pytest.mark.parametrize("case, pattern", [
    ("no_metadata", r"reben/metadata.parquet: not found"),
    ("not_parquet", r"metadata.parquet: not a readable parquet file"),
    ("no_split_column", r"metadata.parquet: missing column\(s\) split \(it has patch_id, s1_name, labels\)"),
    ("unknown_label", r"metadata.parquet: row 0 \(patch_id 'S2A.*'\): column 'labels' has unknown BigEarthNet-19 "
                      r"class name\(s\) \['Glaciers'\]"),
    ("unknown_split", r"metadata.parquet: row 0 .*column 'split' has 'holdout'; expected train, validation or test"),
    ("duplicate", r"metadata.parquet: row 4 .*patch listed twice"),
    ("no_reference_maps", r"reben/Reference_Maps: folder not found"),
])
def test_bad_metadata_is_an_error_naming_file_and_column(tmp_path, case, pattern):
  root = layout(tmp_path)
  meta = root / v2.METADATA
  if case == "no_metadata":
    meta.unlink()
  elif case == "not_parquet":
    meta.write_bytes(b"PAR1 truncated")
  elif case == "no_split_column":
    write_metadata(root, [{k: v for k, v in r.items() if k != "split"} for r in ROWS])
  elif case == "unknown_label":
    write_metadata(root, [dict(ROWS[0], labels=["Glaciers"])] + ROWS[1:])
  elif case == "unknown_split":
    write_metadata(root, [dict(ROWS[0], split="holdout")] + ROWS[1:])
  elif case == "duplicate":
    write_metadata(root, ROWS + ROWS[:1])
  else:
    shutil.rmtree(root / v2.MAPS_DIR)
  with pytest.raises(DataError, match=pattern):
    v2.BigEarthNetV2(str(root), reference_maps=case == "no_reference_maps")


def test_a_split_without_rows_or_patches_is_an_error(tmp_path):
  root = layout(tmp_path)
  write_metadata(root, [r for r in ROWS if r["split"] != "test"])
  reader = v2.BigEarthNetV2(str(root))
  with pytest.raises(DataError, match=r"metadata.parquet: no row has split 'test' \(column 'split'"):
    reader.require_nonempty({s: reader.split_names(s) for s in v2.SPLITS})
  shutil.rmtree(root / v2.S2_DIR)
  code = prepare.main(["--dataset", "bigearthnet_v2", "--manual_dir", str(root), "--data_dir", str(tmp_path / "t")])
  assert code == 2 and not (tmp_path / "t" / "bigearthnet_v2" / "default" / VERSION / "dataset_info.json").exists()


def test_recipe_tables_follow_bigearthnet():
  for task in ("pretrain", "finetune"):
    a, b = pipeline.default_data_config("bigearthnet_v2", task), pipeline.default_data_config("bigearthnet", task)
    assert {**a.to_dict(), "name": "bigearthnet"} == b.to_dict()
  cfg = {"name": "bigearthnet_v2"}
  assert pipeline.class_names(cfg) == v1.LABELS_19 and pipeline.label_key(cfg) == "labels"
  assert transforms.REFERENCE_MINMAX_EPS["bigearthnet_v2"] == transforms.REFERENCE_MINMAX_EPS["bigearthnet"]
  assert bandlib.ON_DISK["bigearthnet_v2"] == bandlib.CANONICAL and families.family("eurosat") == "eurosat"
  assert sources.BUILDER_NAMES["bigearthnet_v2"] == "bigearthnet_v2"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("ben2") / "tfds")
  assert prepare.main(["--dataset", "bigearthnet_v2", "--manual_dir", FIXTURE, "--data_dir", data_dir]) == 0
  return data_dir


def test_prepare_cli_and_pipelines(prepared):
  folder = os.path.join(prepared, "bigearthnet_v2", "default", VERSION)
  builder = tfds.builder_from_directory(folder)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 2, "val": 1, "test": 1}
  assert builder.info.metadata["bands"] == list(bandlib.CANONICAL) and "reference_map" not in builder.info.features
  assert json.load(open(os.path.join(folder, "prepare_report.json")))["read"] == 4
  src, _ = sources.tfds_source("bigearthnet_v2", "test", prepared)
  reader = v2.BigEarthNetV2(FIXTURE)
  assert np.array_equal(src[0]["image"], reader.read(TEST[0])["image"])
  cfg = pipeline.default_data_config("bigearthnet_v2", "finetune")
  cfg.update(data_dir=prepared, prefetch=0, image_size=32, train_split="train")
  it = pipeline.finetune_iterator(cfg, global_batch_size=2)
  b = next(it)
  it.close()
  assert b["image"].shape == (2, 32, 32, 12) and b["labels"].shape == (2, 19) and b["labels"].dtype == np.uint8
  maps = prepare.prepare("bigearthnet_v2", FIXTURE, prepared, reference_maps=True)   # its own folder beside
  assert maps.info.features["reference_map"].shape == (120, 120)
  src, _ = sources.tfds_source("bigearthnet_v2", "val", prepared)    # training reads the default config
  assert "reference_map" not in src[0]
  ds = tfds.builder("bigearthnet_v2/reference_maps", data_dir=prepared).as_data_source("val")
  assert np.array_equal(ds[0]["reference_map"], v2.BigEarthNetV2(FIXTURE, True).read(VAL[0])["reference_map"])


def test_finetuning_runs_from_the_cli_config(prepared, tmp_path):
  """configs/finetune_bigearthnet.py (paper recipe) with --config.data.name=bigearthnet_v2, shrunk to 2 steps."""
  workdir = tmp_path / "run"
  overrides = {"data.name": "bigearthnet_v2", "data.data_dir": prepared, "data.train_split": "train",
               "data.eval_split": "test", "data.image_size": 32, "data.prefetch": 1, "model.img_size": 32,
               "model.embed_dim": 32, "model.depth": 2, "model.num_heads": 2, "batch_size": 8, "eval_batch_size": 8,
               "total_epochs": 0.0, "total_steps": 2, "warmup_epochs": 0.0, "warmup_steps": 1, "eval_every": 2,
               "checkpoint_every": 2, "log_every": 1, "compute_dtype": "float32", "progress_bar": False,
               "tensorboard": False}
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--config=configs/finetune_bigearthnet.py",
                         f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in overrides.items())],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
  assert metrics["split"] == "test" and metrics["num_examples"] == 1 and "macro_map" in metrics
  meta = json.loads((workdir / "export" / "metadata.json").read_text())
  assert meta["class_names"] == list(v1.LABELS_19) and meta["normalization"]["name"] == "satmae_2sigma"
