"""The task interface: everything that differs between pretraining, classification, segmentation and change
detection, so that one training loop and one compiled step serve all of them (the google-deepmind/jeo pattern).

The loop (`spectralgpt_jax/train/loop.py`) and the step (`train/steps.py`) only ever call:
  host, once      `model_config()`, `iterator(...)`, `num_train_examples()`, `class_names()`, `export_metadata()`
  in the step     `prepare(batch, key, sharding)` -> batch: per-example randomness drawn for the whole global batch
                  before it is split into micro-batches (so k micro-batches equal one k-times larger batch);
                  `loss(model, batch, key=, train=)` -> (scalar, {name: scalar}) under `value_and_grad`
  evaluation      `eval_outputs(model, batch, key=)` -> {"sums": {...}, "rows": {...}} inside a jitted function:
                  sums are reduced over the (valid rows of the) batch on device; rows keep the batch axis and are
                  gathered to the host (scores, labels, window logits);
                  `evaluator()` -> an `Evaluator` that accumulates the host copies batch by batch and computes the
                  dataset-level metrics once, at the end (scenic's sufficient-statistics pattern).
A task never sees the mesh or the optimizer; the step never sees labels or losses.
"""
from __future__ import annotations

import abc
import logging
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from spectralgpt_jax import models


class TaskConfigError(ValueError):
  """A config that the task cannot run; the message starts with the offending key (`config.x.y=...: why`)."""


class Evaluator(abc.ABC):
  """Host-side accumulation of one evaluation pass."""

  @abc.abstractmethod
  def add(self, sums: Mapping[str, np.ndarray], rows: Mapping[str, np.ndarray],
          host: Mapping[str, np.ndarray]) -> None:
    """One global batch: device sums, gathered per-row outputs (incl. `valid`), host-only entries (e.g. `id`)."""

  @abc.abstractmethod
  def result(self) -> dict[str, Any]:
    """Flat, JSON-able dataset-level metrics (fractions in [0, 1]) plus `num_examples`."""

  def write(self, directory: str, result: Mapping[str, Any]) -> list[str]:
    """Write predictions / tables / figures into `directory` (process 0 only); returns the paths written."""
    del directory, result
    return []


