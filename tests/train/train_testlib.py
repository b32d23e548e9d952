"""Test helpers for the training system: tiny configs and an in-test grain source of random Sentinel-2-shaped
arrays, built the way the data layer builds its pipeline (per-process slice -> batch -> global arrays)."""
from __future__ import annotations

import importlib.util
import os
import sys
import time

import grain
import jax
import ml_collections
import numpy as np

from spectralgpt_jax.data import pipeline

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # tests/: shared helpers
from config_overrides import set_dotted  # noqa: E402

TINY_MODEL = "mae_vit_tiny"     # 16 px, 12 bands, embed 32, depth 2, decoder 16 x 1


def _pretrain_config_module():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs", "pretrain.py")
  spec = importlib.util.spec_from_file_location("configs_pretrain", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  """configs/pretrain.py:demo (so tests see exactly the real key set) shrunk to the tiny model on synthetic data."""
  c = _pretrain_config_module().get_config("demo")
  c.update(dict(batch_size=16, eval_batch_size=16, total_steps=6, total_epochs=0.0, warmup_steps=2,
                warmup_epochs=0.0, num_train_examples=0, log_every=1, checkpoint_every=2, keep_checkpoints=2,
                async_checkpoints=True, eval_every=0, image_every=0, num_preview=2, compute_dtype="float32",
                skip_nonfinite=False, init_from="", export=True, progress_bar=False, tensorboard=True))
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, model=1))
  c.model = ml_collections.ConfigDict(dict(name=TINY_MODEL, mask_ratio=0.75))
  c.data = ml_collections.ConfigDict(dict(name="synthetic", image_size=16, num_examples=64, num_eval=16,
                                          seconds_per_example=0.0, as_if_processes=1))
  c.optimizer.update(dict(blr=1.5e-2, lr=0.0, min_lr=0.0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05,
                          clip_grad_norm=0.0, accum_steps=1))
  return set_dotted(c, overrides)


def pretrain_task(mask_ratio: float = 0.75, **model_fields):
  """The MAE task of the tiny config with `model_fields` overrides (e.g. depth=1)."""
  from spectralgpt_jax import tasks
  fields = {f"model.{k}": v for k, v in model_fields.items()}
  return tasks.get(tiny_config(**{"model.mask_ratio": mask_ratio, **fields}))


def synthetic_images(n: int, size: int, seed: int) -> np.ndarray:
  """Smooth random 12-band images in [0, 1] (low-frequency structure the tiny model can learn to reconstruct)."""
  rng = np.random.RandomState(seed)
  coarse = rng.rand(n, 4, 4, 12).astype(np.float32)
  return np.repeat(np.repeat(coarse, size // 4, axis=1), size // 4, axis=2)


class SyntheticSource:
  """Random-access source of {"image": float32 [S, S, 12]} examples (test data only)."""

  def __init__(self, n: int, size: int, seed: int):
    self.images = synthetic_images(n, size, seed)

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict:
    return {"image": self.images[index]}

  def __repr__(self) -> str:   # grain checkpoints compare source reprs
    return f"SyntheticSource(n={len(self.images)}, size={self.images.shape[1]})"


class _Slow(grain.transforms.Map):
  def __init__(self, seconds: float):
    self.seconds = seconds

  def map(self, example):
    time.sleep(self.seconds)   # lets the kill-and-resume test interrupt a run between checkpoints
    return example


class _AsIfProcesses(grain.transforms.Map):
  """Reorder the rows of a single-process global batch as `n` processes would lay them out.

  With n processes the pipeline gives process p the stream elements p, p+n, ... and the global batch is the
  concatenation of the processes' local batches. The masking noise is drawn per row, so a single-process run only
  matches a multi-process run when the rows come in that order.
  """

  def __init__(self, n: int):
    self.n = n

  def map(self, batch):
    rows = len(next(iter(batch.values())))
    order = np.concatenate([np.arange(p, rows, self.n) for p in range(self.n)])
    return {k: np.asarray(v)[order] for k, v in batch.items()}


def make_iterator(data_cfg, *, global_batch_size: int, sharding, seed: int, train: bool, start_batch: int = 0):
  """Same signature as loop.pipeline_iterator: the data layer's real grain pipeline (per-process slice, batching,
  global arrays, thread prefetch, checkpointable iterator) around a synthetic source."""
  n = data_cfg.num_examples if train else data_cfg.num_eval
  source = SyntheticSource(n, data_cfg.image_size, seed=1 if train else 2)
  delay = data_cfg.get("seconds_per_example", 0.0)
  ops = [_Slow(delay)] if delay else []
  as_if = data_cfg.get("as_if_processes", 1)
  batch_ops = [_AsIfProcesses(as_if)] if as_if > 1 and jax.process_count() == 1 else []
  return pipeline.build_iterator(source, ops, batch_ops=batch_ops, train=train, global_batch_size=global_batch_size,
                                 sharding=sharding, seed=seed, workers=data_cfg.get("workers", 0), prefetch=1,
                                 start_batch=start_batch)
