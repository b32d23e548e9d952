"""Observability: metrics.jsonl + TensorBoard on process 0, and a progress display with ETA.

metrics.jsonl has one JSON object per line: training log lines carry `step`, `loss`, `loss_masked`,
`loss_spectral`, `lr`, `grad_norm`, `img_per_s`, `step_s`; validation lines carry `step` and `val_*` keys.
A resumed run appends to the same file; `read_metrics` keeps the last line per (step, kind), so a step that was
logged before a crash and again after the resume appears once.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any

import jax
import numpy as np


class MetricWriter:
  """Appends metric dicts to DIR/metrics.jsonl and TensorBoard event files (process 0 only)."""

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = None
    self._tb = None
    if not self.active:
      return
    os.makedirs(workdir, exist_ok=True)
    if tensorboard:
      from tensorboardX import SummaryWriter   # imported lazily: only process 0 writes events
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, values: dict[str, Any]) -> None:
    if not self.active:
      return
    clean = {k: _scalar(v) for k, v in values.items()}
    if self._file is None:    # opened on the first row: a run that logs nothing leaves no empty file
      self._file = open(self.path, "a", buffering=1)
    self._file.write(json.dumps({"step": int(step), **clean}) + "\n")
    if self._tb is not None:
      for key, value in clean.items():
        if isinstance(value, (int, float)) and math.isfinite(value):
          self._tb.add_scalar(key, value, int(step))

  def write_config(self, workdir: str, config_json: str) -> None:
    if self.active:
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config_json)
      if self._tb is not None:
        self._tb.add_text("config", f"```\n{config_json}\n```", 0)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
    if self._file is not None:
      self._file.close()


def _scalar(value: Any) -> Any:
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    value = np.asarray(value).item()
  return value


def read_metrics(path: str, kind: str = "train") -> dict[int, dict]:
  """{step: row} of metrics.jsonl for `kind` in ("train", "val"); later lines win (resumed runs)."""
  rows: dict[int, dict] = {}
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      is_val = any(k.startswith("val_") for k in row)
      if (kind == "val") == is_val:
        rows[row["step"]] = row
  return rows


class Progress:
  """tqdm bar with ETA on an interactive terminal; otherwise (logs, SLURM files) plain log lines with ETA."""

  def __init__(self, start_step: int, total_steps: int, *, enabled: bool = True):
    self.total = total_steps
    self.start_step = start_step
    self.start_time = time.time()
    self.bar = None
    if enabled and jax.process_index() == 0 and sys.stderr.isatty():
      from tqdm import tqdm
      self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

  def eta_s(self, step: int) -> float:
    done = step - self.start_step
    if done <= 0:
      return float("nan")
    return (time.time() - self.start_time) / done * (self.total - step)

  def update(self, step: int, summary: dict[str, float]) -> None:
    if jax.process_index() != 0:
      return
    if self.bar is not None:
      self.bar.n = step
      self.bar.set_postfix({k: f"{v:.4g}" for k, v in summary.items()}, refresh=True)
      return
    eta = self.eta_s(step)
    eta_text = "?" if not math.isfinite(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
    text = " ".join(f"{k}={v:.4g}" for k, v in summary.items())
    logging.info("step %d/%d (%.0f%%) %s eta %s", step, self.total, 100 * step / self.total, text, eta_text)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
