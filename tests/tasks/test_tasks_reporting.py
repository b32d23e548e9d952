"""Report writers: JSON (NaN -> null), per-class tables, confusion PNGs, predictions, all atomic."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from spectralgpt_jax.tasks import metrics as M
from spectralgpt_jax.tasks import reporting as R

SEGMUNICH_LIKE = [f"class {i}" for i in range(12)] + ["a class name much longer than the label limit allows"]


def leftovers(directory):
  return [f for f in os.listdir(directory) if f.endswith(".tmp")]


def test_json_nan_becomes_null_and_round_trips(tmp_path):
  obj = {
      "miou": float("nan"), "iou": [0.5, float("inf"), np.float32(0.25)], "cm": np.arange(4).reshape(2, 2),
      "pair": (1, 2), "count": np.int64(7), 3: "int key", "ok": True,
  }
  path = R.write_json(tmp_path / "sub" / "eval.json", obj)
  text = open(path).read()
  assert "NaN" not in text and "Infinity" not in text
  assert json.loads(text) == {
      "miou": None, "iou": [0.5, None, 0.25], "cm": [[0, 1], [2, 3]], "pair": [1, 2], "count": 7, "3": "int key",
      "ok": True,
  }
  seg = M.segmentation_metrics(np.diag([3, 0, 2]))  # class 1 undefined
  R.write_json(tmp_path / "seg.json", seg)
  assert json.load(open(tmp_path / "seg.json"))["iou"] == [1.0, None, 1.0]
  assert leftovers(tmp_path) == [] and leftovers(tmp_path / "sub") == []


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
  path = R.write_json(tmp_path / "eval.json", {"a": 1})

  def fail(f):
    f.write(b"partial")
    raise RuntimeError("disk full")

  with pytest.raises(RuntimeError):
    R._atomic_write(path, fail)
  assert json.load(open(path)) == {"a": 1} and leftovers(tmp_path) == []
  with pytest.raises(TypeError):
    R.write_json(path, {"a": {1, 2}})  # not JSON-able: nothing written
  assert json.load(open(path)) == {"a": 1} and leftovers(tmp_path) == []


def test_per_class_table():
  columns = {"iou": [0.5, float("nan"), 1 / 3], "pixels": [10, 0, 2]}
  text, rows = R.per_class_table(["water", "forest", "urban"], columns)
  lines = text.splitlines()
  assert len(lines) == 5 and len({len(line) for line in lines}) == 1  # fixed width
  assert lines[0].split() == ["class", "iou", "pixels"]
  assert lines[2].split() == ["water", "0.5000", "10"]
  assert lines[3].split() == ["forest", "-", "0"]
  assert lines[4].split() == ["urban", "0.3333", "2"]
  assert rows == [
      {"class": "water", "iou": 0.5, "pixels": 10},
      {"class": "forest", "iou": None, "pixels": 0},
      {"class": "urban", "iou": 1 / 3, "pixels": 2},
  ]
  with pytest.raises(ValueError, match="iou"):
    R.per_class_table(["a", "b"], {"iou": [1.0]})


@pytest.mark.parametrize("k", [2, 13, 40])
def test_confusion_png(tmp_path, k):
  rng = np.random.default_rng(k)
  cm = rng.integers(0, 1_000_000, (k, k)) + np.diag(np.full(k, 10**10))
  cm[0] = 0  # an empty row must not break the row normalisation
  names = SEGMUNICH_LIKE if k == 13 else [f"c{i}" for i in range(k)]
  path = R.confusion_png(tmp_path / "cm.png", cm, names, title=f"{k} classes")
  with Image.open(path) as img:
    assert img.format == "PNG" and img.mode == "RGB"
    w, h = img.size
    pixels = np.asarray(img)
  assert 40 * min(k, 20) < w < 2500 and 40 * min(k, 20) < h < 2500
  # The diagonal dominates its rows, so the darkest blue of the colour map is present; so is the empty-row grey.
  assert (np.abs(pixels.astype(int) - [8, 48, 107]).sum(-1) < 10).any()
  assert (pixels == [225, 225, 225]).all(-1).any()
  assert leftovers(tmp_path) == []
  with pytest.raises(ValueError):
    R.confusion_png(tmp_path / "bad.png", cm, names[:-1])


def test_multilabel_confusion_png(tmp_path):
  rng = np.random.default_rng(0)
  mcm = M.multilabel_confusion(rng.random((50, 19)), rng.random((50, 19)) < 0.3, 0.5)
  names = [f"label {i} " * (3 if i == 0 else 1) for i in range(19)]
  path = R.multilabel_confusion_png(tmp_path / "ml.png", mcm, names, title="BigEarthNet-19")
  with Image.open(path) as img:
    assert img.format == "PNG"
    w, h = img.size
  assert 400 < w < 2000 and 300 < h < 2000 and h > w * 0.5  # 4 rows of 5 panels
  with pytest.raises(ValueError):
    R.multilabel_confusion_png(tmp_path / "bad.png", mcm[:3], names)


def test_save_predictions(tmp_path):
  ids = ["S2A_001", "S2B_a_long_identifier", "x"]
  scores = np.random.default_rng(0).random((3, 19)).astype(np.float32)
  path = R.save_predictions(tmp_path / "preds.npz", ids=ids, scores=scores, file=np.arange(3),
                            obj_ids=np.array(ids, dtype=object))
  with np.load(path) as data:  # allow_pickle=False by default
    assert sorted(data.files) == ["file", "ids", "obj_ids", "scores"]
    assert data["ids"].dtype.kind == "U" and data["ids"].tolist() == ids
    assert data["obj_ids"].tolist() == ids
    np.testing.assert_array_equal(data["scores"], scores)
    np.testing.assert_array_equal(data["file"], np.arange(3))
  with pytest.raises(TypeError, match="objects"):
    R.save_predictions(tmp_path / "bad.npz", x=np.array([{"a": 1}], dtype=object))
  assert not os.path.exists(tmp_path / "bad.npz") and leftovers(tmp_path) == []
