"""Random-access sources for grain: prepared tfds datasets, the demo scene, scene windows, eval padding.

No JAX here either (sources are pickled into grain workers).
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from spectralgpt_jax.data import transforms
from spectralgpt_jax.data.readers.common import MissingSplitError

# Contract dataset name -> tfds builder name (ours are prefixed/suffixed to avoid tfds's stock `eurosat` and
# `bigearthnet`, which need TensorFlow / apache-beam). `bigearthnet_v2` reads its default config (no reference maps).
BUILDER_NAMES = {
    "eurosat": "eurosat_ms",
    "bigearthnet": "bigearthnet_s2",
    "bigearthnet_v2": "bigearthnet_v2",
    "fmow_sentinel": "fmow_sentinel",
    "segmunich": "segmunich",
    "oscd": "oscd",
}


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def tfds_source(name: str, split: str, data_dir: str | None):
  """(ArrayRecord data source, band names) of a prepared dataset; a clear error if it was not prepared."""
  import tensorflow_datasets as tfds

  from spectralgpt_jax.data import builders  # noqa: F401  (registers our builders with tfds)

  if name not in BUILDER_NAMES:
    raise ValueError(f"unknown dataset {name!r}; choose from {sorted(BUILDER_NAMES)} or 'demo'")
  data_dir = data_dir or default_data_dir()
  builder = tfds.builder(BUILDER_NAMES[name], data_dir=data_dir)
  if not builder.is_prepared():
    builder = _older_version(builder) or builder
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"dataset {name!r} is not prepared under {data_dir}; run: python -m spectralgpt_jax.data.prepare "
        f"--dataset {name} --manual_dir <downloaded data> --data_dir {data_dir}"
    )
  if split not in builder.info.splits:
    raise MissingSplitError(f"dataset {name!r} under {data_dir} has no split {split!r}; it has "
                            f"{list(builder.info.splits)} (config.data.train_split / eval_split)")
  return builder.as_data_source(split), tuple(builder.info.metadata["bands"])


def _older_version(builder):
  """The newest version prepared beside the current one (1.0.0 stored tensors in slower encodings; it reads the
  same values), with a warning; None when there is none."""
  import tensorflow_datasets as tfds

  parent = builder.data_path.parent
  found = sorted((p for p in parent.glob("*.*.*") if (p / "dataset_info.json").exists()),
                 key=lambda p: tfds.core.Version(p.name), reverse=True) if parent.exists() else []
  if not found:
    return None
  logging.warning("%s: reading version %s of the prepared dataset; prepare it again for version %s (faster to "
                  "decode)", parent, found[0].name, builder.version)
  return tfds.builder_from_directory(found[0])


def reference_window_starts(length: int, window: int) -> list[int]:
  """The reference OSCD windows: stride int(S/2) - 1 (63 for 128 px), n = ceil((L - S + 1) / stride), so the
  last pixels of a side may be left out."""
  if length < window:
    raise ValueError(f"image side {length} is smaller than the window {window}")
  stride = window // 2 - 1
  return [i * stride for i in range(math.ceil((length - window + 1) / stride))]


class SceneWindows:
  """Every window of side `window` (with fractional `overlap`, covering the borders) of every scene of a
  source whose elements hold whole scenes (OSCD cities, SegMunich tiles). Crops all image and label-map keys
  alike and adds the window's position as integers (`scene`, `y`, `x`, `window` = its index here), which whole-scene
  evaluation uses to blend overlapping windows. `scene_shape` (all scenes of one known size) avoids reading every
  scene to find its size; `reference=True` uses the reference's stride-63 windows instead."""

  def __init__(self, scenes, window: int = 128, overlap: float = 0.5, *, scene_shape=None, reference: bool = False):
    self.scenes, self.window = scenes, window
    self.shapes = [tuple(scene_shape) if scene_shape else self._shape(i) for i in range(len(scenes))]
    if reference:
      starts = lambda h, w: [(y, x) for y in reference_window_starts(h, window)
                             for x in reference_window_starts(w, window)]
    else:
      starts = lambda h, w: transforms.sliding_windows(h, w, window, overlap)
    self.index = [(i, y, x) for i, (h, w) in enumerate(self.shapes) for y, x in starts(h, w)]
    self._cached = (None, None)  # consecutive windows come from the same scene: keep the last one decoded

  def _shape(self, i: int) -> tuple[int, int]:
    scene = self.scenes[i]
    return tuple(scene[next(k for k in transforms.IMAGE_KEYS if k in scene)].shape[:2])

  def __getstate__(self):
    return {**self.__dict__, "_cached": (None, None)}

  def __len__(self):
    return len(self.index)

  def iter_scenes(self):
    """The whole scenes (e.g. for class weights over the full training maps)."""
    for i in range(len(self.scenes)):
      yield self.scenes[i]

  def __getitem__(self, k):
    i, y, x = self.index[k]
    if self._cached[0] != i:
      self._cached = (i, self.scenes[i])
    scene, s = self._cached[1], self.window
    if tuple(scene[next(k for k in transforms.IMAGE_KEYS if k in scene)].shape[:2]) != self.shapes[i]:
      raise ValueError(f"scene {scene.get('id', i)}: size differs from the declared {self.shapes[i]}")
    keys = [k for k in transforms.IMAGE_KEYS + transforms.MAP_KEYS if k in scene]
    out = {k: np.ascontiguousarray(scene[k][y : y + s, x : x + s]) for k in keys}
    name = scene.get("id", i)
    name = name.decode("utf-8") if isinstance(name, bytes) else name
    out.update(id=f"{name}@{y},{x}", scene=np.int32(i), y=np.int32(y), x=np.int32(x),
               window=np.int32(k))
    return out


class PaddedShard:
  """This process's share of `source` (elements process_index, process_index + process_count, ...), padded to
  a whole number of batches that is the same on every process, with a `valid` flag per element.
  Together the processes' valid elements are every element of `source` exactly once."""

  def __init__(self, source, batch_size: int, process_index: int = 0, process_count: int = 1):
    n = len(source)
    if n == 0:
      raise ValueError("cannot evaluate on an empty source")
    self.source = source
    self.indices = list(range(process_index, n, process_count))
    per_process = math.ceil(n / process_count)
    self.length = max(1, math.ceil(per_process / batch_size)) * batch_size

  def __len__(self):
    return self.length

  def __getitem__(self, k):
    valid = k < len(self.indices)
    ex = self.source[self.indices[k] if valid else (self.indices[0] if self.indices else 0)]
    return {**ex, "valid": np.bool_(valid)}
