"""Whole-scene predictions of the dense tasks from overlapping windows.

SegMunich and OSCD are evaluated on whole scenes, which the model sees as windows of side S at the positions of
`spectralgpt_jax.data.transforms.sliding_windows` (overlapping; the last window of a row/column is shifted back to
the border). The logits of the windows covering a pixel are averaged with a smooth weight that is largest at a
window's centre, where the model has the most context, and normalised by the summed weights. Each pixel thus gets
exactly one prediction and is counted once in the metrics, however many windows cover it.

numpy only: this runs on the host after the device has produced the window logits. Accumulation is in float64,
so blending windows that agree returns exactly their (float32) values.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np


def blend_weights(window: int) -> np.ndarray:
  """float32 [S, S] separable raised cosine w(i) = 0.5 - 0.5 cos(2 pi (i + 0.5) / S).

  Sampled at pixel centres, so it is strictly positive (about 1.5e-4 at the edge for S = 128, 2e-8 in a corner):
  a border pixel covered only by the edge of one window still gets that window's value, not 0/0.
  """
  if window < 1:
    raise ValueError(f"window must be >= 1, got {window}")
  i = np.arange(window, dtype=np.float64)
  w = 0.5 - 0.5 * np.cos(2 * math.pi * (i + 0.5) / window)
  return np.outer(w, w).astype(np.float32)


def window_index(shapes: Sequence[tuple[int, int]], window: int, overlap: float = 0.5) -> list[tuple[int, int, int]]:
  """(scene_index, y, x) of every window of every scene, scene by scene, each in `sliding_windows` order: the
  order of `spectralgpt_jax.data.sources.SceneWindows.index` for the same scenes."""
  # Imported here: the data layer imports grain, which imports JAX; this module stays importable without them.
  from spectralgpt_jax.data import transforms

  return [(i, y, x) for i, (h, w) in enumerate(shapes) for y, x in transforms.sliding_windows(h, w, window, overlap)]


class SceneResult(NamedTuple):
  """A completed scene: its index and blended float32 logits [H, W, K] (unpacks as `index, logits = result`)."""
  index: int
  logits: np.ndarray


class _Pending:
  """Running float64 sums of one scene that has received some, not yet all, of its windows."""

  def __init__(self, shape, num_classes):
    self.logits = np.zeros((*shape, num_classes), np.float64)
    self.weights = np.zeros(shape, np.float64)


class SceneAccumulator:
  """Blends window logits into whole-scene logits, handing each scene out as soon as its last window arrives.

  Only scenes with some but not all windows are held (float64 [H, W, K] and [H, W] sums each), so memory does not
  grow with the number of scenes when the windows of a scene arrive together, as they do from `SceneWindows`.
  Windows may nevertheless arrive in any order. A window that is not in `index`, or arrives twice, is an error:
  it means the evaluation's windows and the accumulator's disagree (e.g. one process's shard of the windows).

  shapes   (H, W) of every scene, indexed by scene_index.
  index    (scene_index, y, x) of every window the evaluation delivers (e.g. `SceneWindows.index`, or
           `window_index(shapes, window, overlap)`; `SceneAccumulator.sliding` builds it).
  """

  def __init__(self, shapes: Sequence[tuple[int, int]], index: Sequence[tuple[int, int, int]], window: int,
               num_classes: int):
    self.shapes = [(int(h), int(w)) for h, w in shapes]
    self.window, self.num_classes = int(window), int(num_classes)
    self._weights = blend_weights(self.window).astype(np.float64)
    self._expected: dict[int, set[tuple[int, int]]] = {i: set() for i in range(len(self.shapes))}
    for i, y, x in index:
      i, y, x = int(i), int(y), int(x)
      if not 0 <= i < len(self.shapes):
        raise ValueError(f"window ({y}, {x}) names scene {i}, but there are {len(self.shapes)} scenes")
      h, w = self.shapes[i]
      if y < 0 or x < 0 or y + self.window > h or x + self.window > w:
        raise ValueError(f"window ({y}, {x}) of side {self.window} leaves scene {i} of shape {(h, w)}")
      if (y, x) in self._expected[i]:
        raise ValueError(f"window ({y}, {x}) of scene {i} is listed twice")
      self._expected[i].add((y, x))
    empty = [i for i, e in self._expected.items() if not e]
    if empty:
      raise ValueError(f"scenes {empty[:10]} have no window")
    self._pending: dict[int, _Pending] = {}
    self.completed: list[int] = []

  @classmethod
  def sliding(cls, shapes, window: int, num_classes: int, overlap: float = 0.5) -> "SceneAccumulator":
    """For the `sliding_windows` of every scene (the windows `SceneWindows(scenes, window, overlap)` yields)."""
    return cls(shapes, window_index(shapes, window, overlap), window, num_classes)

  @property
  def held(self) -> list[int]:
    """Scenes currently held in memory (some windows received, not all)."""
    return sorted(self._pending)

  @property
  def done(self) -> bool:
    """True once every scene has been completed."""
    return not self._expected

  def remaining_windows(self) -> int:
    return sum(len(v) for v in self._expected.values())

  def add(self, scene_index: int, y: int, x: int, logits) -> SceneResult | None:
    """Adds one window's logits [S, S, K]; returns the scene's `SceneResult` if this was its last window, else
    None. A completed scene is no longer held."""
    i, y, x = int(scene_index), int(y), int(x)
    expected = self._expected.get(i)
    if expected is None or (y, x) not in expected:
      state = "was already completed" if i in self.completed else "does not expect it"
      raise ValueError(f"unexpected window ({y}, {x}) of scene {i}: the scene {state} or the window arrived twice")
    s, k = self.window, self.num_classes
    logits = np.asarray(logits)
    if logits.shape != (s, s, k):
      raise ValueError(f"window logits must be [{s}, {s}, {k}], got {logits.shape}")
    pending = self._pending.get(i)
    if pending is None:
      pending = self._pending[i] = _Pending(self.shapes[i], k)
    pending.logits[y : y + s, x : x + s] += self._weights[..., None] * logits.astype(np.float64)
    pending.weights[y : y + s, x : x + s] += self._weights
    expected.discard((y, x))
    return self._finish(i) if not expected else None

  def add_batch(self, scene_index, ys, xs, logits, valid=None) -> list[SceneResult]:
    """`add` for a batch: scene_index/ys/xs [B] ints, logits [B, S, S, K]; rows with valid=False (the padding of
    the last evaluation batch, which repeats a real window) are skipped. Returns the scenes it completed."""
    scene_index, ys, xs = (np.asarray(a).reshape(-1) for a in (scene_index, ys, xs))
    logits = np.asarray(logits)
    b = logits.shape[0]
    valid = np.ones(b, bool) if valid is None else np.asarray(valid).reshape(-1) > 0
    if not scene_index.size == ys.size == xs.size == valid.size == b:
      raise ValueError(f"batch fields differ in length: {scene_index.size}, {ys.size}, {xs.size}, {valid.size}, {b}")
    done = [self.add(scene_index[r], ys[r], xs[r], logits[r]) for r in np.flatnonzero(valid)]
    return [d for d in done if d is not None]

  def _finish(self, i: int) -> SceneResult:
    pending = self._pending.pop(i)
    del self._expected[i]
    self.completed.append(i)
    if not (pending.weights > 0).all():
      raise ValueError(f"the windows of scene {i} do not cover all of it")
    return SceneResult(i, (pending.logits / pending.weights[..., None]).astype(np.float32))
