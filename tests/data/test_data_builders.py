"""Prepare every dataset from its fixture layout with the TF-free builders (through the CLI), then feed the
prepared ArrayRecords through the grain pipelines."""

import json
import os

import numpy as np
import pytest
import s2_fixtures as fx
import tensorflow_datasets as tfds

from spectralgpt_jax.data import bands, pipeline, prepare, sources
from spectralgpt_jax.data.readers.common import DataError
from spectralgpt_jax.data.builders.base import Sentinel2Builder

VERSION = str(Sentinel2Builder.VERSION)   # the prepared datasets' folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("s2")
  data_dir = str(root / "tfds")
  manual = {name: str(root / name) for name in ("eurosat", "bigearthnet", "fmow_sentinel", "segmunich", "oscd")}
  fx.eurosat(manual["eurosat"], as_zip=True)
  _, lists = fx.bigearthnet(manual["bigearthnet"])
  fx.fmow(manual["fmow_sentinel"])
  fx.segmunich(manual["segmunich"])
  fx.oscd(manual["oscd"])
  for name, src in manual.items():
    extra = ["--lists_dir", lists] if name == "bigearthnet" else []
    assert prepare.main(["--dataset", name, "--manual_dir", src, "--data_dir", data_dir] + extra) == 0
  return data_dir


def test_builders_are_tf_free_and_schema(prepared):
  import sys

  assert "tensorflow" not in sys.modules
  src, b = sources.tfds_source("eurosat", "train", prepared)
  assert b == bands.CANONICAL and len(src) == 3
  ex = src[0]
  assert ex["image"].shape == (64, 64, 12) and ex["image"].dtype == np.uint16 and isinstance(ex["label"], int)
  assert ex["image"][..., 8].min() == fx.band_value("B8A") + int(ex["image"][..., 0].min()) - fx.band_value("B01")

  src, _ = sources.tfds_source("bigearthnet", "train", prepared)
  assert len(src) == 2
  assert {tuple(np.flatnonzero(src[i]["labels"])) for i in range(2)} == {(2,), (4, 18)}
  builder = tfds.builder_from_directory(os.path.join(prepared, "bigearthnet_s2", VERSION))
  assert set(builder.info.splits) == {"train", "val", "test"}  # train_10pct: round(0.1 * 2) = 0 examples
  assert builder.info.metadata["bands"] == list(bands.CANONICAL)
  report = json.load(open(os.path.join(prepared, "bigearthnet_s2", VERSION, "prepare_report.json")))
  assert report["excluded"] == {"no_19_class_targets": 1, "seasonal_snow": 1, "not_on_disk": 1}

  src, _ = sources.tfds_source("fmow_sentinel", "train", prepared)
  assert sorted(src[i]["image"].shape for i in range(2)) == [(20, 25, 12), (32, 32, 12)]

  src, b = sources.tfds_source("segmunich", "train", prepared)
  assert len(b) == 10 and "B08" not in b and src[0]["mask"].shape == (128, 128)

  src, _ = sources.tfds_source("oscd", "train", prepared)
  assert len(src) == 2 and src[0]["image1"].shape == (130, 140, 12) and src[0]["change"].shape == (130, 140)


def test_unprepared_dataset_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="spectralgpt_jax.data.prepare --dataset segmunich"):
    sources.tfds_source("segmunich", "train", str(tmp_path))


def _cfg(name, data_dir, task="finetune", **kw):
  cfg = pipeline.default_data_config(name, task)
  cfg.data_dir = data_dir
  cfg.prefetch = 0
  cfg.update(kw)
  return cfg


def _take(it, n):
  out = [next(it) for _ in range(n)]
  it.close()
  return out


