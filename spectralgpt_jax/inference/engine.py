"""The streaming inference loop shared by `predict` and `embed`: tile rows -> prepare -> jitted forward -> output.

For every tile row of the grid (`tiling.TileGrid`, top to bottom): read one strip of the scene (all bands the
checkpoint needs, S rows, boundless: beyond the scene is nodata), cut its tiles, skip the wholly-nodata ones,
prepare the rest as training did (`Checkpoint.prepare`), run them through the model in batches of `batch_size`
(one jitted function, sharded over the device mesh's data axes; the last batch padded), and hand the tile outputs
to a sink (blend + write rows, or one output pixel / table row per tile). Only one strip of input and S rows of
output sums are held at a time, so memory does not grow with the scene.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from rasterio.windows import Window

from spectralgpt_jax import sharding
from spectralgpt_jax.inference.tiling import TileGrid


@dataclasses.dataclass
class TileBatch:
  """The valid tiles of one tile row: positions, raw pixels, validity and prepared model inputs."""
  positions: list[tuple[int, int]]          # (y, x) of the tiles kept, in column order
  columns: list[int]                        # their column indices in the grid
  raw: list[np.ndarray]                     # per input scene: [n, S, S, input_bands]
  valid: np.ndarray                         # [n, S, S] valid in every input scene
  inputs: list[np.ndarray]                  # per input scene: [n, S, S, model_bands] prepared
  strip_valid: np.ndarray                   # [S, padded width] validity of the whole strip


class Forward:
  """`fn(*inputs) -> outputs` on batches of prepared tiles, jitted once and sharded over the mesh's data axes.

  `apply(model, *arrays)` is the task's forward; its outputs keep the batch axis. Batches smaller than
  `batch_size` (the last tiles of a row) are padded and the padding dropped again."""

  def __init__(self, model, apply: Callable, *, batch_size: int, mesh_shape: Sequence[int] = (-1, 1, 1)):
    try:
      self.mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, mesh_shape)))
    except sharding.MeshError:    # its message names config.mesh, the training config's key
      raise sharding.MeshError(
          f"--mesh {','.join(str(s) for s in mesh_shape)}: cannot be formed from the {jax.device_count()} devices "
          "(data,fsdp,model sizes that multiply to the device count; one may be -1 to take the rest)") from None
    parallel = sharding.data_parallel_size(self.mesh)
    if batch_size < 1 or batch_size % parallel:
      raise sharding.MeshError(f"--batch_size={batch_size}: must be a positive multiple of the {parallel} "
                               "data-parallel devices of --mesh")
    self.batch_size = batch_size
    graphdef, state = nnx.split(model)
    self._shardings = sharding.shardings_for(state, nnx.get_partition_spec(state), self.mesh)
    self.state = jax.device_put(state, self._shardings)
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self._apply = lambda state, *xs: apply(nnx.merge(graphdef, state), *xs)
    self._jitted: dict[int, Callable] = {}

  def _fn(self, state, *xs):
    if len(xs) not in self._jitted:       # one compile per input count (change detection takes two dates)
      self._jitted[len(xs)] = jax.jit(self._apply, in_shardings=(self._shardings,) + (self.batch_sharding,) * len(xs),
                                      out_shardings=self.batch_sharding)
    return self._jitted[len(xs)](state, *xs)

  def __call__(self, *inputs: np.ndarray):
    n = inputs[0].shape[0]
    outs = []
    for start in range(0, n, self.batch_size):
      chunk = [x[start:start + self.batch_size] for x in inputs]
      pad = self.batch_size - chunk[0].shape[0]
      if pad:
        chunk = [np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) for x in chunk]
      with jax.set_mesh(self.mesh):     # the models' activation constraints
        out = self._fn(self.state, *[jax.device_put(jnp.asarray(x), self.batch_sharding) for x in chunk])
      out = jax.tree.map(lambda a: np.asarray(a)[:self.batch_size - pad], out)
      outs.append(out)
    return jax.tree.map(lambda *parts: np.concatenate(parts), *outs)


def gdal_cache(scenes: Sequence):
  """rasterio.Env sizing GDAL's block cache to what a strip needs: the two block rows of every input file that a
  strip may straddle (at least 64 MB, at most 1 GB; output blocks are written back when the cache is full).

  GDAL's default is 5 % of RAM: it then fills with a big scene's decoded blocks and memory grows with the scene.
  GDAL_CACHEMAX in the environment takes precedence (GDAL reads it itself)."""
  import rasterio
  if "GDAL_CACHEMAX" in os.environ:
    return contextlib.nullcontext()
  need = sum(2 * scene.block_row_bytes() for scene in scenes)
  return rasterio.Env(GDAL_CACHEMAX=int(min(max(need, 64 << 20), 1 << 30)))   # rasterio passes bytes


def tile_batches(scenes: Sequence, checkpoint, grid: TileGrid, min_valid: float = 0.0
                 ) -> Iterator[tuple[int, TileBatch]]:
  """(tile row, TileBatch) for every tile row: the tiles with a valid pixel and at least `min_valid` of them valid;
  rows without such a tile give an empty batch."""
  size = grid.tile
  padded_width = grid.cols[-1] + size
  for r, positions in grid.tile_rows():
    y = positions[0][0]
    strips = [scene.read(checkpoint.input_bands, Window(0, y, padded_width, size)) for scene in scenes]
    strip_valid = np.logical_and.reduce([valid for _, valid in strips])
    keep = [(c, (ty, tx)) for c, (ty, tx) in enumerate(positions)
            if strip_valid[:, tx:tx + size].any() and strip_valid[:, tx:tx + size].mean() >= min_valid]
    columns = [c for c, _ in keep]
    kept = [p for _, p in keep]
    valid = np.stack([strip_valid[:, x:x + size] for _, x in kept]) if kept else np.zeros((0, size, size), bool)
    raw = [np.stack([pixels[:, x:x + size] for _, x in kept]) if kept else
           np.zeros((0, size, size, len(checkpoint.input_bands)), np.float32) for pixels, _ in strips]
    inputs = [checkpoint.prepare(x, valid) if kept else
              np.zeros((0, size, size, len(checkpoint.model_bands)), np.float32) for x in raw]
    yield r, TileBatch(kept, columns, raw, valid, inputs, strip_valid)


class Progress:
  """tqdm bar with tiles/s on a terminal, periodic log lines otherwise."""

  def __init__(self, total: int, enabled: bool = True):
    import sys
    self.total, self.done, self.start = total, 0, time.time()
    self.bar = None
    if enabled and sys.stderr.isatty():
      from tqdm import tqdm
      self.bar = tqdm(total=total, unit="tile", dynamic_ncols=True)
    self._last_log = self.start

  def update(self, n: int) -> None:
    self.done += n
    if self.bar is not None:
      self.bar.update(n)
    elif time.time() - self._last_log > 10 or self.done == self.total:
      self._last_log = time.time()
      logging.info("%d / %d tiles, %.1f tiles/s", self.done, self.total, self.rate)

  @property
  def rate(self) -> float:
    return self.done / max(time.time() - self.start, 1e-9)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
