"""What each task's checkpoint produces from a scene, and the sinks that stream it into georeferenced files.

  segmentation      class map (uint8, colour table, class names) [+ per-class probabilities], on the scene grid
  change_detection  change map (0 no change / 1 change) [+ probabilities], on the earlier date's grid
  classification    per-tile label map: one pixel per tile (probabilities: sigmoid for multi-label checkpoints)
  pretrain (MAE)    the decoder's reconstruction of every band, back in the input's units
Dense outputs blend overlapping tiles (logits for class maps, values for reconstructions); pixels that are nodata
in the input, or covered by no tile, are nodata in the output.
"""
from __future__ import annotations

import os
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from affine import Affine

from spectralgpt_jax import models
from spectralgpt_jax.inference import writers
from spectralgpt_jax.inference.engine import TileBatch
from spectralgpt_jax.inference.tiling import StripBlender, TileGrid

CLASS_NODATA = 255


def is_multilabel(checkpoint) -> bool:
  from spectralgpt_jax.data import pipeline
  name = (checkpoint.metadata.get("data") or {}).get("name", "")
  return pipeline.is_multilabel(name)


def apply_fn(checkpoint, mask_ratio: float | None = None):
  """The jittable forward of the checkpoint's task on prepared tiles."""
  task = checkpoint.task
  if task == "segmentation":
    return lambda model, x: model(x)
  if task == "change_detection":
    return lambda model, x1, x2: model(x1, x2)
  if task == "classification":
    activation = jax.nn.sigmoid if is_multilabel(checkpoint) else lambda z: jax.nn.softmax(z, axis=-1)
    return lambda model, x: activation(model(x))
  ratio = float(checkpoint.metadata.get("mask_ratio", 0.9) if mask_ratio is None else mask_ratio)

  def reconstruct(model, x, noise):
    out = model(x, ratio, noise=noise)
    return models.unpatchify(out["pred"], model.cfg)
  return reconstruct


def mae_noise(positions: list[tuple[int, int]], num_tokens: int, seed: int) -> np.ndarray:
  """Masking noise per tile, keyed by the tile's position: a rerun reproduces the same masks."""
  return np.stack([np.random.default_rng(zlib.crc32(f"{seed}/{y}/{x}".encode())).random(num_tokens)
                   for y, x in positions]).astype(np.float32)


def quicklook_bands(checkpoint) -> tuple[int, int, int] | None:
  """1-based (B04, B03, B02) of a reconstruction, for a true-colour quicklook; None for class maps."""
  bands = checkpoint.model_bands
  if checkpoint.task != "pretrain" or not {"B04", "B03", "B02"} <= set(bands):
    return None
  return tuple(bands.index(b) + 1 for b in ("B04", "B03", "B02"))


def _tags(checkpoint, command: str, input_tags: dict | None) -> dict[str, str]:
  return {"checkpoint": os.path.abspath(checkpoint.path), "task": checkpoint.task,
          "arch": str(checkpoint.metadata.get("arch")), "software": "spectralgpt_jax", "command": command,
          **(input_tags or {})}


def probability_path(path: str) -> str:
  stem, ext = os.path.splitext(path)
  return f"{stem}_probabilities{ext or '.tif'}"


class _Sink:
  """What both sinks share: their writers (the main output first), entered and finished together; the caller
  publishes every sink's writers at once (writers.publish_together)."""

  writers: list

  def _open(self, *factories) -> None:
    """Creates the writers; if one cannot be created, drops the staging of those already made."""
    self.writers = []
    try:
      for make in factories:
        self.writers.append(make())
    except BaseException:
      for writer in self.writers:
        writer.abort()
      raise

  def __enter__(self):
    for writer in self.writers:
      writer.__enter__()
    return self

  def __exit__(self, *exc):
    for writer in self.writers:
      writer.__exit__(*exc)
    return False

  def finish(self, quicklook: bool = False) -> None:
    """Every output translated and checked, still unpublished (see writers.StagedWriter); with `quicklook`, the
    main output's PNG made from its finished COG in staging, so that it is published with it."""
    for writer in self.writers:
      writer.finish()
    if quicklook:
      main = self.writers[0]
      png = os.path.splitext(main.path)[0] + ".png"
      writers.quicklook_png(main.finished_path, main.stage_companion(png), rgb_bands=quicklook_bands(self.checkpoint))


def final_paths(outputs: list) -> list[str]:
  """The writers' paths, then their companions' (the quicklook), as they are once published."""
  return [writer.path for writer in outputs] + [path for writer in outputs for path in writer.companion_paths()]


