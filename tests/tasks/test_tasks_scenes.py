"""Whole-scene blending of overlapping window logits."""
import numpy as np
import pytest

from spectralgpt_jax.data import sources
from spectralgpt_jax.tasks import metrics as M
from spectralgpt_jax.tasks import scenes as S


def crops(full, index, window):
  return [full[y : y + window, x : x + window] for _, y, x in index]


def test_blend_weights():
  w = S.blend_weights(8)
  assert w.shape == (8, 8) and w.dtype == np.float32
  assert (w > 0).all() and np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])
  assert np.unravel_index(w.argmax(), w.shape) in [(3, 3), (3, 4), (4, 3), (4, 4)]
  assert S.blend_weights(128).min() > 0  # corner of a real window: strictly positive in float32
  assert S.blend_weights(1).tolist() == [[1.0]]


def test_window_index_is_the_order_of_scene_windows():
  shapes = [(100, 130), (64, 64), (70, 65)]
  scenes = [{"image": np.zeros((h, w, 1), np.float32)} for h, w in shapes]
  assert S.window_index(shapes, 64, 0.5) == sources.SceneWindows(scenes, 64, 0.5).index


def test_consistent_windows_blend_to_the_scene_exactly():
  rng = np.random.default_rng(0)
  full = rng.standard_normal((100, 130, 3)).astype(np.float32)
  index = S.window_index([full.shape[:2]], 32, 0.5)
  acc = S.SceneAccumulator([full.shape[:2]], index, 32, 3)
  results = [acc.add(i, y, x, c) for (i, y, x), c in zip(index, crops(full, index, 32))]
  assert all(r is None for r in results[:-1])
  scene, logits = results[-1]  # unpacks as a pair
  assert scene == 0 and logits.dtype == np.float32
  np.testing.assert_array_equal(logits, full)
  assert acc.done and acc.held == [] and acc.completed == [0]


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.75])
def test_window_positions_do_not_matter_for_consistent_predictions(overlap):
  rng = np.random.default_rng(1)
  full = rng.standard_normal((90, 77, 2)).astype(np.float32)
  index = S.window_index([full.shape[:2]], 24, overlap)
  acc = S.SceneAccumulator.sliding([full.shape[:2]], 24, 2, overlap=overlap)
  out = acc.add_batch(*np.array(index).T, np.stack(crops(full, index, 24)))
  assert len(out) == 1
  np.testing.assert_array_equal(out[0].logits, full)
  # Arbitrary (shifted, irregular) windows that cover the scene give the same result.
  windows = [(y, x) for y in (0, 20, 43, 66) for x in (0, 11, 30, 53)]
  acc = S.SceneAccumulator([full.shape[:2]], [(0, y, x) for y, x in windows], 24, 2)
  windows_logits = np.stack([full[y : y + 24, x : x + 24] for y, x in windows])
  out = acc.add_batch(np.zeros(16, int), *np.array(windows).T, windows_logits)
  np.testing.assert_array_equal(out[0].logits, full)


def test_overlap_is_weighted_by_the_raised_cosine():
  # Scene 4x6, windows of 4 at x=0 (all 0) and x=2 (all 1). Column 2 is column 2 of A and column 0 of B:
  # w(0) = 0.5 - 0.5 cos(pi/4) = 0.1464, w(2) = 0.5 - 0.5 cos(5 pi/4) = 0.8536 -> 0.1464 / (0.1464 + 0.8536).
  acc = S.SceneAccumulator([(4, 6)], [(0, 0, 0), (0, 0, 2)], 4, 1)
  acc.add(0, 0, 0, np.zeros((4, 4, 1)))
  out = acc.add(0, 0, 2, np.ones((4, 4, 1))).logits[..., 0]
  w0 = 0.5 - 0.5 * np.cos(np.pi / 4)
  expected_row = [0, 0, w0, 1 - w0, 1, 1]
  np.testing.assert_allclose(out, np.tile(expected_row, (4, 1)), atol=1e-6)