class Task(abc.ABC):
  """Base class. Subclasses set `name`, `model_kinds`, `train_metrics` and implement the abstract methods."""

  name: str = ""
  model_kinds: tuple[str, ...] = ()
  train_metrics: tuple[str, ...] = ("loss",)   # what `loss` returns besides the scalar; averaged per log interval
  loss_keys: tuple[str, ...] = ()              # allowed keys of config.loss
  metric_keys: tuple[str, ...] = ()            # allowed keys of config.metrics
  has_previews: bool = False                   # reconstruction PNGs (pretraining)

  def __init__(self, config):
    self.config = config
    self._class_names: tuple[str, ...] | None = None

  # ------------------------------------------------------------------------------------------- host: data
  def iterator(self, data_cfg, *, global_batch_size: int, sharding, seed: int, train: bool, start_batch: int = 0):
    """The data layer's grain iterator for this task (a checkpointable grain DatasetIterator)."""
    from spectralgpt_jax.data import pipeline   # imported lazily: configs can be checked without the data layer
    return pipeline.finetune_iterator(data_cfg, global_batch_size=global_batch_size, sharding=sharding, seed=seed,
                                      train=train, start_batch=start_batch)

  def num_train_examples(self) -> int:
    """Training-set size (for epoch-based schedules): the length of the data layer's training source."""
    from spectralgpt_jax.data import pipeline
    source, _ = pipeline.make_source(self.config.data, self.config.data.train_split)
    return len(source)

  def class_names(self) -> tuple[str, ...]:
    """The dataset's class names (from the prepared dataset or the demo source); generic names for data the
    registry does not know (synthetic test sources), sized by `model.num_classes`."""
    if self._class_names is None:
      from spectralgpt_jax.data import pipeline
      try:
        self._class_names = tuple(pipeline.class_names(self.config.data))
      except (KeyError, ValueError):
        count = int(self.config.model.get("num_classes", 0) or 0)
        if count <= 0:
          raise TaskConfigError(f"config.data.name={self.config.data.name!r}: unknown class names; set "
                                "config.model.num_classes") from None
        self._class_names = tuple(f"class_{i}" for i in range(count))
    return self._class_names

  # ------------------------------------------------------------------------------------------- host: model
  def model_overrides(self) -> dict[str, Any]:
    """ModelConfig fields set by the task rather than the user (e.g. the class count from the data)."""
    count = int(self.config.model.get("num_classes", 0) or 0)
    names = self.class_names()
    if count and count < len(names):
      raise TaskConfigError(f"config.model.num_classes={count}: the dataset has {len(names)} classes")
    if count > len(names):
      logging.warning("config.model.num_classes=%d > the %d classes of the data (the reference's hard-coded "
                      "62-way EuroSAT head does this); the extra outputs are never a target", count, len(names))
    return {"num_classes": count or len(names)}

  def model_config(self) -> models.ModelConfig:
    """The ModelConfig of `config.model` (name + overrides), with `compute_dtype` and the task's own fields."""
    from spectralgpt_jax.train import config_checks   # one place turns config.model into a ModelConfig
    cfg = config_checks.model_config(self.config, self.model_overrides())
    if cfg.kind not in self.model_kinds:
      raise TaskConfigError(f"config.model.name={self.config.model.name!r}: the {self.name} task needs a model of "
                            f"kind {' or '.join(self.model_kinds)}, this one is {cfg.kind!r}")
    return cfg

  def export_metadata(self) -> dict[str, Any]:
    """What an export's metadata.json records about the task and the inputs its weights expect (scene inference
    reads it): task, class names, the normalisation (name, eps or statistics table) and the band layout."""
    from spectralgpt_jax.data import transforms
    data = self.config.data
    name = data.get("normalization", None)
    normalization = {"name": name, "stats": data.get("stats", "") or None,
                     "missing_bands": data.get("missing_bands", None),
                     "append_missing_bands": data.get("append_missing_bands", False)}
    if name == "minmax_per_image":
      normalization["eps"] = transforms.REFERENCE_MINMAX_EPS.get(data.get("name", ""), 1e-12)
    out = {"task": self.name, "class_names": list(self.class_names()), "normalization": normalization}
    if data.get("append_missing_bands", False):
      out["band_layout"] = ("the bands present in the data in canonical order, then the filled missing bands "
                            f"({data.get('missing_bands')}) appended (the reference SegMunich layout)")
    return out

  def check(self) -> None:
    """Task-specific config checks (beyond the generic ones); raise TaskConfigError."""
    for section, allowed in (("loss", self.loss_keys), ("metrics", self.metric_keys)):
      extra = sorted(set(self.config.get(section, {}).keys()) - set(allowed))
      if extra:
        raise TaskConfigError(f"config.{section}.{extra[0]}: unknown key for the {self.name} task "
                              f"(known: {', '.join(allowed) or 'none'})")

  # ------------------------------------------------------------------------------------------- device
  def prepare(self, batch: dict[str, jax.Array], key: jax.Array, sharding) -> dict[str, jax.Array]:
    """Per-example randomness for the whole global batch (default: none)."""
    del key, sharding
    return batch

  @abc.abstractmethod
  def loss(self, model, batch: dict[str, jax.Array], *, key: jax.Array, train: bool = True
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scalar loss and the `train_metrics` (float32 scalars)."""

  @abc.abstractmethod
  def eval_outputs(self, model, batch: dict[str, jax.Array], *, key: jax.Array) -> dict[str, dict[str, jax.Array]]:
    """{"sums": {...}, "rows": {...}} for one evaluation batch (rows keep the batch axis, `valid` included)."""

  @abc.abstractmethod
  def evaluator(self) -> Evaluator:
    """A fresh Evaluator for one pass over `config.data.eval_split`."""


def write_class_table(directory: str, class_names, columns: dict[str, list]) -> list[str]:
  """Log the per-class table and save it as DIR/per_class.json; returns the path."""
  from spectralgpt_jax.tasks import reporting
  text, rows = reporting.per_class_table(class_names, columns)
  logging.info("per-class results:\n%s", text)
  path = os.path.join(directory, "per_class.json")
  reporting.write_json(path, rows)
  return [path]


def valid_rows(batch: Mapping[str, jax.Array]) -> jax.Array:
  """float32 [B]: 1 for real examples, 0 for the padding rows of the last evaluation batch."""
  if "valid" in batch:
    return batch["valid"].astype(jnp.float32)
  first = next(v for k, v in batch.items() if k.startswith("image"))
  return jnp.ones(first.shape[:1], jnp.float32)