def _class_map_writers(output: str, names, tags: dict, geo: dict, probabilities: bool) -> list:
  """Factories of a class map's writers: the uint8 map (colour table, class names) [+ float32 probabilities]."""
  def class_map():
    return writers.RasterWriter(output, count=1, dtype="uint8", nodata=CLASS_NODATA, band_descriptions=["class"],
                                colormap=writers.class_colormap(len(names), names), tags=tags,
                                band_tags=[writers.class_band_tags(names)], kind="classes", **geo)

  def probability_map():
    return writers.RasterWriter(probability_path(output), count=len(names), dtype="float32", nodata=float("nan"),
                                band_descriptions=list(names), tags=tags, kind="continuous", **geo)
  return [class_map] + ([probability_map] if probabilities else [])


class DenseSink(_Sink):
  """Blends tile outputs row strip by row strip and writes class map [+ probabilities] or reconstruction."""

  def __init__(self, grid: TileGrid, scene, checkpoint, output: str, *, probabilities: bool, command: str,
               input_tags: dict | None = None):
    self.grid, self.checkpoint = grid, checkpoint
    self.reconstruction = checkpoint.task == "pretrain"
    channels = len(checkpoint.model_bands) if self.reconstruction else checkpoint.cfg.num_classes
    self.blender = StripBlender(grid, channels)
    geo = dict(crs=scene.crs, transform=scene.transform, width=scene.width, height=scene.height)
    tags = _tags(checkpoint, command, input_tags)
    if self.reconstruction:
      self.renders = ["values"]
      self._open(lambda: writers.RasterWriter(output, count=channels, dtype="float32", nodata=float("nan"),
                                              band_descriptions=list(checkpoint.model_bands), tags=tags,
                                              kind="continuous", **geo))
      return
    self.renders = ["classes"] + (["probabilities"] if probabilities else [])
    self._open(*_class_map_writers(output, checkpoint.class_names, tags, geo, probabilities))

  def add(self, r: int, batch: TileBatch, outputs: np.ndarray | None) -> None:
    preds: list[np.ndarray | None] = [None] * len(self.grid.cols)
    for i, c in enumerate(batch.columns):
      preds[c] = outputs[i]
    done = self.blender.add_row(r, preds)
    if done is None:
      return
    top, values, covered = done
    y = self.grid.rows[r]
    valid = batch.strip_valid[top - y:top - y + values.shape[0], :self.grid.width] & covered
    for writer, what in zip(self.writers, self.renders):
      writer.write(self._render(what, values, valid), top)

  def _render(self, what: str, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    if what == "classes":
      return np.where(valid, values.argmax(-1), CLASS_NODATA).astype(np.uint8)[..., None]
    if what == "probabilities":
      values = np.asarray(jax.nn.softmax(jnp.asarray(values), axis=-1))
    return np.where(valid[..., None], values, np.nan).astype(np.float32)


class TileSink(_Sink):
  """Classification: one output pixel per tile, centred in it (the tile stride is the pixel size)."""

  def __init__(self, grid: TileGrid, scene, checkpoint, output: str, *, probabilities: bool, command: str,
               input_tags: dict | None = None):
    self.grid, self.checkpoint = grid, checkpoint
    offset = (grid.tile - grid.stride) / 2
    transform = scene.transform @ Affine.translation(offset, offset) @ Affine.scale(grid.stride)
    geo = dict(crs=scene.crs, transform=transform, width=len(grid.cols), height=len(grid.rows))
    self._open(*_class_map_writers(output, checkpoint.class_names, _tags(checkpoint, command, input_tags), geo,
                                   probabilities))

  def add(self, r: int, batch: TileBatch, outputs: np.ndarray | None) -> None:
    k = len(self.checkpoint.class_names)
    probs = np.full((1, len(self.grid.cols), k), np.nan, np.float32)
    labels = np.full((1, len(self.grid.cols), 1), CLASS_NODATA, np.uint8)
    for i, c in enumerate(batch.columns):
      probs[0, c] = outputs[i][:k]
      labels[0, c, 0] = int(np.argmax(outputs[i][:k]))
    self.writers[0].write(labels, r)
    if len(self.writers) > 1:
      self.writers[1].write(probs, r)


def make_sink(grid: TileGrid, scene, checkpoint, output: str, **kwargs) -> Any:
  return (TileSink if checkpoint.task == "classification" else DenseSink)(grid, scene, checkpoint, output, **kwargs)
