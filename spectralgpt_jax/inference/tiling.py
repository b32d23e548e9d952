"""Scene tiling for inference: a regular tile grid anchored at the scene origin, and a strip-by-strip blender.

Tiles of side S start at multiples of the stride s = S * (1 - overlap) from the top-left pixel (the grid is padded
past the right / bottom edge with nodata instead of shifting the last tile back), so the tiling depends only on
positions: shifting a scene by a multiple of s shifts the output by the same amount. Overlapping predictions are
blended with the raised-cosine weight of whole-scene evaluation (`tasks.scenes.blend_weights`, largest at a tile's
centre, strictly positive) and normalised by the summed weight.

Memory does not grow with the scene: tiles are produced one tile row at a time, top to bottom, and the blender
keeps float64 sums for only S rows. When tile row r is complete, the rows from its top to the next tile row's top
can receive no more contributions and are handed out (`StripBlender.add_row` returns them); the last tile row
hands out the rest.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import numpy as np

from spectralgpt_jax.tasks.scenes import blend_weights


@dataclasses.dataclass(frozen=True)
class TileGrid:
  """Tile positions over a height x width scene. `overlap` is the fraction shared by neighbouring tiles."""
  height: int
  width: int
  tile: int
  overlap: float = 0.5

  def __post_init__(self):
    if not 0.0 <= self.overlap < 1.0:
      raise ValueError(f"overlap={self.overlap}: must be in [0, 1)")
    if self.height < 1 or self.width < 1:
      raise ValueError(f"empty scene ({self.height} x {self.width} px)")

  @property
  def stride(self) -> int:
    return max(1, int(round(self.tile * (1 - self.overlap))))

  def _starts(self, length: int) -> list[int]:
    # Enough tiles that the last one reaches the border; a scene smaller than a tile gets one (padded) tile.
    count = max(1, math.ceil((length - self.tile) / self.stride) + 1)
    return [i * self.stride for i in range(count)]

  @property
  def rows(self) -> list[int]:
    return self._starts(self.height)

  @property
  def cols(self) -> list[int]:
    return self._starts(self.width)

  @property
  def padded(self) -> bool:
    """Whether some tiles reach past the scene (filled with nodata there)."""
    return self.rows[-1] + self.tile > self.height or self.cols[-1] + self.tile > self.width

  def __len__(self) -> int:
    return len(self.rows) * len(self.cols)

  def tile_rows(self) -> Iterator[tuple[int, list[tuple[int, int]]]]:
    """(row index, [(y, x), ...]) for every tile row, top to bottom."""
    for r, y in enumerate(self.rows):
      yield r, [(y, x) for x in self.cols]


class StripBlender:
  """Blends [S, S, K] tile predictions into output rows, streaming: `add_row(r, predictions)` takes the tiles of
  tile row r (None for a skipped tile, e.g. wholly nodata) and returns `(row_offset, blended [h, width, K],
  covered [h, width])` for the rows that are now final (possibly none); `covered` is False where no tile
  contributed (those pixels are nodata)."""

  def __init__(self, grid: TileGrid, channels: int):
    self.grid, self.channels = grid, channels
    self.weight = blend_weights(grid.tile).astype(np.float64)
    self._sums = self._weights = None    # allocated by the first add_row (a sink may wait for its turn)
    self._top = 0            # scene row of self._sums[0]
    self._next_row = 0

  def add_row(self, r: int, predictions: list[np.ndarray | None]) -> tuple[int, np.ndarray, np.ndarray] | None:
    grid = self.grid
    if r != self._next_row:
      raise ValueError(f"tile row {r} arrived, expected {self._next_row} (rows must come in order)")
    if self._sums is None:
      padded_width = grid.cols[-1] + grid.tile
      self._sums = np.zeros((grid.tile, padded_width, self.channels), np.float64)
      self._weights = np.zeros((grid.tile, padded_width), np.float64)
    y = grid.rows[r]
    offset = y - self._top
    for x, pred in zip(grid.cols, predictions):
      if pred is None:
        continue
      if pred.shape != (grid.tile, grid.tile, self.channels):
        raise ValueError(f"tile prediction of shape {pred.shape}, expected {(grid.tile, grid.tile, self.channels)}")
      self._sums[offset:offset + grid.tile, x:x + grid.tile] += pred * self.weight[..., None]
      self._weights[offset:offset + grid.tile, x:x + grid.tile] += self.weight
    self._next_row += 1
    last = r == len(grid.rows) - 1
    done = (grid.height - self._top) if last else min(grid.rows[r + 1], grid.height) - self._top
    if done <= 0:
      return None
    return self._emit(done, last)

  def _emit(self, rows: int, last: bool) -> tuple[int, np.ndarray, np.ndarray]:
    width = self.grid.width
    sums, weights = self._sums[:rows, :width], self._weights[:rows, :width]
    covered = weights > 0
    blended = np.where(covered[..., None], sums / np.where(covered, weights, 1.0)[..., None], 0.0)
    out = (self._top, blended.astype(np.float32), covered)
    if not last:    # slide the window of held rows down: what remains shifts to the top, the rest starts empty
      self._sums = np.concatenate([self._sums[rows:], np.zeros_like(self._sums[:rows])])
      self._weights = np.concatenate([self._weights[rows:], np.zeros_like(self._weights[:rows])])
      self._top += rows
    else:           # the scene is done: free the held rows now (a time series keeps its sinks until the end)
      self._sums = self._weights = None
    return out