def test_every_pixel_is_counted_once():
  rng = np.random.default_rng(2)
  shapes = [(64, 64), (100, 70), (33, 129)]
  index = S.window_index(shapes, 32, 0.5)
  acc = S.SceneAccumulator(shapes, index, 32, 4)
  labels = [rng.integers(0, 4, s) for s in shapes]
  total = np.zeros((4, 4), np.int64)
  for i, y, x in index:
    noisy = rng.standard_normal((32, 32, 4))  # windows disagree: still one prediction per pixel
    done = acc.add(i, y, x, noisy)
    if done is not None:
      assert done.logits.shape == shapes[done.index] + (4,)
      total += M.confusion_matrix(labels[done.index], done.logits.argmax(-1), 4)
  assert total.sum() == sum(h * w for h, w in shapes)
  # Consistent one-hot predictions of the labels give a diagonal matrix of the same total.
  acc = S.SceneAccumulator.sliding(shapes, 32, 4)
  total = np.zeros((4, 4), np.int64)
  for i, y, x in index:
    done = acc.add(i, y, x, np.eye(4)[labels[i][y : y + 32, x : x + 32]])
    if done is not None:
      total += M.confusion_matrix(labels[done.index], done.logits.argmax(-1), 4)
  assert np.trace(total) == total.sum() == sum(h * w for h, w in shapes)
  assert acc.completed == [0, 1, 2] and acc.done


def test_completed_scenes_are_released():
  shapes = [(48, 48)] * 5
  index = S.window_index(shapes, 32, 0.5)  # 4 windows per scene
  acc = S.SceneAccumulator(shapes, index, 32, 2)
  most_held = 0
  for i, y, x in index:
    acc.add(i, y, x, np.zeros((32, 32, 2)))
    most_held = max(most_held, len(acc.held))
    assert acc.held in ([], [i])
  assert most_held == 1 and acc.held == [] and acc.remaining_windows() == 0
  assert not acc._pending  # no array of a completed scene is kept


def test_out_of_order_windows_and_padding_rows():
  rng = np.random.default_rng(3)
  shapes = [(50, 40), (40, 60)]
  fulls = [rng.standard_normal(s + (3,)).astype(np.float32) for s in shapes]
  index = S.window_index(shapes, 32, 0.5)
  order = rng.permutation(len(index))  # the two scenes interleaved
  acc = S.SceneAccumulator(shapes, index, 32, 3)
  done = {}
  for start in range(0, len(order), 3):
    rows = [index[k] for k in order[start : start + 3]]
    n = len(rows)
    # Pad to 3 rows with a copy of the first window, as PaddedShard does; valid=False must skip it.
    rows += [index[0]] * (3 - n)
    idx, ys, xs = np.array(rows).T
    logits = np.stack([fulls[i][y : y + 32, x : x + 32] for i, y, x in rows])
    valid = np.arange(3) < n
    for r in acc.add_batch(idx, ys, xs, logits, valid):
      done[r.index] = r.logits
  assert len(acc.held) == 0 and sorted(done) == [0, 1]
  for i in range(2):
    np.testing.assert_array_equal(done[i], fulls[i])


def test_unexpected_and_repeated_windows_are_errors():
  acc = S.SceneAccumulator.sliding([(48, 48)], 32, 1)
  acc.add(0, 0, 0, np.zeros((32, 32, 1)))
  with pytest.raises(ValueError, match="arrived twice"):
    acc.add(0, 0, 0, np.zeros((32, 32, 1)))
  with pytest.raises(ValueError, match="unexpected"):
    acc.add(0, 3, 0, np.zeros((32, 32, 1)))
  with pytest.raises(ValueError, match=r"\[32, 32, 1\]"):
    acc.add(0, 0, 16, np.zeros((32, 32, 2)))
  for y, x in [(0, 16), (16, 0), (16, 16)]:
    acc.add(0, y, x, np.zeros((32, 32, 1)))
  with pytest.raises(ValueError, match="already completed"):
    acc.add(0, 0, 0, np.zeros((32, 32, 1)))
  with pytest.raises(ValueError, match="leaves scene"):
    S.SceneAccumulator([(48, 48)], [(0, 0, 20)], 32, 1)
  with pytest.raises(ValueError, match="listed twice"):
    S.SceneAccumulator([(48, 48)], [(0, 0, 0), (0, 0, 0)], 32, 1)
  with pytest.raises(ValueError, match="no window"):
    S.SceneAccumulator([(48, 48), (40, 40)], [(0, 0, 0)], 32, 1)
  partial = S.SceneAccumulator([(48, 48)], [(0, 0, 0)], 32, 1)
  with pytest.raises(ValueError, match="do not cover"):
    partial.add(0, 0, 0, np.zeros((32, 32, 1)))
