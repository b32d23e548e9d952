"""Dataset-level evaluation metrics of the fine-tuning tasks, computed once on the host after an evaluation.

numpy only (no JAX): the evaluation gathers every example's scores (classification) or every scene's blended
logits (dense tasks) to the host, and these functions turn them into numbers. Metrics of a whole dataset are not
means of per-batch metrics (AP and IoU do not decompose over batches), which is why nothing here is jitted.

Every returned value is a plain Python float / int / list, so a result dict is JSON-able as it is; fractions are
in [0, 1], never percentages. Undefined values are NaN (the report writer turns them into JSON null).
"""
from __future__ import annotations

import numpy as np


def _finite_or_lowest(scores: np.ndarray) -> np.ndarray:
  """NaN scores (a diverged model) rank below every real score instead of raising or ranking arbitrarily."""
  scores = np.asarray(scores)
  if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
    scores = np.where(np.isnan(scores), -np.inf, scores)
  return scores


def _binary(targets: np.ndarray, what: str) -> np.ndarray:
  t = np.asarray(targets)
  if t.dtype != bool:
    if not ((t == 0) | (t == 1)).all():
      raise ValueError(f"{what} must be 0/1 (hard labels), got values {np.unique(t)[:10]}")
    t = t.astype(bool)
  return t


