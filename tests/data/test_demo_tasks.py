"""Demo downstream tasks: schemas, disjoint regions, labels recomputed from the documented rules, the change
simulation, determinism, and the pipeline wiring (make_source, class_names, one batch + one eval pass each)."""

import pickle

import numpy as np
import pytest

from spectralgpt_jax.data import bands, demo, pipeline
from spectralgpt_jax.data import demo_tasks as dt
from spectralgpt_jax.data.readers import bigearthnet, eurosat, segmunich

K = len(dt.CLASS_NAMES)
PATCH_SOURCES = {
    dt.DemoClassification: ("train", "val"),
    dt.DemoMultiLabel: ("train", "val"),
    dt.DemoSegmentation: ("train", "test"),
}


@pytest.fixture(scope="module")
def src():
  """Every source and split, built once for the module."""
  out = {(cls, s): cls(s) for cls, splits in PATCH_SOURCES.items() for s in splits}
  out.update({(dt.DemoChange, s): dt.DemoChange(s) for s in ("train", "test")})
  return out


@pytest.fixture(scope="module")
def scene():
  return np.asarray(demo.load_scene())


def boundary(h):
  return dt.region_rows("val", h)[0]


# ----------------------------------------------------------------------------------------------- schemas
def test_schemas_match_the_prepared_datasets(src):
  for split in ("train", "val"):
    ex = src[dt.DemoClassification, split][0]
    assert set(ex) == {"image", "label", "id"} and isinstance(ex["id"], str)
    assert ex["image"].shape == (64, 64, 12) and ex["image"].dtype == np.uint16
    assert np.issubdtype(np.asarray(ex["label"]).dtype, np.integer) and 0 <= int(ex["label"]) < K
    ex = src[dt.DemoMultiLabel, split][0]
    assert set(ex) == {"image", "labels", "id"} and isinstance(ex["id"], str)
    assert ex["image"].shape == (120, 120, 12) and ex["image"].dtype == np.uint16
    assert ex["labels"].shape == (K,) and ex["labels"].dtype == np.uint8 and set(np.unique(ex["labels"])) <= {0, 1}
  for split in ("train", "test"):
    ex = src[dt.DemoSegmentation, split][0]
    assert set(ex) == {"image", "mask", "id"} and isinstance(ex["id"], str)
    assert ex["image"].shape == (128, 128, 10) and ex["image"].dtype == np.uint16
    assert ex["mask"].shape == (128, 128) and ex["mask"].dtype == np.uint8 and ex["mask"].max() < K
    ex = src[dt.DemoChange, split][0]
    assert set(ex) == {"image1", "image2", "change", "id"} and isinstance(ex["id"], str)
    h, w = ex["change"].shape
    assert 256 <= h <= 400 and h == w and ex["change"].dtype == np.uint8 and set(np.unique(ex["change"])) == {0, 1}
    for k in ("image1", "image2"):
      assert ex[k].shape == (h, w, 12) and ex[k].dtype == np.uint16
  assert dt.DemoSegmentation.bands == bands.canonical_subset(bands.ON_DISK["segmunich"])
  assert dt.DemoSegmentation.bands == ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12")
  assert dt.DemoClassification.bands == dt.DemoMultiLabel.bands == dt.DemoChange.bands == bands.CANONICAL
  assert dt.DemoChange.class_names == ("no change", "change") and dt.DemoClassification.class_names == dt.CLASS_NAMES


def test_segmentation_image_holds_the_named_bands(src, scene):
  s = src[dt.DemoSegmentation, "train"]
  (y, x), ex = s.windows[3], s[3]
  for i, b in enumerate(s.bands):
    assert np.array_equal(ex["image"][..., i], scene[y : y + 128, x : x + 128, bands.CANONICAL.index(b)])


