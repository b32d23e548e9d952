"""grain pipelines: determinism, iterator state, per-process coverage, eval padding, global arrays, workers."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from spectralgpt_jax.data import bands, demo, pipeline
from spectralgpt_jax.data import transforms as T


def toy_source(n=12, size=8):
  rng = np.random.default_rng(0)
  return [
      {"image": rng.integers(0, 5000, (size, size, 12)).astype(np.uint16), "idx": np.int32(i), "id": f"t{i}"}
      for i in range(n)
  ]


TRAIN_OPS = [T.MinMaxPerImage(), T.RandomResizedCrop(6), T.RandomFlipRot(0.5), T.SelectKeys(("image", "idx"))]
EVAL_OPS = [T.MinMaxPerImage(), T.SelectKeys(("image", "idx", "valid"))]


def take(it, n):
  try:
    return [next(it) for _ in range(n)]
  finally:
    it.close()


def train_it(seed=0, **kw):
  kw = {"global_batch_size": 4, "prefetch": 0, **kw}
  return pipeline.build_iterator(toy_source(), TRAIN_OPS, train=True, seed=seed, **kw)


def test_same_seed_same_batches_other_seed_differs():
  a, b, c = take(train_it(0), 5), take(train_it(0), 5), take(train_it(1), 5)
  for x, y in zip(a, b):
    assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["idx"], y["idx"])
  assert not all(np.array_equal(x["idx"], z["idx"]) for x, z in zip(a, c))


def test_epochs_cover_everything_and_reshuffle():
  batches = take(train_it(0), 6)  # 2 epochs of 12
  epoch1 = np.concatenate([b["idx"] for b in batches[:3]])
  epoch2 = np.concatenate([b["idx"] for b in batches[3:]])
  assert sorted(epoch1) == sorted(epoch2) == list(range(12))
  assert not np.array_equal(epoch1, epoch2)


def test_restore_iterator_state_gives_same_next_batch():
  it = train_it(0, prefetch=2)
  take_some = [next(it) for _ in range(3)]
  state = it.get_state()
  expected = next(it)
  it.close()
  it2 = train_it(0, prefetch=2)
  it2.set_state(state)
  got = next(it2)
  it2.close()
  assert len(take_some) == 3
  assert np.array_equal(got["idx"], expected["idx"]) and np.array_equal(got["image"], expected["image"])


def test_start_batch_continues_the_stream_for_any_process_count():
  """What a resume on another host/worker layout relies on: global batch i is the same set of examples (with the
  same augmentations) whether read from the start, from `start_batch`, or by several processes."""
  full = take(train_it(0, global_batch_size=6), 5)
  resumed = take(train_it(0, global_batch_size=6, start_batch=3), 2)
  for a, b in zip(full[3:], resumed):
    assert np.array_equal(a["idx"], b["idx"]) and np.array_equal(a["image"], b["image"])
  by_two = [take(train_it(0, global_batch_size=6, process_index=p, process_count=2, start_batch=3), 1)[0] for p in (0, 1)]
  rows = {int(i): im for b in by_two for i, im in zip(b["idx"], b["image"])}
  assert sorted(rows) == sorted(full[3]["idx"].tolist())
  for i, im in zip(full[3]["idx"], full[3]["image"]):
    assert np.array_equal(rows[int(i)], im)
  with pytest.raises(ValueError, match="training iterators only"):
    pipeline.build_iterator(toy_source(), EVAL_OPS, train=False, global_batch_size=4, start_batch=1)


def test_processes_cover_each_example_exactly_once():
  n_proc = 3
  seen = []
  for p in range(n_proc):  # one epoch = 12 examples = 2 batches of 2 per process
    seen += [
        i
        for b in take(train_it(0, global_batch_size=6, process_index=p, process_count=n_proc), 2)
        for i in b["idx"].tolist()
    ]
  assert sorted(seen) == list(range(12))
  # the per-element augmentation is keyed by the global position: a single process sees the same crops
  single = take(train_it(0, global_batch_size=6), 2)
  imgs_single = {int(i): im for b in single for i, im in zip(b["idx"], b["image"])}
  multi = take(train_it(0, global_batch_size=6, process_index=1, process_count=n_proc), 1)[0]
  for i, im in zip(multi["idx"], multi["image"]):
    assert np.array_equal(imgs_single[int(i)], im)


@pytest.mark.parametrize("n,n_proc,batch", [(10, 3, 6), (5, 1, 4), (8, 2, 8), (1, 2, 2)])
def test_eval_pads_and_masks_every_example_once(n, n_proc, batch):
  valid, counts = [], []
  for p in range(n_proc):
    it = pipeline.build_iterator(
        toy_source(n), EVAL_OPS, train=False, global_batch_size=batch, prefetch=0, process_index=p, process_count=n_proc
    )
    bs = list(it)
    counts.append(len(bs))
    for b in bs:
      assert b["image"].shape[0] == batch // n_proc and b["valid"].dtype == bool
      valid += b["idx"][b["valid"]].tolist()
  assert sorted(valid) == list(range(n))
  assert len(set(counts)) == 1 and counts[0] == pipeline.num_eval_batches(n, batch, n_proc)


def test_global_arrays_on_8_devices():
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  sharding = NamedSharding(mesh, P("data"))
  (b,) = take(train_it(0, global_batch_size=8, sharding=sharding, prefetch=1), 1)
  assert isinstance(b["image"], jax.Array) and b["image"].shape == (8, 6, 6, 12)
  assert b["image"].sharding == sharding and len(b["image"].addressable_shards) == 8


def test_demo_pretrain_contract():
  cfg = pipeline.default_data_config("demo")
  assert set(cfg.keys()) >= {
      "name",
      "data_dir",
      "image_size",
      "normalization",
      "crop_scale",
      "hflip",
      "workers",
      "prefetch",
      "train_split",
      "eval_split",
  }
  cfg.image_size = 64
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  sharding = NamedSharding(mesh, P("data"))
  it = pipeline.pretrain_iterator(cfg, global_batch_size=8, sharding=sharding, seed=0, train=True)
  (b,) = take(it, 1)
  assert b["image"].shape == (8, 64, 64, 12) and b["image"].dtype == np.float32
  ev = pipeline.pretrain_iterator(cfg, global_batch_size=64, sharding=sharding, seed=0, train=False)
  batches = list(ev)
  n_val = len(demo.DemoPatches("val", 64))
  assert sum(int(np.asarray(x["valid"]).sum()) for x in batches) == n_val
  assert len(batches) == pipeline.num_eval_batches(n_val, 64)
  first = np.asarray(batches[0]["image"])
  assert first.min() >= 0 and first.max() <= 1 and set(batches[0]) == {"image", "valid"}


def test_worker_processes_match_in_process():
  cfg = pipeline.default_data_config("demo")
  cfg.image_size, cfg.prefetch = 32, 1
  ref = take(pipeline.pretrain_iterator(cfg, global_batch_size=4, seed=3), 3)
  cfg.workers = 2
  got = take(pipeline.pretrain_iterator(cfg, global_batch_size=4, seed=3), 3)
  for r, g in zip(ref, got):
    assert np.array_equal(np.asarray(r["image"]), np.asarray(g["image"]))


def test_default_configs():
  assert pipeline.default_data_config("fmow_sentinel").image_size == 96
  ft = pipeline.default_data_config("eurosat", "finetune")
  assert (ft.normalization, ft.stats, len(pipeline.class_names(ft))) == ("zscore", "ssl4eo_s12_l2a", 10)
  assert pipeline.default_data_config("bigearthnet", "finetune").train_split == "train_10pct"
  with pytest.raises(ValueError):
    pipeline.default_data_config("eurosat")  # no pretraining on EuroSAT
  assert demo.DemoPatches.bands == bands.CANONICAL
