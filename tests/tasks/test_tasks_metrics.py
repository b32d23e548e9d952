"""Dataset-level metrics against hand-computed values and brute-force implementations of their definitions."""
import math
import time

import numpy as np
import pytest

from spectralgpt_jax.tasks import metrics as M


def brute_force_ap(scores, targets):
  """AP from the definition: for each distinct threshold t (descending), predict positive iff score >= t, count
  TP/FP, and add (R_t - R_prev) * P_t."""
  scores, targets = np.asarray(scores, np.float64), np.asarray(targets).astype(bool)
  positives = targets.sum()
  if positives == 0:
    return float("nan")
  ap, prev_recall = 0.0, 0.0
  for t in sorted(set(scores.tolist()), reverse=True):
    predicted = scores >= t
    tp = int((predicted & targets).sum())
    fp = int((predicted & ~targets).sum())
    recall = tp / positives
    ap += (recall - prev_recall) * tp / (tp + fp)
    prev_recall = recall
  return ap


# ----------------------------------------------------------------------------------------------- AP
def test_ap_hand_computed_with_ties():
  # scores [0.9, 0.8, 0.8, 0.3], targets [1, 0, 1, 0], 2 positives:
  #   t=0.9: TP=1 FP=0 -> P=1,   R=1/2, adds 1/2 * 1   = 1/2
  #   t=0.8: TP=2 FP=1 -> P=2/3, R=1,   adds 1/2 * 2/3 = 1/3
  #   t=0.3: R unchanged, adds 0                 -> AP = 5/6
  assert M.average_precision([0.9, 0.8, 0.8, 0.3], [1, 0, 1, 0]) == pytest.approx(5 / 6, abs=1e-12)
  # The tie decides here: ranking the tied positive first would give 1.0; one threshold for the tie gives
  #   t=0.9: P=1, R=1/2 -> 1/2;  t=0.8: TP=2 FP=1, P=2/3, R=1 -> 1/3;  AP = 5/6.
  assert M.average_precision([0.9, 0.8, 0.8, 0.3], [1, 1, 0, 0]) == pytest.approx(5 / 6, abs=1e-12)
  # scikit-learn's documented example: average_precision_score([0,0,1,1], [0.1,0.4,0.35,0.8]) = 0.8333...
  #   t=0.8: P=1, R=1/2 -> 1/2;  t=0.4: P=1/2;  t=0.35: P=2/3, R=1 -> 1/3;  AP = 5/6.
  assert M.average_precision([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(5 / 6, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_ap_matches_brute_force_on_tied_scores(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(5, 300))
  scores = rng.random(n).round(1)  # about 11 distinct values: many ties
  targets = rng.random(n) < rng.uniform(0.05, 0.9)
  if not targets.any():
    targets[0] = True
  expected = brute_force_ap(scores, targets)
  assert M.average_precision(scores, targets) == pytest.approx(expected, abs=1e-12)
  perm = rng.permutation(n)  # the order of tied examples must not matter
  assert M.average_precision(scores[perm], targets[perm]) == pytest.approx(expected, abs=1e-12)
  distinct = rng.random(n)
  assert M.average_precision(distinct, targets) == pytest.approx(brute_force_ap(distinct, targets), abs=1e-12)


def test_ap_edge_cases():
  assert M.average_precision([0.3, 0.1, 0.3], [1, 1, 1]) == 1.0            # all positive
  # Single positive tied with one negative at 0.5, one negative above: threshold 0.5 predicts 3 -> AP = 1/3.
  assert M.average_precision([0.5, 0.7, 0.5, 0.2], [1, 0, 0, 0]) == pytest.approx(1 / 3)
  assert M.average_precision([0.9, 0.1], [1, 0]) == 1.0                    # single positive ranked first
  assert math.isnan(M.average_precision([0.9, 0.1, 0.4], [0, 0, 0]))       # no positive: undefined
  # NaN scores (diverged model) rank last instead of raising.
  assert M.average_precision([np.nan, 0.2, 0.1], [1, 0, 1]) == pytest.approx(brute_force_ap([-1, 0.2, 0.1], [1, 0, 1]))
  with pytest.raises(ValueError, match="0/1"):
    M.average_precision([0.1, 0.2], [0.5, 1])


def test_ap_is_fast_on_millions_of_scores():
  rng = np.random.default_rng(0)
  scores = rng.random(2_500_000).astype(np.float32).round(3)
  targets = rng.random(2_500_000) < 0.1
  start = time.perf_counter()
  ap = M.average_precision(scores, targets)
  assert time.perf_counter() - start < 10.0  # ~0.3 s on one core; generous for a shared machine
  assert 0.05 < ap < 0.15  # random scores: about the positive rate


# ----------------------------------------------------------------------------------------------- mAP
def test_macro_and_micro_map_differ_and_empty_classes_are_excluded():
  scores = np.array([
      [0.9, 0.45, 0.05],
      [0.8, 0.20, 0.05],
      [0.7, 0.30, 0.05],
      [0.6, 0.40, 0.05],
  ])
  targets = np.array([[1, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
  out = M.mean_average_precision(scores, targets)
  # Class 0 and class 1 each rank their positive first: AP 1 each; class 2 has no positive -> NaN, excluded.
  assert out["per_class_ap"][:2] == [1.0, 1.0] and math.isnan(out["per_class_ap"][2])
  assert out["macro_map"] == 1.0
  assert out["excluded_classes"] == [2] and out["positives_per_class"] == [1, 1, 0]
  # Micro: one ranking of all 12 scores: 0.9(+) P=1 R=1/2; 0.8, 0.7, 0.6 negatives; 0.45(+) is 5th: P=2/5, R=1.
  #   AP = 1/2 * 1 + 1/2 * 2/5 = 0.7
  assert out["micro_map"] == pytest.approx(0.7)
  assert out["micro_map"] == pytest.approx(brute_force_ap(scores.ravel(), targets.ravel()))
  assert out["num_examples"] == 4


def test_map_without_any_positive_is_nan():
  out = M.mean_average_precision(np.random.default_rng(0).random((5, 3)), np.zeros((5, 3)))
  assert math.isnan(out["macro_map"]) and math.isnan(out["micro_map"]) and out["excluded_classes"] == [0, 1, 2]


def test_multilabel_confusion():
  scores = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.5], [0.4, 0.8]])
  targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
  mcm = M.multilabel_confusion(scores, targets, threshold=0.5)
  # class 0: pred [1,1,0,0] vs true [1,0,1,0] -> tn=1 fp=1 fn=1 tp=1
  # class 1: pred [0,1,0,1] (0.5 is not > 0.5) vs true [0,1,1,0] -> tn=1 fp=1 fn=1 tp=1
  assert mcm.dtype == np.int64 and mcm.tolist() == [[[1, 1], [1, 1]], [[1, 1], [1, 1]]]
  # class 1 at 0.45: pred [0,1,1,1] -> tn=1 fp=1 fn=0 tp=2
  assert M.multilabel_confusion(scores, targets, threshold=0.45)[1].tolist() == [[1, 1], [0, 2]]
  all_pos = M.multilabel_confusion(scores, targets, threshold=0.0)
  assert all_pos[:, 0, :].tolist() == [[0, 2], [0, 2]] and all_pos.sum() == 8


# ----------------------------------------------------------------------------------------------- top-k
def test_topk_accuracy_hand_made():
  scores = np.array([
      [0.10, 0.50, 0.20, 0.05, 0.10, 0.05],  # label 1: rank 0
      [0.30, 0.20, 0.10, 0.25, 0.10, 0.05],  # label 3: rank 1 (0.30 above)
      [0.90, 0.02, 0.02, 0.02, 0.02, 0.02],  # label 5: tied with 1..4, which come first by index -> rank 5
      [0.20, 0.20, 0.20, 0.20, 0.10, 0.10],  # label 2: tied with 0, 1 (lower index first) -> rank 2
  ])
  labels = np.array([1, 3, 5, 2])
  assert M.topk_accuracy(scores, labels, 1) == 0.25
  assert M.topk_accuracy(scores, labels, 2) == 0.5
  assert M.topk_accuracy(scores, labels, 3) == 0.75
  assert M.topk_accuracy(scores, labels, 5) == 0.75
  assert M.topk_accuracy(scores, labels, 6) == 1.0
  assert M.topk_accuracy(scores, labels, 50) == 1.0  # clamped to the number of classes
  order = np.argsort(-scores, axis=1, kind="stable")  # the documented rule
  for k in range(1, 7):
    assert M.topk_accuracy(scores, labels, k) == np.mean([labels[i] in order[i, :k] for i in range(4)])
  nan = scores.copy()
  nan[0, 1] = np.nan
  assert M.topk_accuracy(nan, labels, 1) == 0.0
  with pytest.raises(ValueError):
    M.topk_accuracy(scores, np.array([1, 3, 6, 2]), 1)


# ----------------------------------------------------------------------------------------------- segmentation
def test_confusion_matrix_skips_ignored_and_out_of_range_labels():
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 255, 255, -1, 3])
  preds = np.array([0, 0, 1, 1, 2, 2, 2, 0, 1, 2, 0, 0])
  cm = M.confusion_matrix(labels, preds, 3)
  assert cm.dtype == np.int64
  assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
  weights = np.array([1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
  assert M.confusion_matrix(labels, preds, 3, weights=weights).tolist() == [[1, 1, 0], [0, 1, 1], [1, 0, 2]]
  as_uint8 = M.confusion_matrix(labels[:10].astype(np.uint8).reshape(2, 5), preds[:10].reshape(2, 5), 3)
  assert as_uint8.tolist() == cm.tolist()
  with pytest.raises(ValueError, match="predictions"):
    M.confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)
  # An ignored pixel may carry any prediction.
  assert M.confusion_matrix(np.array([255]), np.array([200]), 3).sum() == 0


def test_segmentation_metrics_hand_computed():
  cm = np.array([[2, 1, 0], [0, 1, 1], [1, 0, 2]])
  out = M.segmentation_metrics(cm)
  assert out["oa"] == 5 / 8                       # (2 + 1 + 2) / 8
  # IoU_c = TP / (row + col - TP): class 0: 2/(3+3-2) = 1/2, class 1: 1/(2+2-1) = 1/3, class 2: 2/(3+3-2) = 1/2
  assert out["iou"] == pytest.approx([0.5, 1 / 3, 0.5])
  assert out["miou"] == pytest.approx(4 / 9)      # (1/2 + 1/3 + 1/2) / 3
  assert out["precision"] == pytest.approx([2 / 3, 1 / 2, 2 / 3])
  assert out["recall"] == pytest.approx([2 / 3, 1 / 2, 2 / 3])
  assert out["f1"] == pytest.approx([2 / 3, 1 / 2, 2 / 3])
  assert out["num_pixels"] == 8 and out["pixels_per_class"] == [3, 2, 3] and out["undefined_classes"] == []


def test_absent_class_is_undefined_and_excluded_from_miou():
  cm = np.zeros((4, 4), np.int64)
  cm[:3, :3] = [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
  out = M.segmentation_metrics(cm)
  assert math.isnan(out["iou"][3]) and math.isnan(out["precision"][3]) and math.isnan(out["f1"][3])
  assert out["miou"] == pytest.approx(4 / 9) and out["undefined_classes"] == [3]
  # Predicted but never true: IoU 0 is defined and pulls the mean down: (1/2 + 1/3 + 1/2 + 0) / 4 = 1/3.
  cm[0, 3] = 1
  cm[0, 0] -= 1
  out = M.segmentation_metrics(cm)
  assert out["iou"][3] == 0.0 and math.isnan(out["recall"][3])
  # class 0 now: TP=1, row 3, col 2 -> 1/4
  assert out["miou"] == pytest.approx((1 / 4 + 1 / 3 + 2 / 4 + 0) / 4)
  assert math.isnan(M.segmentation_metrics(np.zeros((2, 2)))["oa"])


# ----------------------------------------------------------------------------------------------- change detection
def test_change_detection_metrics_hand_computed():
  out = M.change_detection_metrics(np.array([[90, 5], [3, 2]]))  # tn fp / fn tp
  assert (out["tn"], out["fp"], out["fn"], out["tp"]) == (90, 5, 3, 2)
  assert out["precision"] == pytest.approx(2 / 7)
  assert out["recall"] == pytest.approx(2 / 5)
  assert out["f1"] == pytest.approx(1 / 3)          # 2*2 / (2*2 + 5 + 3) = 4/12
  assert out["iou"] == pytest.approx(0.2)           # 2 / (2 + 5 + 3)
  assert out["oa"] == pytest.approx(0.92)           # 92 / 100
  assert out["num_pixels"] == 100


def test_change_detection_zero_division_gives_zero():
  none = M.change_detection_metrics(np.array([[100, 0], [0, 0]]))
  assert (none["precision"], none["recall"], none["f1"], none["oa"]) == (0.0, 0.0, 0.0, 1.0)
  missed = M.change_detection_metrics(np.array([[50, 0], [10, 0]]))
  assert (missed["precision"], missed["recall"], missed["f1"]) == (0.0, 0.0, 0.0) and missed["oa"] == 50 / 60
  assert M.change_detection_metrics(np.zeros((2, 2)))["oa"] == 0.0
  with pytest.raises(ValueError):
    M.change_detection_metrics(np.zeros((3, 3)))


def test_results_are_plain_python():
  out = M.segmentation_metrics(np.array([[2, 1], [0, 3]]))
  assert all(type(v) is float for v in out["iou"]) and type(out["miou"]) is float
  out = M.mean_average_precision(np.array([[0.2, 0.1]]), np.array([[1, 0]]))
  assert type(out["macro_map"]) is float and all(type(v) is int for v in out["positives_per_class"])
