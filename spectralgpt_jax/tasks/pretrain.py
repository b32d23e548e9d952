"""Masked-autoencoder pretraining (the reference's main_pretrain): masked-token MSE + spectral-sum MSE.

Randomness: the masking noise of a step is drawn for the whole global batch in `prepare` from the step's key
(`fold_in(seed key, step)`), so a resumed run draws exactly the masks it would have drawn, k accumulation
micro-batches see the same masks as one large batch, and no RNG state needs checkpointing. Eval batch i always
uses `fold_in(eval key, i)`: every validation pass sees the same masks, so eval curves measure the model.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spectralgpt_jax import models
from spectralgpt_jax.tasks import base

LOSS_KEYS = ("loss", "loss_masked", "loss_spectral")


def draw_noise(key: jax.Array, batch: int, num_tokens: int, sharding) -> jax.Array:
  noise = jax.random.uniform(key, (batch, num_tokens), jnp.float32)
  # threefry is partitionable in current JAX, so the values do not depend on the layout chosen here.
  return noise if sharding is None else jax.lax.with_sharding_constraint(noise, sharding)


class PretrainTask(base.Task):
  name = "pretrain"
  model_kinds = ("mae",)
  train_metrics = LOSS_KEYS
  has_previews = True

  def __init__(self, config):
    super().__init__(config)
    self.mask_ratio = float(config.model.mask_ratio)
    self._num_tokens: int | None = None

  def iterator(self, data_cfg, *, global_batch_size, sharding, seed, train, start_batch=0):
    from spectralgpt_jax.data import pipeline
    return pipeline.pretrain_iterator(data_cfg, global_batch_size=global_batch_size, sharding=sharding, seed=seed,
                                      train=train, start_batch=start_batch)

  def class_names(self) -> tuple[str, ...]:
    return ()

  def model_overrides(self) -> dict[str, Any]:
    return {}

  def model_config(self) -> models.ModelConfig:
    cfg = super().model_config()
    self._num_tokens = cfg.num_tokens
    return cfg

  def export_metadata(self) -> dict[str, Any]:
    return {**super().export_metadata(), "mask_ratio": self.mask_ratio}

  def check(self) -> None:
    super().check()
    cfg = self.model_config()
    if not 0.0 <= self.mask_ratio < 1.0:
      raise base.TaskConfigError(f"config.model.mask_ratio={self.mask_ratio}: must be in [0, 1)")
    if models.mae.num_kept(cfg.num_tokens, self.mask_ratio) < 1:
      raise base.TaskConfigError(f"config.model.mask_ratio={self.mask_ratio}: keeps no token of {cfg.num_tokens}")

  # ------------------------------------------------------------------------------------------- device
  def prepare(self, batch, key, sharding):
    return {**batch, "noise": draw_noise(key, batch["image"].shape[0], self._tokens(), sharding)}

  def _tokens(self) -> int:
    if self._num_tokens is None:
      self.model_config()
    return self._num_tokens

  def loss(self, model, batch, *, key, train=True):
    out = model(batch["image"], self.mask_ratio, noise=batch["noise"], train=train, rngs=nnx.Rngs(dropout=key))
    return out["loss"], {k: out[k].astype(jnp.float32) for k in LOSS_KEYS}

  def eval_outputs(self, model, batch, *, key):
    """Sums of the per-example loss terms over the valid rows, and their count. Per-example terms come from a
    vmap over single examples; their mean equals the batch loss because every example masks as many tokens."""
    images = batch["image"]
    noise = draw_noise(key, images.shape[0], self._tokens(), None)

    def one(x, n):
      out = model(x[None], self.mask_ratio, noise=n[None], train=False)
      return {k: out[k].astype(jnp.float32) for k in LOSS_KEYS}

    valid = base.valid_rows(batch)
    per_example = jax.vmap(one)(images, noise)
    sums = {k: jnp.sum(v * valid) for k, v in per_example.items()}
    return {"sums": {**sums, "count": jnp.sum(valid)}, "rows": {}}

  def evaluator(self) -> base.Evaluator:
    return _MeanLoss()

  # ------------------------------------------------------------------------------------------- previews
  def reconstruct(self, model, images: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
    """Input, masked input and reconstruction [n, H, W, bands]: the prediction on masked tokens and the input on
    visible ones (as the MAE paper figures); masked regions of the masked input are zero."""
    cfg = model.cfg
    noise = jax.random.uniform(key, (images.shape[0], cfg.num_tokens), jnp.float32)
    out = model(images, self.mask_ratio, noise=noise, train=False)
    pred = models.unpatchify(out["pred"], cfg)
    removed = models.unpatchify(jnp.repeat(out["mask"][..., None], cfg.patch_dim, axis=-1), cfg)
    return {"input": images, "masked": images * (1 - removed),
            "reconstruction": images * (1 - removed) + pred * removed}


class _MeanLoss(base.Evaluator):
  """Per-example means of the loss terms over the whole held-out split (padding rows excluded)."""

  def __init__(self):
    self.totals: dict[str, float] = {}

  def add(self, sums: Mapping[str, np.ndarray], rows, host) -> None:
    for k, v in sums.items():
      self.totals[k] = self.totals.get(k, 0.0) + float(v)

  def result(self) -> dict[str, Any]:
    count = max(self.totals.get("count", 0.0), 1.0)
    out = {k: v / count for k, v in self.totals.items() if k != "count"}
    return {**out, "num_examples": int(self.totals.get("count", 0))}
