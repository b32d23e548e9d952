"""`configs/finetune_*.py:demo --config.data.data_dir=DIR` trains the same small model on the task's prepared TFDS
dataset instead of the embedded demo data (outside checks rely on this): tiny trees in the real on-disk layouts,
prepared with the real builders, then a few steps and an evaluation from the demo configs."""
import json
import os
import sys

import pytest

from spectralgpt_jax.data import pipeline, prepare
from spectralgpt_jax.train import loop

import tasks_testlib as tl

sys.path.insert(0, os.path.join(tl.ROOT, "tests", "data"))
import s2_fixtures as fx  # noqa: E402

DATASETS = {"classification": "eurosat", "multilabel": "bigearthnet", "segmentation": "segmunich",
            "change_detection": "oscd"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("raw")
  data_dir = str(root / "tfds")
  fx.eurosat(str(root / "eurosat"), as_zip=True)
  _, lists = fx.bigearthnet(str(root / "bigearthnet"))
  fx.segmunich(str(root / "segmunich"))
  fx.oscd(str(root / "oscd"))
  for name in DATASETS.values():
    extra = ["--lists_dir", lists] if name == "bigearthnet" else []
    assert prepare.main(["--dataset", name, "--manual_dir", str(root / name), "--data_dir", data_dir] + extra) == 0
  return data_dir


@pytest.mark.parametrize("kind", list(DATASETS))
def test_demo_config_with_data_dir_reads_the_prepared_dataset(prepared, kind, tmp_path):
  overrides = {"data.data_dir": prepared, "total_steps": 2, "eval_every": 2, "checkpoint_every": 2,
               "batch_size": 8, "eval_batch_size": 8}
  if kind == "multilabel":    # the fixture's BigEarthNet has train and val only (2 and 1 patches)
    overrides.update({"data.train_split": "train", "data.eval_split": "val"})
  c = tl.tiny(kind, **overrides)
  assert c.data.demo and not pipeline.uses_demo_data(c.data)
  summary = loop.run(c, str(tmp_path))
  assert summary["final_step"] == 2
  result = json.loads((tmp_path / "eval" / "metrics.json").read_text())
  meta = json.loads((tmp_path / "export" / "metadata.json").read_text())
  assert meta["class_names"] == list(pipeline.class_names(c.data))           # the real dataset's classes ...
  assert len(meta["class_names"]) == {"eurosat": 10, "bigearthnet": 19, "segmunich": 13, "oscd": 2}[c.data.name]
  source, _ = pipeline.make_source(c.data, c.data.eval_split, train=False)
  if kind in ("segmentation", "change_detection"):                         # ... and its evaluation scenes
    assert result["num_examples"] == len(source.shapes)
    assert result["num_pixels"] == sum(h * w for h, w in source.shapes)
  else:
    assert result["num_examples"] == len(source)


def test_a_missing_split_is_a_data_error_naming_it(prepared, tmp_path):
  from spectralgpt_jax.data.readers.common import DataError
  with pytest.raises(DataError, match=r"has no split 'train_10pct'.*config\.data\.train_split"):
    loop.run(tl.tiny("multilabel", **{"data.data_dir": prepared}), str(tmp_path))
