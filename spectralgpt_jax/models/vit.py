"""Classifier `SpectralViT`: encoder -> global average pool -> LayerNorm (the encoder's `norm`) -> dropout -> head."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from spectralgpt_jax.models.config import ModelConfig
from spectralgpt_jax.models.encoder import Encoder
from spectralgpt_jax.models.layers import dense


def _head_bias_init(dim: int):
  bound = dim ** -0.5   # torch nn.Linear default bias init, kept by the reference
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _head_kernel_init(key, shape, dtype=jnp.float32):
  # Reference: trunc_normal_(std=2e-5) with bounds +-2 (absolute), i.e. effectively a plain normal.
  return 2e-5 * jax.random.normal(key, shape, dtype)


class SpectralViT(nnx.Module):
  """Defaults pool over all tokens and use separate (pretrained) position embeddings. `reference_pooling` drops
  token 0 from the pool and `reference_pos_embed` uses the reference's joint zero-initialised `pos_embed`."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    if cfg.kind != "vit":
      raise ValueError(f"SpectralViT needs kind='vit', got {cfg.kind!r}")
    self.cfg = cfg
    self.encoder = Encoder(cfg, joint_pos_embed=cfg.reference_pos_embed, rngs=rngs)
    self.head = dense(cfg.embed_dim, cfg.num_classes, ("embed", "classes"), "classes", dtype=jnp.dtype(cfg.dtype),
                      kernel_init=_head_kernel_init, rngs=rngs)
    self.head.bias.set_value(_head_bias_init(cfg.embed_dim)(rngs.params(), (cfg.num_classes,)))
    self.rngs = nnx.Rngs(dropout=rngs.params())   # fallback for eager `vit(x, train=True)`

  def pool(self, tokens: jax.Array) -> jax.Array:
    return (tokens[:, 1:] if self.cfg.reference_pooling else tokens).mean(axis=1)

  def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Logits [N, num_classes] (float32). Eval mode unless train=True (drop-path and dropout on)."""
    rngs = rngs if rngs is not None else self.rngs
    pooled = self.encoder.norm(self.pool(self.encoder.features(x, train=train, rngs=rngs)))
    if train and self.cfg.dropout > 0:
      keep = 1.0 - self.cfg.dropout
      pooled = pooled * jax.random.bernoulli(rngs.dropout(), keep, pooled.shape) / keep
    return self.head(pooled).astype(jnp.float32)
