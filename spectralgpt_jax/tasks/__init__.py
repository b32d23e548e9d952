"""Task plug-ins of the one training loop: pretraining (MAE), classification, segmentation, change detection.

`get(config)` returns the task named by `config.task`; see `tasks/base.py` for the interface.
"""
from __future__ import annotations

TASKS = {
    "pretrain": "spectralgpt_jax.tasks.pretrain:PretrainTask",
    "classification": "spectralgpt_jax.tasks.classification:ClassificationTask",
    "segmentation": "spectralgpt_jax.tasks.segmentation:SegmentationTask",
    "change_detection": "spectralgpt_jax.tasks.change_detection:ChangeDetectionTask",
}


def get(config):
  """The Task object for `config.task` (raises TaskConfigError naming the key)."""
  import importlib

  from spectralgpt_jax.tasks.base import TaskConfigError
  name = config.get("task", "")
  if name not in TASKS:
    raise TaskConfigError(f"config.task={name!r}: must be one of {', '.join(TASKS)}")
  module, cls = TASKS[name].split(":")
  return getattr(importlib.import_module(module), cls)(config)
