"""What segmentation and change detection share: evaluation on whole scenes from overlapping windows.

The evaluation source is the data layer's `SceneWindows` over the split's scenes (SegMunich tiles, OSCD cities):
each window carries its scene index and position. Window logits are gathered to the host and blended into their
scene with a smooth weight window (`tasks.scenes`); when a scene's last window has arrived its argmax is compared
with the scene's label map, so every pixel of every scene is counted exactly once, whatever the window overlap,
batch size or number of processes. A single 128 px window per 128 px SegMunich tile is the special case where
blending is the identity.
`config.metrics.reference_patches=True` reproduces the reference OSCD test instead: every stride-63 window counted
on its own (overlapping pixels counted several times) and the windows of an incomplete last batch dropped (its test
loader's `drop_last`).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from spectralgpt_jax.tasks import base, metrics, reporting, scenes

IGNORE_INDEX = 255     # label value excluded from loss and metrics (the reference's ignore_index)
WINDOW_KEYS = ("scene", "y", "x", "window")


def masked_mean(per_pixel: jnp.ndarray, labels: jnp.ndarray, batch, weights: jnp.ndarray | None = None
                ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(sum, total weight) of a per-pixel loss over labelled pixels of the valid rows."""
  w = (labels != IGNORE_INDEX).astype(jnp.float32)
  if weights is not None:
    w = w * weights
  w = w * base.valid_rows(batch)[:, None, None]
  return jnp.sum(per_pixel * w), jnp.sum(w)


class DenseTask(base.Task):
  """Shared plumbing; subclasses define `label_key`, `forward(model, batch, train, rngs)` and the metrics."""

  label_key = ""
  metric_keys = ("reference_patches",)

  def __init__(self, config):
    super().__init__(config)
    self._eval_windows = None

  def forward(self, model, batch, *, train: bool, rngs=None) -> jnp.ndarray:
    raise NotImplementedError

  def eval_outputs(self, model, batch, *, key):
    del key
    logits = self.forward(model, batch, train=False)
    labels = batch[self.label_key]
    loss_sum, weight = self.loss_terms(logits, batch)
    rows = {"logits": logits.astype(jnp.float32), "labels": labels, "valid": base.valid_rows(batch)}
    rows.update({k: batch[k] for k in WINDOW_KEYS})
    return {"sums": {"loss": loss_sum, "count": weight}, "rows": rows}

  def loss_terms(self, logits, batch) -> tuple[jnp.ndarray, jnp.ndarray]:
    raise NotImplementedError

  def loss(self, model, batch, *, key, train=True):
    from flax import nnx
    logits = self.forward(model, batch, train=train, rngs=nnx.Rngs(dropout=key))
    total, weight = self.loss_terms(logits, batch)
    return total / jnp.maximum(weight, 1e-12), {}

  def eval_windows(self):
    """The evaluation source (SceneWindows): its scene shapes and window list drive the evaluator. Built once per
    run (finding the scene sizes reads every scene of sources without a fixed size)."""
    if self._eval_windows is None:
      from spectralgpt_jax.data import pipeline
      self._eval_windows, _ = pipeline.make_source(self.config.data, self.config.data.eval_split, train=False)
    return self._eval_windows

  def evaluator(self) -> base.Evaluator:
    windows = self.eval_windows()
    reference = bool(self.config.get("metrics", {}).get("reference_patches", False))
    return DenseEvaluator(self, windows, reference=reference, batch_size=int(self.config.eval_batch_size))

  def scene_metrics(self, cm: np.ndarray) -> dict[str, Any]:
    raise NotImplementedError

  def table_columns(self, result: Mapping[str, Any], cm: np.ndarray) -> dict[str, list]:
    raise NotImplementedError


class DenseEvaluator(base.Evaluator):
  """Blends window logits into whole scenes and sums one confusion matrix over every scene pixel."""

  def __init__(self, task: DenseTask, windows, *, reference: bool = False, batch_size: int = 1):
    self.task, self.reference = task, reference
    self.class_names = task.class_names()
    self.num_classes = len(self.class_names)
    self.cm = np.zeros((self.num_classes, self.num_classes), np.int64)
    self.loss_sum, self.weight = 0.0, 0.0
    self.window = windows.window
    self.num_windows = len(windows)
    self.shapes = list(windows.shapes)
    self.num_scenes = len(self.shapes)
    # The reference's test loader drops the windows of an incomplete last batch.
    self.kept_windows = self.num_windows - self.num_windows % batch_size if reference else self.num_windows
    self.seen_windows = 0
    self.accumulator = scenes.SceneAccumulator(windows.shapes, windows.index, self.window, self.num_classes)
    self.labels: dict[int, np.ndarray] = {}
    self.completed = 0

  def add(self, sums, rows, host) -> None:
    self.loss_sum += float(sums["loss"])
    self.weight += float(sums["count"])
    valid = np.asarray(rows["valid"]) > 0
    logits = np.asarray(rows["logits"])[..., :self.num_classes]
    labels = np.asarray(rows["labels"])
    for r in np.flatnonzero(valid):
      scene, y, x, ordinal = (int(np.asarray(rows[k])[r]) for k in WINDOW_KEYS)
      self.seen_windows += 1
      if self.reference:
        if ordinal < self.kept_windows:
          self.cm += metrics.confusion_matrix(labels[r], logits[r].argmax(-1), self.num_classes, IGNORE_INDEX)
        continue
      canvas = self.labels.setdefault(scene, np.full(self.shapes[scene], IGNORE_INDEX, np.uint8))
      canvas[y:y + self.window, x:x + self.window] = labels[r]
      done = self.accumulator.add(scene, y, x, logits[r])
      if done is not None:
        index, blended = done
        self.cm += metrics.confusion_matrix(self.labels.pop(index), blended.argmax(-1), self.num_classes,
                                            IGNORE_INDEX)
        self.completed += 1

  def result(self) -> dict[str, Any]:
    if self.seen_windows != self.num_windows:
      raise RuntimeError(f"evaluation saw {self.seen_windows} of {self.num_windows} windows")
    if not self.reference and self.completed != self.num_scenes:
      raise RuntimeError(f"evaluation completed {self.completed} of {self.num_scenes} scenes")
    out = {"num_examples": self.num_scenes, "num_windows": self.num_windows,
           "num_pixels": int(self.cm.sum()), "loss": self.loss_sum / max(self.weight, 1e-12)}
    out.update(self.task.scene_metrics(self.cm))
    if self.reference:
      out["reference_patches"] = True
      out["num_windows_counted"] = self.kept_windows
    return out

  def write(self, directory: str, result: Mapping[str, Any]) -> list[str]:
    paths = [os.path.join(directory, "predictions.npz"), os.path.join(directory, "confusion_matrix.png")]
    reporting.save_predictions(paths[0], confusion=self.cm, class_names=np.asarray(self.class_names))
    reporting.confusion_png(paths[1], self.cm, self.class_names,
                            f"{self.task.name}: pixels (rows: true class, columns: predicted)")
    return paths + base.write_class_table(directory, self.class_names, self.task.table_columns(result, self.cm))


def log_class_weights(weights: np.ndarray, names) -> None:
  logging.info("class weights: %s", ", ".join(f"{n} {w:.4g}" for n, w in zip(names, weights)))