def test_pretrain_pipelines_on_prepared(prepared):
  for name, size in (("fmow_sentinel", 96), ("bigearthnet", 128)):
    cfg = _cfg(name, prepared, task="pretrain", image_size=16)
    (b,) = _take(pipeline.pretrain_iterator(cfg, global_batch_size=4, seed=0), 1)
    assert b["image"].shape == (4, 16, 16, 12) and b["image"].dtype == np.float32
    assert 0 <= b["image"].min() and b["image"].max() <= 1.5  # min-max then bicubic (may overshoot a bit)
    ev = list(pipeline.pretrain_iterator(cfg, global_batch_size=4, seed=0, train=False))
    assert sum(int(e["valid"].sum()) for e in ev) == 1  # one val example in either fixture


def test_finetune_pipelines_on_prepared(prepared):
  (b,) = _take(pipeline.finetune_iterator(_cfg("eurosat", prepared, image_size=32), global_batch_size=4), 1)
  assert b["image"].shape == (4, 32, 32, 12) and b["targets"].shape == (4, 10)
  assert np.allclose(b["targets"].sum(1), 1.0)  # mixup/cutmix + smoothing keep a distribution
  ev = list(pipeline.finetune_iterator(_cfg("eurosat", prepared, image_size=32), global_batch_size=4, train=False))
  assert len(ev) == 1 and ev[0]["valid"].tolist() == [True, True, False, False]
  assert ev[0]["label"][:2].tolist() in ([0, 1], [1, 0])

  cfg = _cfg("bigearthnet", prepared, image_size=32, train_split="train")
  (b,) = _take(pipeline.finetune_iterator(cfg, global_batch_size=2), 1)
  assert b["image"].shape == (2, 32, 32, 12) and b["labels"].dtype == np.uint8 and b["labels"].shape == (2, 19)

  (b,) = _take(pipeline.finetune_iterator(_cfg("segmunich", prepared), global_batch_size=2), 1)
  assert b["image"].shape == (2, 128, 128, 12) and b["mask"].shape == (2, 128, 128)
  assert sorted(np.unique(b["mask"]).tolist()) == list(range(13))

  cfg = _cfg("oscd", prepared, image_size=64)
  ev = list(pipeline.finetune_iterator(cfg, global_batch_size=4, train=False))
  # test city 130x140 with 64 px windows, 50 % overlap: rows 0,32,64,66 x cols 0,32,64,76 = 16 windows
  assert sum(int(e["valid"].sum()) for e in ev) == 16
  assert ev[0]["image1"].shape == (4, 64, 64, 12) and ev[0]["change"].shape == (4, 64, 64)


def test_skip_policy_keeps_the_reasons_when_a_split_ends_empty(tmp_path):
  """Every val/test file broken with on_error=skip: tfds stops with "No examples were yielded"; the reasons used to
  be lost with the incomplete directory. Now one error naming the first files and the written report."""
  manual = tmp_path / "eurosat"
  fx.eurosat(str(manual))                                 # 3 train, 2 val, 1 test (Neumann split files)
  for tif in (manual / "EuroSAT_MS").rglob("*.tif"):
    tif.write_bytes(b"II*\x00garbage")
  with pytest.raises(DataError, match=r"eurosat_ms: preparation failed .* after skipping \d+ file\(s\) with "
                     r"on_error=skip; first: \w+_\d: .*\.tif.*prepare_report\.failed\.json"):
    prepare.prepare("eurosat", str(manual), str(tmp_path / "tfds"), on_error="skip")
  report = json.load(open(tmp_path / "tfds" / "eurosat_ms" / "prepare_report.failed.json"))
  assert report["skipped"] >= 1 and report["skipped_examples"][0]["reason"]


def test_prepare_command_reports_an_empty_bigearthnet_in_one_line(tmp_path, capsys):
  _, lists = fx.bigearthnet(str(tmp_path / "v1"))
  (tmp_path / "reben" / "BigEarthNet-S2").mkdir(parents=True)
  code = prepare.main(["--dataset", "bigearthnet", "--manual_dir", str(tmp_path / "reben"), "--data_dir",
                       str(tmp_path / "tfds"), "--lists_dir", lists])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "BigEarthNet v2.0 (reBEN) layout" in err[0]
  assert not (tmp_path / "tfds" / "bigearthnet_s2" / VERSION / "dataset_info.json").exists()   # nothing "prepared"
