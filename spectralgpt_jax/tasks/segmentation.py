"""Semantic segmentation fine-tuning (SegMunich): per-pixel cross-entropy, whole-tile confusion-matrix metrics.

Loss: the reference's `F.cross_entropy(logits, target, ignore_index=255)`, the mean over labelled pixels.
Metrics from one confusion matrix over every evaluated pixel: overall accuracy, per-class IoU and mIoU over all
classes (background included, as the reference), per-class precision / recall / F1.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
import optax

from spectralgpt_jax.tasks import dense, metrics


class SegmentationTask(dense.DenseTask):
  name = "segmentation"
  model_kinds = ("seg",)
  label_key = "mask"

  def forward(self, model, batch, *, train, rngs=None):
    return model(batch["image"], train=train, rngs=rngs)

  def loss_terms(self, logits, batch):
    labels = batch[self.label_key].astype(jnp.int32)
    safe = jnp.where(labels == dense.IGNORE_INDEX, 0, labels)
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    return dense.masked_mean(per_pixel, labels, batch)

  def scene_metrics(self, cm: np.ndarray) -> dict[str, Any]:
    m = metrics.segmentation_metrics(cm)
    return {"oa": m["oa"], "miou": m["miou"], "iou": m["iou"]}

  def table_columns(self, result: Mapping[str, Any], cm: np.ndarray) -> dict[str, list]:
    m = metrics.segmentation_metrics(cm)
    return {"iou": m["iou"], "precision": m["precision"], "recall": m["recall"], "f1": m["f1"],
            "pixels": cm.sum(axis=1).tolist()}