def test_split_sizes_and_aliases(src):
  assert 1000 <= len(src[dt.DemoClassification, "train"]) <= 4000
  assert 100 <= len(src[dt.DemoClassification, "val"]) < 1000
  assert len(dt.DemoMultiLabel("train_10pct")) == len(src[dt.DemoMultiLabel, "train"])
  assert dt.DemoMultiLabel("test")[5]["id"] == src[dt.DemoMultiLabel, "val"][5]["id"]
  with pytest.raises(KeyError, match="no split"):
    dt.DemoSegmentation("val_10pct")


# ----------------------------------------------------------------------------------------------- regions
def test_train_and_eval_regions_do_not_overlap(src, scene):
  b = boundary(scene.shape[0])
  for (cls, split), s in src.items():
    if cls is dt.DemoChange:  # the cities and the places their pastes come from
      rows = [(lay["corner"][0], lay["corner"][0] + lay["size"]) for lay in s.layouts]
      rows += [(sy, sy + h) for lay in s.layouts for _, _, h, _, sy, _ in lay["pastes"]]
    else:
      rows = [(y, y + s.size) for y, _ in s.windows]
    if split == "train":
      assert max(r1 for _, r1 in rows) <= b, cls
    else:
      assert min(r0 for r0, _ in rows) >= b and max(r1 for _, r1 in rows) <= scene.shape[0], cls


def test_every_class_in_train_and_eval(src):
  for split in ("train", "val"):
    assert (src[dt.DemoClassification, split].class_counts() > 0).all()
    assert (src[dt.DemoMultiLabel, split].labels.sum(0) > 0).all()
  for split in ("train", "test"):
    seg = src[dt.DemoSegmentation, split]
    present = np.zeros(K, bool)
    for i in range(len(seg)):
      present[np.unique(seg[i]["mask"])] = True
    assert present.all(), split


