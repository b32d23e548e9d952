"""Change detection fine-tuning (OSCD): a siamese encoder on both dates, weighted NLL, whole-scene F1.

Loss: the reference's `NLLLoss(weight=w)` on log-softmax outputs, a weighted mean over pixels
(sum_i w[y_i] * -log p_i[y_i] / sum_i w[y_i]). `config.loss.class_weights`:
  "reference"  the reference's weights from the training change maps, FP_MODIFIER = 10:
               w = [10 * 2 * p, 2 * (1 - p)] with p the fraction of changed pixels over all training scenes;
  "none"       unweighted;  "w0,w1" (or a list [w_nochange, w_change] in a config file): as given.
Metrics (change = class 1): precision, recall, F1 and overall accuracy from one confusion matrix over every pixel
of every test scene (windows blended, see tasks/dense.py).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from spectralgpt_jax.tasks import base, dense, metrics

FP_MODIFIER = 10.0


def reference_class_weights(change_maps) -> np.ndarray:
  """The reference OSCD dataset's weights from the full training change maps."""
  changed = total = 0
  for cm in change_maps:
    cm = np.asarray(cm)
    changed += int((cm > 0).sum())
    total += cm.size
  if total == 0:
    raise ValueError("no training change map to compute class weights from")
  p = changed / total
  return np.array([FP_MODIFIER * 2 * p, 2 * (1 - p)], np.float32)


class ChangeDetectionTask(dense.DenseTask):
  name = "change_detection"
  model_kinds = ("cd",)
  label_key = "change"
  loss_keys = ("class_weights",)

  def __init__(self, config):
    super().__init__(config)
    self._weights: np.ndarray | None = None

  def _setting(self):
    """'reference', 'none', or the two weights (from "w0,w1" on the command line or a list in a config file)."""
    setting = self.config.get("loss", {}).get("class_weights", "reference")
    if setting in ("reference", "none"):
      return setting
    try:
      weights = [float(w) for w in (setting.split(",") if isinstance(setting, str) else setting)]
    except (TypeError, ValueError):
      weights = []
    if len(weights) != 2 or min(weights) < 0 or max(weights) <= 0:
      raise base.TaskConfigError(f"config.loss.class_weights={setting!r}: 'reference', 'none' or 'w0,w1' "
                                 "(two non-negative weights, not both zero)")
    return np.asarray(weights, np.float32)

  def check(self) -> None:
    super().check()
    self._setting()

  def class_weights(self) -> np.ndarray:
    if self._weights is None:
      setting = self._setting()
      if isinstance(setting, np.ndarray):
        self._weights = setting
      elif setting == "none":
        self._weights = np.ones(2, np.float32)
      else:
        from spectralgpt_jax.data import pipeline
        source, _ = pipeline.make_source(self.config.data, self.config.data.train_split)
        self._weights = reference_class_weights(scene[self.label_key] for scene in source.iter_scenes())
      dense.log_class_weights(self._weights, self.class_names())
    return self._weights

  def forward(self, model, batch, *, train, rngs=None):
    return model(batch["image1"], batch["image2"], train=train, rngs=rngs)

  def loss_terms(self, logits, batch):
    labels = batch[self.label_key].astype(jnp.int32)
    safe = jnp.where(labels == dense.IGNORE_INDEX, 0, labels)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    weights = jnp.asarray(self.class_weights())[safe]
    return dense.masked_mean(nll, labels, batch, weights)

  def scene_metrics(self, cm: np.ndarray) -> dict[str, Any]:
    m = metrics.change_detection_metrics(cm)
    return {"precision": m["precision"], "recall": m["recall"], "f1": m["f1"], "oa": m["oa"]}

  def table_columns(self, result: Mapping[str, Any], cm: np.ndarray) -> dict[str, list]:
    seg = metrics.segmentation_metrics(cm)
    zero = lambda values: [0.0 if np.isnan(v) else v for v in values]   # 0/0 -> 0, as in metrics.json
    return {"precision": zero(seg["precision"]), "recall": zero(seg["recall"]), "f1": zero(seg["f1"]),
            "iou": zero(seg["iou"]), "pixels": cm.sum(axis=1).tolist()}
