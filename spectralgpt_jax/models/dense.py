"""Segmentation (`SegmentationViT`, SegMunich) and siamese change detection (`ChangeDetectionViT`, OSCD).

Both follow the reference downstream models (downstream_tasks/SegMunich/src/models_vit_tensor_CD_2.py and
downstream_tasks/OSCD/model/models_vit_tensor_CD.py): the encoder's last-block tokens (no final norm) -> learned
spectral merge T' -> 1 -> [N, h, w, D] map -> four-branch neck -> PPM + FPN head -> 3x3 classifier at 8x the patch
grid. Change detection runs both dates through the same encoder and merge and decodes the plain difference
f(x1) - f(x2). Both return raw logits [N, H, W, K] in float32 (the reference's OSCD model ends in LogSoftmax).

Parameter roots: `encoder` (shared with the MAE and classifier), `merge`, `neck`, `fpn`, `classifier`
(`HEAD_ROOTS`); interop/keymap.py maps them to the reference keys `fc.0`, `conv0..3`, `decoder.*`, `cls_seg.0`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from spectralgpt_jax.models.config import ModelConfig
from spectralgpt_jax.models.encoder import Encoder
from spectralgpt_jax.models.neck import FPNHead, SpectralMerge, classifier_conv, neck

HEAD_ROOTS = ("merge", "neck", "fpn", "classifier")


class _DenseModel(nnx.Module):
  """Shared encoder + head; the subclasses differ in how the feature map is formed (one image or two)."""

  kind = ""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    if cfg.kind != self.kind:
      raise ValueError(f"{type(self).__name__} needs kind={self.kind!r}, got {cfg.kind!r}")
    self.cfg = cfg
    self.encoder = Encoder(cfg, rngs=rngs)
    self.merge = SpectralMerge(cfg, rngs=rngs)
    self.neck = neck(cfg, rngs=rngs)
    self.fpn = FPNHead(cfg, rngs=rngs)
    self.classifier = classifier_conv(cfg, rngs=rngs)
    self.rngs = nnx.Rngs(dropout=rngs.params())   # fallback for eager `model(x, train=True)`

  def feature_map(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    """[N, H, W, bands] -> merged map [N, h, w, D]."""
    return self.merge(self.encoder.features(x, train=train, rngs=rngs))

  def decode_map(self, fmap: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None,
                 intermediates: bool = False):
    """Neck + FPN + classifier on a [N, h, w, D] map -> logits [N, 8h, 8w, K] (float32), or with
    `intermediates` a dict of the neck outputs m0..m3, the fused map `fpn` and `logits`."""
    rngs = rngs if rngs is not None else self.rngs
    m = [branch(fmap, train=train, rngs=rngs) for branch in self.neck]
    fused = self.fpn(m, train=train, rngs=rngs)
    logits = self.classifier(fused).astype(jnp.float32)
    if not intermediates:
      return logits
    return {**{f"m{i}": v for i, v in enumerate(m)}, "fpn": fused, "logits": logits}

  def decode(self, tokens: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None,
             intermediates: bool = False):
    """The head alone on encoder tokens [N, L, D] (token l = t*h*w + i*w + j), bypassing the encoder; with
    `intermediates` the dict also holds the merged map `merged`."""
    merged = self.merge(tokens)
    out = self.decode_map(merged, train=train, rngs=rngs, intermediates=intermediates)
    return {"merged": merged, **out} if intermediates else out


class SegmentationViT(_DenseModel):
  """`model(x)` with x [N, H, W, bands] -> logits [N, H, W, num_classes]. Eval mode unless train=True (drop path,
  and the dropouts `neck_dropout` / `fuse_dropout`)."""

  kind = "seg"

  def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    rngs = rngs if rngs is not None else self.rngs
    return self.decode_map(self.feature_map(x, train=train, rngs=rngs), train=train, rngs=rngs)


class ChangeDetectionViT(_DenseModel):
  """`model(x1, x2)` with two co-registered dates [N, H, W, bands] -> logits [N, H, W, num_classes]."""

  kind = "cd"

  def difference(self, x1: jax.Array, x2: jax.Array, *, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
    """f(x1) - f(x2) [N, h, w, D], f = encoder + merge with shared weights. Both dates go through the encoder as
    one 2N batch: the same computation as two passes, with independent drop-path draws per image."""
    if x1.shape != x2.shape:
      raise ValueError(f"the two dates have shapes {x1.shape} and {x2.shape}; they must match")
    rngs = rngs if rngs is not None else self.rngs
    both = self.feature_map(jnp.concatenate([x1, x2], axis=0), train=train, rngs=rngs)
    return both[:x1.shape[0]] - both[x1.shape[0]:]

  def __call__(self, x1: jax.Array, x2: jax.Array, *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    rngs = rngs if rngs is not None else self.rngs
    return self.decode_map(self.difference(x1, x2, train=train, rngs=rngs), train=train, rngs=rngs)
