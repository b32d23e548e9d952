"""Tile grid and streaming blender: complete coverage, rows emitted once and in order, identity on consistent
predictions, position consistency, skipped tiles."""
import numpy as np
import pytest

from spectralgpt_jax.inference.tiling import StripBlender, TileGrid


def _blend(scene: np.ndarray, grid: TileGrid, predict) -> tuple[np.ndarray, np.ndarray]:
  """Run the blender over `scene` [H, W, K] with `predict(tile, y, x)`; returns (output, covered) and checks the
  streaming contract (rows in order, each once, never more than a tile's height of rows held)."""
  h, w, k = scene.shape
  padded = np.zeros((grid.rows[-1] + grid.tile, grid.cols[-1] + grid.tile, k), scene.dtype)
  padded[:h, :w] = scene
  blender = StripBlender(grid, k)
  out, covered, next_row = np.full((h, w, k), np.nan, np.float32), np.zeros((h, w), bool), 0
  for r, positions in grid.tile_rows():
    preds = [predict(padded[y:y + grid.tile, x:x + grid.tile], y, x) for y, x in positions]
    done = blender.add_row(r, preds)
    last = r == len(grid.rows) - 1
    assert blender._sums is None if last else blender._sums.shape[0] == grid.tile   # freed once the scene is done
    if done is not None:
      top, values, cov = done
      assert top == next_row and values.shape[1] == w
      out[top:top + len(values)], covered[top:top + len(values)] = values, cov
      next_row = top + len(values)
  assert next_row == h
  return out, covered


@pytest.mark.parametrize("shape,tile,overlap", [((100, 70), 32, 0.5), ((64, 64), 32, 0.0), ((20, 90), 32, 0.5),
                                                ((130, 140), 64, 0.75)])
def test_consistent_predictions_are_reproduced_exactly(shape, tile, overlap):
  rng = np.random.default_rng(0)
  scene = rng.random((*shape, 3)).astype(np.float32)
  grid = TileGrid(*shape, tile, overlap)
  assert grid.rows[0] == 0 and grid.rows[-1] + tile >= shape[0] and grid.cols[-1] + tile >= shape[1]
  assert all(b - a == grid.stride for a, b in zip(grid.rows, grid.rows[1:]))
  out, covered = _blend(scene, grid, lambda t, y, x: t)
  assert covered.all()
  np.testing.assert_allclose(out, scene, rtol=1e-6, atol=1e-7)   # blending predictions that agree = identity


def test_small_scene_is_one_padded_tile():
  grid = TileGrid(20, 30, 64, 0.5)
  assert len(grid) == 1 and grid.padded


def test_position_consistency_under_a_shift_by_the_stride():
  """Tile outputs that depend on the position inside the tile (as a real model's may): shifting the scene by a
  multiple of the stride shifts the blended output by the same amount (away from the borders)."""
  rng = np.random.default_rng(1)
  tile, stride = 32, 16
  bias = rng.random((tile, tile, 1)).astype(np.float32)        # depends on the pixel's place in the tile
  predict = lambda t, y, x: t + bias
  big = rng.random((160, 160, 1)).astype(np.float32)
  a, _ = _blend(big[stride:, stride:], TileGrid(144, 144, tile, 0.5), predict)
  b, _ = _blend(big, TileGrid(160, 160, tile, 0.5), predict)
  inner = slice(tile, 144 - tile)
  np.testing.assert_allclose(a[inner, inner], b[stride:, stride:][inner, inner], rtol=1e-6)
  assert not np.allclose(a[inner, inner], big[stride:, stride:][inner, inner])   # the bias did matter


def test_skipped_tiles_leave_uncovered_pixels():
  grid = TileGrid(64, 64, 32, 0.0)
  scene = np.ones((64, 64, 2), np.float32)
  out, covered = _blend(scene, grid, lambda t, y, x: None if (y, x) == (32, 32) else t)
  assert not covered[32:, 32:].any() and covered[:32].all() and covered[32:, :32].all()


def test_rows_out_of_order_are_refused():
  grid = TileGrid(64, 64, 32, 0.5)
  blender = StripBlender(grid, 1)
  with pytest.raises(ValueError, match="tile row 1 arrived, expected 0"):
    blender.add_row(1, [None] * len(grid.cols))
