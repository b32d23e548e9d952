r"""Scene embeddings from any checkpoint's encoder: one GeoParquet row per tile, optional per-patch GeoTIFF.

  python -m spectralgpt_jax.embed --checkpoint runs/demo/export --input SCENE.tif --output emb.parquet
  python -m spectralgpt_jax.embed --checkpoint CKPT --input S2.SAFE --output emb.parquet --per_patch patches.tif
  python -m spectralgpt_jax.embed --checkpoint CKPT --input MAY.SAFE --input JUNE.SAFE --output series.parquet

Tiles of the checkpoint's image size (no overlap by default) are prepared as in training and run through the
encoder on all tokens; each tile's row holds `tile_id`, `row`, `col` (tile indices), `x_px`, `y_px` (its top-left
pixel), `valid_fraction`, `input_index` and `datetime` (which --input, acquired when), its footprint polygon in the
scene CRS (`geometry`, WKB) and `embedding`: the LayerNorm-ed mean of the last block's tokens (float32, the
encoder width long), the pooling of the classifier.
GeoParquet 1.1.0 (`geo` metadata: primary column, WKB, the scene's PROJJSON CRS, bbox); readable by geopandas.
`--per_patch` writes the per-patch embeddings (LayerNorm-ed tokens averaged over the spectral groups) as a
multi-band COG on the patch grid (one pixel per patch, encoder-width bands); it needs --overlap 0. Wholly nodata
tiles are skipped, and with `--min_valid_fraction F` every tile whose valid fraction is below F (with
`--cloud_mask`, cloud pixels are not valid: `--cloud_mask auto --min_valid_fraction 0.9` keeps clear tiles only).
Several `--input`s make a time series: all on the first one's grid and tile grid (so `tile_id` is the same place in
every input), rows input after input, times from the inputs (STAC, .SAFE, file names) or `--datetime`.
"""
from __future__ import annotations

import contextlib
import logging
import shlex
import sys

import numpy as np
from affine import Affine
from shapely.geometry import box

from spectralgpt_jax.inference import cli


def embed_fn(model, x):
  """(pooled [n, D], per-patch [n, h, w, D]) of the encoder on all tokens."""
  tokens = model.encoder.features(x)
  pooled = model.encoder.norm(tokens.mean(axis=1))
  t, h, w = model.cfg.grid
  patches = model.encoder.norm(tokens).reshape(tokens.shape[0], t, h, w, -1).mean(axis=1)
  return pooled, patches