def _ratio(num, den) -> np.ndarray:
  """num / den elementwise, NaN where den == 0 (no warnings)."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  out = np.full(np.broadcast(num, den).shape, np.nan)
  np.divide(num, den, out=out, where=den > 0)
  return out


def _floats(a) -> list:
  return [float(v) for v in np.asarray(a, np.float64).ravel()]


def _nanmean(a) -> float:
  a = np.asarray(a, np.float64)
  a = a[~np.isnan(a)]
  return float(a.mean()) if a.size else float("nan")


# ----------------------------------------------------------------------------------------------- classification
def topk_accuracy(scores, labels, k: int = 1) -> float:
  """Fraction of examples whose true label is among the k highest scores.

  Ranking is that of `np.argsort(-scores, kind="stable")`: higher score first, equal scores in class-index order
  (this is what torch.topk does for distinct values, and a deterministic rule for ties). A label's rank is thus
  #(scores > its score) + #(equal scores at a lower class index), computed without sorting. NaN scores rank last,
  so a NaN true-label score is a miss. k larger than the number of classes is clamped (as timm's `accuracy`).
  """
  scores = _finite_or_lowest(scores)
  labels = np.asarray(labels).astype(np.int64)
  if scores.ndim != 2 or labels.shape != scores.shape[:1]:
    raise ValueError(f"scores must be [N, C] and labels [N]; got {scores.shape} and {labels.shape}")
  n, c = scores.shape
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  if n == 0:
    return float("nan")
  if labels.min() < 0 or labels.max() >= c:
    raise ValueError(f"labels must lie in [0, {c}), got range [{labels.min()}, {labels.max()}]")
  own = scores[np.arange(n), labels][:, None]
  before = (scores > own) | ((scores == own) & (np.arange(c)[None, :] < labels[:, None]))
  rank = before.sum(axis=1)
  return float(np.mean(rank < min(k, c)))


def average_precision(scores, targets) -> float:
  """Non-interpolated average precision AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds.

  Examples are ranked by decreasing score; all examples with the same score enter at one threshold (so the
  result does not depend on the order of ties), as scikit-learn's `average_precision_score` and torchmetrics'
  binary AP. NaN when there is no positive (recall undefined). NaN scores rank last. One sort: O(N log N).
  """
  scores = _finite_or_lowest(scores).ravel()
  targets = _binary(targets, "targets").ravel()
  if scores.shape != targets.shape:
    raise ValueError(f"scores and targets differ in size: {scores.shape} vs {targets.shape}")
  positives = int(targets.sum())
  if positives == 0:
    return float("nan")
  order = np.argsort(-scores, kind="stable")
  s, t = scores[order], targets[order]
  tp = np.cumsum(t, dtype=np.int64)
  # The last position of each run of equal scores is one threshold: everything up to it is predicted positive.
  last = np.flatnonzero(np.append(s[1:] != s[:-1], True))
  tp_at = tp[last]
  precision = tp_at / (last + 1.0)
  recall_gain = np.diff(tp_at, prepend=0) / positives
  return float(np.sum(recall_gain * precision))


def mean_average_precision(scores, targets) -> dict:
  """Multi-label mAP of scores [N, C] against multi-hot targets [N, C].

  macro_map   mean of the per-class APs over the classes that have at least one positive in `targets`; classes
              without positives have undefined AP (NaN in per_class_ap), are left out of the mean and listed in
              `excluded_classes` (scikit-learn's average="macro" would instead give a NaN / warning).
  micro_map   AP of all N*C (score, target) pairs flattened into one ranking (average="micro").
  """
  scores, targets = np.asarray(scores), _binary(targets, "targets")
  if scores.ndim != 2 or scores.shape != targets.shape:
    raise ValueError(f"scores and targets must both be [N, C]; got {scores.shape} and {targets.shape}")
  per_class = [average_precision(scores[:, j], targets[:, j]) for j in range(scores.shape[1])]
  positives = targets.sum(axis=0)
  return {
      "macro_map": _nanmean(per_class),
      "micro_map": average_precision(scores, targets),
      "per_class_ap": _floats(per_class),
      "positives_per_class": [int(p) for p in positives],
      "excluded_classes": [int(j) for j in np.flatnonzero(positives == 0)],
      "num_examples": int(scores.shape[0]),
  }


def multilabel_confusion(scores, targets, threshold: float = 0.5) -> np.ndarray:
  """int64 [C, 2, 2] per-class confusion matrices [[tn, fp], [fn, tp]] (rows true, cols predicted), as
  scikit-learn's multilabel_confusion_matrix. Predicted positive when score > threshold (strictly): pass
  threshold=0.5 for probabilities, 0.0 for logits."""
  scores, targets = _finite_or_lowest(scores), _binary(targets, "targets")
  if scores.ndim != 2 or scores.shape != targets.shape:
    raise ValueError(f"scores and targets must both be [N, C]; got {scores.shape} and {targets.shape}")
  pred = scores > threshold
  tp = (pred & targets).sum(axis=0)
  fp = (pred & ~targets).sum(axis=0)
  fn = (~pred & targets).sum(axis=0)
  tn = (~pred & ~targets).sum(axis=0)
  return np.stack([np.stack([tn, fp], -1), np.stack([fn, tp], -1)], 1).astype(np.int64)


# ----------------------------------------------------------------------------------------------- dense tasks
def confusion_matrix(labels, preds, num_classes: int, ignore_index: int | None = 255, weights=None) -> np.ndarray:
  """int64 [K, K] pixel counts, rows = true label, columns = prediction.

  Pixels whose label equals `ignore_index` or lies outside [0, K) are skipped, as the reference SegMunich
  evaluation does (it keeps 0 <= label < K). A prediction outside [0, K) at a counted pixel is an error rather
  than silently landing in a wrong cell. `weights` (same shape, non-negative integers, e.g. a 0/1 validity map)
  multiplies each pixel's count. Matrices of separate scenes/batches add up: sum them for the dataset.
  """
  k = int(num_classes)
  labels, preds = np.asarray(labels).ravel(), np.asarray(preds).ravel()
  if labels.shape != preds.shape:
    raise ValueError(f"labels and preds differ in size: {labels.size} vs {preds.size}")
  keep = (labels >= 0) & (labels < k)
  if ignore_index is not None:
    keep &= labels != ignore_index
  labels, preds = labels[keep].astype(np.int64), preds[keep].astype(np.int64)
  if preds.size and (preds.min() < 0 or preds.max() >= k):
    raise ValueError(f"predictions must lie in [0, {k}), got range [{preds.min()}, {preds.max()}]")
  cells = labels * k + preds
  if weights is None:
    return np.bincount(cells, minlength=k * k).astype(np.int64).reshape(k, k)
  w = np.asarray(weights).ravel()
  if w.shape != keep.shape:
    raise ValueError(f"weights must have one value per pixel ({keep.size}), got {w.size}")
  w = w[keep]
  if w.size and (w.min() < 0 or not np.array_equal(w, np.round(w))):
    raise ValueError("weights must be non-negative integers (the result is a count)")
  counts = np.bincount(cells, weights=w.astype(np.float64), minlength=k * k)
  return np.rint(counts).astype(np.int64).reshape(k, k)


def segmentation_metrics(cm) -> dict:
  """Semantic-segmentation metrics of a [K, K] confusion matrix (rows true, cols predicted).

  oa         trace / total.
  iou        per class TP / (TP + FP + FN). A class absent from both labels and predictions has 0/0: its IoU is
             undefined (NaN) and it is listed in `undefined_classes`.
  miou       mean IoU over the classes whose IoU is defined. The reference averages over all K classes and so
             returns NaN as soon as one class is absent from the evaluated scenes; we exclude it instead.
  precision  per class TP / predicted (NaN if never predicted); recall TP / true (NaN if absent from labels).
  f1         per class 2TP / (2TP + FP + FN) (defined exactly where IoU is); mean_f1 over defined classes.
  """
  cm = np.asarray(cm, np.int64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f"confusion matrix must be [K, K], got {cm.shape}")
  tp, true, pred = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
  total = int(cm.sum())
  union = true + pred - tp
  iou = _ratio(tp, union)
  f1 = _ratio(2 * tp, true + pred)
  return {
      "oa": float(np.trace(cm) / total) if total else float("nan"),
      "miou": _nanmean(iou),
      "mean_f1": _nanmean(f1),
      "iou": _floats(iou),
      "precision": _floats(_ratio(tp, pred)),
      "recall": _floats(_ratio(tp, true)),
      "f1": _floats(f1),
      "pixels_per_class": [int(v) for v in true],
      "undefined_classes": [int(j) for j in np.flatnonzero(union == 0)],
      "num_pixels": total,
  }


def change_detection_metrics(cm) -> dict:
  """Binary change detection metrics of a 2x2 confusion matrix [[tn, fp], [fn, tp]] (class 1 = change).

  precision, recall, f1 and iou are those of the change class; oa is the overall accuracy. A zero denominator
  (no predicted change, no true change) gives 0.0 rather than NaN, as scikit-learn's zero_division=0, so that a
  model predicting "no change" everywhere scores 0 instead of dropping out of averages and plots.
  """
  cm = np.asarray(cm, np.int64)
  if cm.shape != (2, 2):
    raise ValueError(f"change detection needs a 2x2 confusion matrix, got {cm.shape}")
  tn, fp, fn, tp = (int(v) for v in cm.ravel())

  def div(a, b):
    return a / b if b else 0.0

  total = tn + fp + fn + tp
  return {
      "precision": float(div(tp, tp + fp)),
      "recall": float(div(tp, tp + fn)),
      "f1": float(div(2 * tp, 2 * tp + fp + fn)),
      "iou": float(div(tp, tp + fp + fn)),
      "oa": float(div(tp + tn, total)),
      "tp": tp, "fp": fp, "fn": fn, "tn": tn,
      "num_pixels": total,
  }