# ----------------------------------------------------------------------------------------------- labels
def rules_map(scene, y, x, size, r=dt.MODE_WINDOW // 2):
  """The docstring's rules recomputed independently (float64 indices, brute-force mode) on one window."""
  s = scene[y - r : y + size + r, x - r : x + size + r].astype(np.float64)
  band = {b: s[..., i] for i, b in enumerate(bands.CANONICAL)}
  mndwi = (band["B03"] - band["B11"]) / (band["B03"] + band["B11"])
  ndvi = (band["B08"] - band["B04"]) / (band["B08"] + band["B04"])
  raw = np.select([mndwi > 0.7, mndwi > 0.0, ndvi >= 0.55, ndvi >= 0.3], [0, 1, 4, 3], default=2)
  win = np.lib.stride_tricks.sliding_window_view(raw, (2 * r + 1, 2 * r + 1))
  counts = np.stack([(win == c).sum((-1, -2)) for c in range(K)], -1)
  return counts.argmax(-1)  # first maximum = lowest class index, as documented


def interior(source, count=6):
  """A few windows of `source` away from the borders of its region (the brute-force mode needs the margin;
  the map is smoothed per region)."""
  h, w = demo.load_scene().shape[:2]
  y0, y1 = dt.region_rows(source.region, h)
  r, n = dt.MODE_WINDOW // 2, source.size
  ok = [i for i, (y, x) in enumerate(source.windows) if y0 + r <= y <= y1 - n - r and r <= x <= w - n - r]
  return ok[:: max(1, len(ok) // count)][:count]


def test_labels_follow_the_documented_rules(src, scene):
  for split in ("train", "test"):
    seg = src[dt.DemoSegmentation, split]
    for i in interior(seg):
      assert np.array_equal(seg[i]["mask"], rules_map(scene, *seg.windows[i], 128)), (split, i)
  for split in ("train", "val"):
    cls = src[dt.DemoClassification, split]
    for i in interior(cls, 10):
      share = np.bincount(rules_map(scene, *cls.windows[i], 64).ravel(), minlength=K) / 64**2
      assert share.max() >= 0.5 and int(cls[i]["label"]) == share.argmax()
    ml = src[dt.DemoMultiLabel, split]
    for i in interior(ml):
      share = np.bincount(rules_map(scene, *ml.windows[i], 120).ravel(), minlength=K) / 120**2
      assert np.array_equal(ml[i]["labels"], (share >= 0.05).astype(np.uint8))


def test_landcover_cache_is_the_built_map(scene):
  assert np.array_equal(dt.load_land_cover(), dt.build_land_cover(scene))
  b = boundary(scene.shape[0])
  changed = scene.copy()
  changed[b:] = changed[b:][::-1]  # anything in the val region: the train labels do not move
  assert np.array_equal(dt.build_land_cover(changed)[:b], dt.load_land_cover()[:b])
  assert dt.load_land_cover().dtype == np.uint8 and dt.load_land_cover().shape == scene.shape[:2]


# ----------------------------------------------------------------------------------------------- change
def test_change_is_exactly_the_pasted_land_cover_change(src, scene):
  lc = np.asarray(dt.load_land_cover())
  for split in ("train", "test"):
    s = src[dt.DemoChange, split]
    fractions = []
    for i, lay in enumerate(s.layouts):
      ex, (y, x), n = s[i], lay["corner"], lay["size"]
      assert np.array_equal(ex["image1"], scene[y : y + n, x : x + n])
      content, cover = scene[y : y + n, x : x + n].copy(), lc[y : y + n, x : x + n].copy()
      pasted = np.zeros((n, n), bool)
      for ty, tx, h, w, sy, sx in lay["pastes"]:
        content[ty : ty + h, tx : tx + w] = scene[sy : sy + h, sx : sx + w]
        cover[ty : ty + h, tx : tx + w] = lc[sy : sy + h, sx : sx + w]
        pasted[ty : ty + h, tx : tx + w] = True
      assert np.array_equal(ex["change"], (pasted & (cover != lc[y : y + n, x : x + n])).astype(np.uint8))
      # image2 = a mild acquisition difference of the (pasted) content: gain, offset, noise
      expected = content.astype(np.float64) * lay["gain"] + lay["offset"]
      resid = ex["image2"].astype(np.float64) - np.clip(expected, 0, 65535)
      assert np.abs(resid).max() <= 8 * s.noise and abs(resid.mean()) < 1 and 5 < resid.std() < 15
      outside = ~pasted
      assert (ex["image2"][outside] != ex["image1"][outside]).mean() > 0.9  # image1 != image2 is no detector
      rel = np.abs(ex["image2"][outside].astype(np.float64) - ex["image1"][outside]) / (ex["image1"][outside] + 100.0)
      assert rel.mean() < 0.1
      fractions.append(ex["change"].mean())
    assert 0.05 <= np.mean(fractions) <= 0.2, (split, fractions)


# ----------------------------------------------------------------------------------------------- determinism
def test_deterministic_and_picklable(src):
  for (cls, split), s in src.items():
    again = cls(split)
    assert repr(again) == repr(s)
    restored = pickle.loads(pickle.dumps(s))
    a, b, c = s[len(s) - 1], again[len(s) - 1], restored[len(s) - 1]
    for k, v in a.items():
      assert np.array_equal(v, b[k]) and np.array_equal(v, c[k]), (cls, split, k)
  assert repr(dt.DemoChange("test", seed=1)) != repr(src[dt.DemoChange, "test"])
  assert not np.array_equal(dt.DemoChange("test", seed=1)[0]["image2"], src[dt.DemoChange, "test"][0]["image2"])


# ----------------------------------------------------------------------------------------------- pipeline
def demo_cfg(name, **kw):
  cfg = pipeline.default_data_config(name, "finetune")
  cfg.demo, cfg.data_dir, cfg.prefetch, cfg.read_threads = True, "", 1, 1
  cfg.update(kw)
  return cfg


def test_make_source_picks_demo_only_without_data_dir(tmp_path, monkeypatch):
  assert pipeline.default_data_config("eurosat", "finetune").demo is False
  expected = {"eurosat": dt.DemoClassification, "bigearthnet": dt.DemoMultiLabel}
  for name, cls in expected.items():
    source, names = pipeline.make_source(demo_cfg(name), "train")
    assert isinstance(source, cls) and names == cls.bands
  source, names = pipeline.make_source(demo_cfg("segmunich"), "train")       # dense: windows of whole tiles
  assert isinstance(source.scenes, dt.DemoSegmentation) and names == dt.DemoSegmentation.bands
  source, names = pipeline.make_source(demo_cfg("oscd"), "test")
  assert isinstance(source.scenes, dt.DemoChange) and names == bands.CANONICAL and source[0]["image1"].shape[0] == 128
  with pytest.raises(FileNotFoundError, match="not prepared"):
    pipeline.make_source(demo_cfg("eurosat", data_dir=str(tmp_path / "nowhere")), "train")
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match="not prepared"):
    pipeline.make_source(demo_cfg("segmunich", demo=False), "train")


def test_class_names():
  assert pipeline.class_names(demo_cfg("eurosat")) == dt.CLASS_NAMES
  assert pipeline.class_names(demo_cfg("segmunich")) == dt.CLASS_NAMES
  assert pipeline.class_names(demo_cfg("oscd")) == pipeline.class_names(demo_cfg("oscd", demo=False))
  assert pipeline.class_names(demo_cfg("oscd")) == ("no change", "change")
  real = {"eurosat": eurosat.CLASSES, "bigearthnet": bigearthnet.LABELS_19, "segmunich": segmunich.CLASSES}
  for name, names in real.items():
    assert pipeline.class_names(demo_cfg(name, data_dir="/data")) == tuple(names)
    assert len(names) == {"eurosat": 10, "bigearthnet": 19, "segmunich": 13}[name]
  with pytest.raises(ValueError):
    pipeline.class_names(pipeline.default_data_config("demo"))


@pytest.mark.parametrize(
    "name,size,keys",
    [
        ("eurosat", 64, {"image": (64, 64, 12), "targets": (5,)}),
        ("bigearthnet", 64, {"image": (64, 64, 12), "labels": (5,)}),
        ("segmunich", 128, {"image": (128, 128, 12), "mask": (128, 128)}),
        ("oscd", 128, {"image1": (128, 128, 12), "image2": (128, 128, 12), "change": (128, 128)}),
    ],
)
def test_finetune_iterator_on_demo_data(name, size, keys):
  cfg = demo_cfg(name, image_size=size)  # the mixup width comes from class_names
  it = pipeline.finetune_iterator(cfg, global_batch_size=4, sharding=None, seed=0, train=True)
  try:
    batch = next(it)
  finally:
    it.close()
  assert set(batch) == set(keys)                  # ids and window positions only in evaluation batches
  for k, shape in keys.items():
    assert batch[k].shape == (4, *shape), k
  assert batch["image" if "image" in batch else "image1"].dtype == np.float32
  ev = pipeline.finetune_iterator(cfg, global_batch_size=32, sharding=None, seed=0, train=False)
  batches = list(ev)
  source, _ = pipeline.make_source(cfg, cfg.eval_split, train=False)
  assert sum(int(b["valid"].sum()) for b in batches) == len(source)
  assert len(batches) == pipeline.num_eval_batches(len(source), 32)


def test_mixup_width_is_the_class_count_of_the_data():
  """Mixed targets have one column per class of the data actually read (5 demo classes, not EuroSAT's 10)."""
  cfg = demo_cfg("eurosat", image_size=32)
  assert cfg.mixup > 0 and "num_classes" not in cfg
  it = pipeline.finetune_iterator(cfg, global_batch_size=4, train=True)
  try:
    assert next(it)["targets"].shape == (4, len(dt.CLASS_NAMES))
  finally:
    it.close()