class PatchSink:
  """Writes tile rows of per-patch embeddings into a COG on the patch grid."""

  def __init__(self, path: str, grid, scene, patch: int, dim: int, tags: dict):
    from spectralgpt_jax.inference import writers
    self.grid, self.patch, self.dim = grid, patch, dim
    self.width, self.height = -(-scene.width // patch), -(-scene.height // patch)
    self.writer = writers.RasterWriter(path, crs=scene.crs, transform=scene.transform @ Affine.scale(patch),
                                       width=self.width, height=self.height, count=dim, dtype="float32",
                                       nodata=float("nan"), band_descriptions=[f"embedding_{i}" for i in range(dim)],
                                       tags=tags, kind="continuous")

  def add(self, r: int, batch, patches: np.ndarray | None) -> None:
    side, y = self.grid.tile // self.patch, self.grid.rows[r] // self.patch
    rows = min(side, self.height - y)
    if rows <= 0:
      return
    strip = np.full((side, len(self.grid.cols) * side, self.dim), np.nan, np.float32)
    for i, (c, (_, x)) in enumerate(zip(batch.columns, batch.positions)):
      valid = batch.valid[i].reshape(side, self.patch, side, self.patch).any(axis=(1, 3))
      strip[:, c * side:(c + 1) * side] = np.where(valid[..., None], patches[i], np.nan)
    self.writer.write(strip[:rows, :self.width], y)


def run(args) -> list[str]:
  from spectralgpt_jax.inference import checkpoint as ckpt_lib
  from spectralgpt_jax.inference import engine, writers
  checkpoint = ckpt_lib.load(args.checkpoint)
  times = _check_args(args)
  scenes = cli.open_inputs(args, checkpoint, cli.cloud_masks(args, len(args.input)))
  try:
    first = scenes[0]
    grid = cli.tile_grid(first, checkpoint, args.overlap, dense=False)
    if args.per_patch and grid.stride != grid.tile:
      raise cli.UsageError(f"--per_patch {args.per_patch}: patch embeddings need non-overlapping tiles "
                           f"(--overlap 0, not {grid.overlap})")
    times = times or [scene.acquired for scene in scenes]
    forward = engine.Forward(checkpoint.model, embed_fn, batch_size=args.batch_size,
                             mesh_shape=cli.mesh_shape(args.mesh))
    dim, patch = checkpoint.cfg.embed_dim, checkpoint.cfg.patch_size
    tags = {"checkpoint": args.checkpoint, "software": "spectralgpt_jax",
            "command": " ".join(shlex.quote(a) for a in sys.argv), **cli.input_tags(scenes, times)}
    meta = {**tags, "arch": checkpoint.metadata.get("arch"), "task": checkpoint.task, "tile_px": grid.tile,
            "stride_px": grid.stride, "bands": list(checkpoint.model_bands), "input": args.input[0],
            "inputs": [cli.input_record(scene, when, bool(args.datetime)) for scene, when in zip(scenes, times)],
            "normalization": checkpoint.normalization, "embedding": "LayerNorm(mean of last-block tokens)"}
    table = writers.GeoParquetWriter(args.output, crs=first.crs, embedding_dim=dim, metadata=meta,
                                     extra_columns=_extra_columns())
    patches = PatchSink(args.per_patch, grid, first, patch, dim, tags) if args.per_patch else None
    with table, (patches.writer if patches else contextlib.nullcontext()):
      progress = engine.Progress(len(grid) * len(scenes), enabled=not args.no_progress)
      for index, scene in enumerate(scenes):
        with engine.gdal_cache([scene]):
          for r, batch in engine.tile_batches([scene], checkpoint, grid, min_valid=args.min_valid_fraction):
            outputs = forward(*batch.inputs) if batch.positions else None
            if batch.positions:
              _add_rows(table, r, batch, outputs[0], grid, first.transform, index, times[index])
            if patches:
              patches.add(r, batch, None if outputs is None else outputs[1])
            progress.update(len(grid.cols))
      progress.close()
      files = [table] + ([patches.writer] if patches else [])
      for writer in files:    # both finished (the slow part) before either is published
        writer.finish()
      writers.publish_together(files)
      written = [writer.path for writer in files]
    logging.info("%d tiles x %d inputs, %.1f tiles/s", len(grid), len(scenes), progress.rate)
  finally:
    for scene in scenes:
      scene.close()
  return written


def _check_args(args) -> list | None:
  """Flag combinations checked before any work; the --datetime overrides (UTC), if given."""
  cli.check_fraction("--min_valid_fraction", args.min_valid_fraction)
  if args.per_patch and len(args.input) > 1:
    raise cli.UsageError(f"--per_patch writes one scene's patch grid; it takes one --input, not {len(args.input)}")
  return cli.acquisition_times(args, len(args.input))


def _extra_columns():
  import pyarrow as pa
  return {"x_px": pa.int32(), "y_px": pa.int32(), "valid_fraction": pa.float32(), "input_index": pa.int16(),
          "datetime": pa.timestamp("us", tz="UTC")}


def _add_rows(table, r: int, batch, pooled: np.ndarray, grid, transform, index: int, when) -> None:
  size, t = grid.tile, transform
  footprints = []
  for y, x in batch.positions:
    x0, y0 = t @ (x, y)
    x1, y1 = t @ (x + size, y + size)
    footprints.append(box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
  cols = np.asarray(batch.columns, np.int32)
  n = len(cols)
  table.add(tile_id=(r * len(grid.cols) + cols).astype(np.int64), row=np.full(n, r, np.int32), col=cols,
            geometry=footprints, embedding=pooled.astype(np.float32),
            x_px=np.asarray([x for _, x in batch.positions], np.int32),
            y_px=np.asarray([y for y, _ in batch.positions], np.int32),
            valid_fraction=batch.valid.mean(axis=(1, 2)).astype(np.float32),
            input_index=np.full(n, index, np.int16), datetime=[when] * n)


def main(argv: list[str] | None = None) -> int:
  from spectralgpt_jax import predict
  return cli.main(run, predict.parse_args(argv, description=__doc__, embed=True))


if __name__ == "__main__":
  from spectralgpt_jax import runtime
  runtime.configure()        # fast allocator and XLA CPU flags (may re-execute this process once)
  sys.exit(main())
