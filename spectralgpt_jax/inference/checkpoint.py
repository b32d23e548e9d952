"""What scene inference needs from a checkpoint: the model, its task, and the input preparation of its training.

`load(path)` accepts an export directory (`params/` + `metadata.json`, what training and `convert` write), a run
directory with an `export/`, or a run directory without one (an interrupted run: the model and metadata are
rebuilt from its `config.json` through the task plug-ins, the params from its latest checkpoint). `prepare(tiles)`
then does to raw scene pixels exactly what the training pipeline did to its examples: the bands the training data
had (e.g. SegMunich's ten), the missing-band policy, and the normalisation, per tile as training did per example.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from spectralgpt_jax.data import bands as bandlib

# Exports written before the task plug-ins existed have no "task": the model kind says what it is.
KIND_TASKS = {"mae": "pretrain", "vit": "classification", "seg": "segmentation", "cd": "change_detection"}


class CheckpointNotFound(ValueError):
  """The checkpoint path is neither an export nor a run directory (one line, naming it)."""


@dataclasses.dataclass
class Checkpoint:
  path: str
  model: Any
  metadata: dict[str, Any]

  @property
  def cfg(self):
    return self.model.cfg

  @property
  def task(self) -> str:
    return self.metadata.get("task") or KIND_TASKS[self.cfg.kind]

  @property
  def model_bands(self) -> tuple[str, ...]:
    """The model's input channels, in order."""
    return tuple(self.metadata.get("bands") or bandlib.CANONICAL[:self.cfg.num_frames])

  @property
  def input_bands(self) -> tuple[str, ...]:
    """The bands read from a scene: those the training data had (SegMunich: ten), the rest is filled as then."""
    data = self.metadata.get("data") or {}
    on_disk = bandlib.ON_DISK.get(data.get("name", ""))
    if on_disk and set(on_disk) < set(self.model_bands):
      return bandlib.canonical_subset(on_disk)
    return self.model_bands

  @property
  def class_names(self) -> list[str]:
    names = self.metadata.get("class_names") or []
    return list(names) or [f"class_{i}" for i in range(self.cfg.num_classes)]

  @property
  def normalization(self) -> dict[str, Any]:
    return dict(self.metadata.get("normalization") or {"name": "minmax_per_image", "eps": 1e-12})

  def _normalizer(self):
    from spectralgpt_jax.data import transforms
    norm = self.normalization
    if norm.get("name") == "minmax_per_image":
      return transforms.MinMaxPerImage(float(norm.get("eps", 1e-12)))
    data_name = (self.metadata.get("data") or {}).get("name", "")
    return transforms.normalizer(norm.get("name") or "none", data_name, norm.get("stats"))

  def prepare(self, tiles: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Raw tiles [n, S, S, input_bands] (+ valid [n, S, S]) -> model input [n, S, S, model_bands] float32.

    Nodata pixels of a partly valid tile take the tile's per-band mean of its valid pixels first, so that they
    neither dominate the per-tile min-max nor inject zeros the model never saw in training."""
    tiles = _fill_nodata(tiles.astype(np.float32), valid)
    norm = self.normalization
    policy, append = norm.get("missing_bands") or "band_mean", bool(norm.get("append_missing_bands", False))
    normalizer = self._normalizer()
    out = []
    for tile in tiles:
      if self.input_bands != self.model_bands:
        tile = bandlib.fill_missing(tile, self.input_bands, self.model_bands, policy, append)
      out.append(normalizer.map({"image": tile})["image"])
    return np.stack(out).astype(np.float32)

  def restore(self, normalized: np.ndarray, raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Inverse of the per-tile normalisation (MAE reconstructions back to input units): [n, S, S, model_bands]."""
    norm = self.normalization
    name = norm.get("name")
    if name == "minmax_per_image":
      filled = _fill_nodata(raw.astype(np.float32), valid)
      lo, hi = filled.min(axis=(1, 2), keepdims=True), filled.max(axis=(1, 2), keepdims=True)
      return normalized * (hi - lo + float(norm.get("eps", 1e-12))) + lo
    if name == "zscore":
      from spectralgpt_jax.data import transforms
      mean, std = transforms.load_stats(norm["stats"], self.model_bands)
      return normalized * std + mean
    if name in (None, "none"):
      return normalized
    raise ValueError(f"{self.path}: a reconstruction cannot be mapped back through the {name!r} normalisation")


def _fill_nodata(tiles: np.ndarray, valid: np.ndarray) -> np.ndarray:
  invalid = ~valid
  if not invalid.any():
    return tiles
  counts = valid.sum(axis=(1, 2))[:, None]
  means = np.where(counts > 0, (tiles * valid[..., None]).sum(axis=(1, 2)) / np.maximum(counts, 1), 0.0)
  return np.where(invalid[..., None], means[:, None, None, :], tiles).astype(np.float32)


def load(path: str) -> Checkpoint:
  """An export directory, a run directory with export/, or a run directory with checkpoints/ + config.json."""
  from spectralgpt_jax import export
  if os.path.isfile(os.path.join(path, "metadata.json")):
    model, metadata = export.load(path)
    return Checkpoint(path, model, metadata)
  if os.path.isfile(os.path.join(path, "export", "metadata.json")):
    model, metadata = export.load(os.path.join(path, "export"))
    return Checkpoint(path, model, metadata)
  if os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(os.path.join(path, "checkpoints")):
    return _from_run(path)
  if os.path.isfile(path) and path.endswith((".pth", ".pt", ".pth.tar")):
    raise CheckpointNotFound(f"--checkpoint {path}: an official PyTorch file; convert it once into an export, which "
                             "records its task, bands and normalisation: python -m spectralgpt_jax.interop.convert "
                             f"--checkpoint {path} --out DIR [--arch ARCH], then --checkpoint DIR")
  raise CheckpointNotFound(f"--checkpoint {path}: neither an export directory (metadata.json) nor a run directory "
                           "(export/ or checkpoints/ + config.json)")


def _from_run(path: str) -> Checkpoint:
  """A run without export: rebuild the model and metadata as the run's export would have had them."""
  import ml_collections

  from spectralgpt_jax import export, models, tasks
  from spectralgpt_jax.interop import transfer
  from spectralgpt_jax.interop.keymap import param_shapes
  from spectralgpt_jax.interop.loader import assign_params
  from spectralgpt_jax.train import checkpointing
  with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  task = tasks.get(config)
  cfg = task.model_config()
  model = models.build_from_config(cfg)
  params, info = checkpointing.load_model_params(path)
  values, _ = transfer.transfer(params, param_shapes(model), cfg, source_name=path, arch=config.model.name)
  assign_params(model, values)
  metadata = export.make_metadata(config.model.name, cfg, bands=list(config.data.get("bands", None) or
                                                                      bandlib.CANONICAL[:cfg.num_frames]),
                                  source=path, step=info.get("step"), data=json.loads(config.data.to_json()),
                                  **task.export_metadata())
  return Checkpoint(path, model, metadata)

