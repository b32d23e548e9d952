"""Scene classification fine-tuning: single-label (EuroSAT) and multi-label (BigEarthNet-19).

Losses (reference main_finetune / engine_finetune*): single-label uses soft-target cross-entropy on the mixup /
cutmix / label-smoothing `targets` the data pipeline writes (plain cross-entropy on integer labels when mixing is
off, which the reference's SoftTargetCrossEntropy could not do, a reference bug); multi-label uses
MultiLabelSoftMarginLoss = mean over examples and classes of the binary cross-entropy with logits.
Evaluation gathers every example's class probabilities and computes, once per pass over the split:
top-1 / top-5 accuracy (single-label); macro-mAP (mean per-class AP over the classes with at least one positive)
and micro-mAP (AP of all N x C scores) (multi-label). The reference computed micro-mAP per batch and averaged it
(a reference bug); `config.metrics.reference_map=True` adds that number as `reference_micro_map` for comparison.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spectralgpt_jax.tasks import base, metrics, reporting


class ClassificationTask(base.Task):
  name = "classification"
  model_kinds = ("vit",)
  train_metrics = ("loss",)
  metric_keys = ("reference_map",)

  @property
  def multilabel(self) -> bool:
    from spectralgpt_jax.data import pipeline
    return pipeline.label_key(self.config.data) == "labels"

  def loss(self, model, batch, *, key, train=True):
    from flax import nnx
    logits = model(batch["image"], train=train, rngs=nnx.Rngs(dropout=key))
    return self._loss(logits, batch), {}

  def _loss(self, logits: jax.Array, batch) -> jax.Array:
    """Mean loss over the batch rows (per-row losses weighted by `valid` when present)."""
    per_row = self._per_row_loss(logits, batch)
    if "valid" in batch:
      valid = base.valid_rows(batch)
      return jnp.sum(per_row * valid) / jnp.maximum(jnp.sum(valid), 1.0)
    return jnp.mean(per_row)

  def _per_row_loss(self, logits: jax.Array, batch) -> jax.Array:
    num_classes = logits.shape[-1]
    if self.multilabel:
      targets = batch["targets"] if "targets" in batch else batch["labels"].astype(jnp.float32)
      targets = _pad_classes(targets, num_classes)
      return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1)
    if "targets" in batch:
      targets = _pad_classes(batch["targets"], num_classes)
      return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])

  def eval_outputs(self, model, batch, *, key):
    del key
    logits = model(batch["image"], train=False)
    valid = base.valid_rows(batch)
    scores = jax.nn.sigmoid(logits) if self.multilabel else jax.nn.softmax(logits, axis=-1)
    labels = batch["labels"] if self.multilabel else batch["label"]
    per_row = self._per_row_loss(logits, batch)
    return {"sums": {"loss": jnp.sum(per_row * valid), "count": jnp.sum(valid)},
            "rows": {"scores": scores.astype(jnp.float32), "labels": labels, "valid": valid}}

  def evaluator(self) -> base.Evaluator:
    return ClassificationEvaluator(self.class_names(), multilabel=self.multilabel,
                                   reference_map=bool(self.config.get("metrics", {}).get("reference_map", False)))


def _pad_classes(targets: jax.Array, num_classes: int) -> jax.Array:
  """Targets over the data's classes for a head with more outputs (the reference's 62-way EuroSAT head)."""
  extra = num_classes - targets.shape[-1]
  return targets if extra <= 0 else jnp.pad(targets, ((0, 0), (0, extra)))


class ClassificationEvaluator(base.Evaluator):
  """Keeps every valid example's scores, label(s) and id; metrics over the whole split in `result`."""

  def __init__(self, class_names, *, multilabel: bool, reference_map: bool = False):
    self.class_names = tuple(class_names)
    self.multilabel, self.reference_map = multilabel, reference_map
    self.scores, self.labels, self.ids = [], [], []
    self.loss_sum, self.count = 0.0, 0.0
    self.batch_micro_ap: list[tuple[float, int]] = []   # the reference's per-batch numbers

  def add(self, sums, rows, host) -> None:
    keep = np.asarray(rows["valid"]) > 0
    scores = np.asarray(rows["scores"])[keep]
    if self.multilabel:      # a head wider than the data (the reference's hard-coded counts): AP per data class
      scores = scores[:, :len(self.class_names)]
    labels = np.asarray(rows["labels"])[keep]
    self.scores.append(scores)
    self.labels.append(labels)
    if "id" in host:
      self.ids.append(np.asarray(host["id"])[keep])
    self.loss_sum += float(sums["loss"])
    self.count += float(sums["count"])
    if self.multilabel and self.reference_map and keep.any():
      self.batch_micro_ap.append((metrics.mean_average_precision(scores, labels)["micro_map"], int(keep.sum())))

  def _arrays(self):
    if not self.scores:
      raise ValueError("evaluation saw no example")
    return np.concatenate(self.scores), np.concatenate(self.labels)

  def _confusion(self, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[C, C] over the data's classes; a prediction of an output beyond them (a wider head) counts for no class."""
    preds = scores.argmax(-1)
    keep = preds < len(self.class_names)
    return metrics.confusion_matrix(labels[keep], preds[keep], len(self.class_names))

  def result(self) -> dict[str, Any]:
    scores, labels = self._arrays()
    out: dict[str, Any] = {"num_examples": int(len(scores)), "loss": self.loss_sum / max(self.count, 1.0)}
    if self.multilabel:
      maps = metrics.mean_average_precision(scores, labels)
      out.update(macro_map=maps["macro_map"], micro_map=maps["micro_map"],
                 per_class_ap=[None if np.isnan(v) else float(v) for v in maps["per_class_ap"]])
      if maps.get("excluded_classes"):
        logging.warning("macro-mAP excludes classes without positives in this split: %s",
                        [self.class_names[i] for i in maps["excluded_classes"]])
      if self.reference_map:
        values, weights = zip(*self.batch_micro_ap)
        out["reference_micro_map"] = float(np.average(values, weights=weights))
    else:
      out["top1"] = metrics.topk_accuracy(scores, labels, 1)
      out["top5"] = metrics.topk_accuracy(scores, labels, min(5, scores.shape[1]))
      cm = self._confusion(scores, labels)
      out["per_class_accuracy"] = [float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None
                                   for i in range(len(self.class_names))]
    return out

  def write(self, directory: str, result: Mapping[str, Any]) -> list[str]:
    scores, labels = self._arrays()
    ids = np.concatenate(self.ids) if self.ids else np.arange(len(scores)).astype(str)
    paths = [os.path.join(directory, "predictions.npz")]
    reporting.save_predictions(paths[0], id=ids, scores=scores, labels=labels,
                               class_names=np.asarray(self.class_names))
    if self.multilabel:
      positives = labels.sum(axis=0)
      columns = {"ap": result["per_class_ap"], "positives": positives.tolist()}
      mcm = metrics.multilabel_confusion(scores, labels, 0.5)
      png = os.path.join(directory, "confusion_matrix.png")
      reporting.multilabel_confusion_png(png, mcm, self.class_names)
    else:
      cm = self._confusion(scores, labels)
      columns = {"accuracy": result["per_class_accuracy"], "support": cm.sum(axis=1).tolist()}
      png = os.path.join(directory, "confusion_matrix.png")
      reporting.confusion_png(png, cm, self.class_names, "examples (rows: true class, columns: predicted)")
    paths += [png, *base.write_class_table(directory, self.class_names, columns)]
    return paths

