"""SpectralGPT masked autoencoder: random 3D-token masking, ViT encoder on kept tokens, light decoder, and the
reference loss (masked-token MSE + spectral-sum MSE over all positions), with every shape derived from the config."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from spectralgpt_jax.models.config import ModelConfig
from spectralgpt_jax.models.encoder import Encoder
from spectralgpt_jax.models.layers import blocks, dense, layer_norm, param, run_blocks
from spectralgpt_jax.models.patch_embed import SeparablePosEmbed, patchify


def num_kept(num_tokens: int, mask_ratio: float) -> int:
  # Python float math as the reference: int(1024 * (1 - 0.9)) = 102, int(16 * 0.1) = 1.
  return int(num_tokens * (1 - mask_ratio))


def random_masking(noise: jax.Array, keep: int):
  """Per-sample masking by argsort of noise: the `keep` smallest-noise tokens are kept.

  Returns ids_keep [N, keep], ids_restore [N, L] and mask [N, L] (1 = removed) in token order.
  """
  ids_shuffle = jnp.argsort(noise, axis=1)
  ids_restore = jnp.argsort(ids_shuffle, axis=1)
  length = noise.shape[1]
  shuffled_mask = jnp.concatenate([jnp.zeros((keep,)), jnp.ones((length - keep,))]).astype(jnp.float32)
  mask = jnp.take_along_axis(jnp.broadcast_to(shuffled_mask, noise.shape), ids_restore, axis=1)
  return ids_shuffle[:, :keep], ids_restore, mask


def reconstruction_loss(pred: jax.Array, target: jax.Array, mask: jax.Array, cfg: ModelConfig) -> dict:
  """The reference `forward_loss`, in float32, with the 192 and the 4 groups derived from the config.

  loss_masked   = sum_l mask * mean_j (pred - target)^2 / sum mask             (target per-patch normalised if
                                                                                  norm_pix_loss, as the reference)
  loss_spectral = mean_{n, s, j} (sum_t pred[n,t,s,j] - sum_t target[n,t,s,j])^2 (raw target, all positions)
  """
  pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
  target_masked = target
  if cfg.norm_pix_loss:
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=1)   # torch .var() is unbiased
    target_masked = (target - mean) / jnp.sqrt(var + 1e-6)
  per_token = jnp.mean((pred - target_masked) ** 2, axis=-1)
  loss_masked = jnp.sum(per_token * mask) / jnp.maximum(jnp.sum(mask), 1.0)

  t, h, w = cfg.grid
  group_sum = lambda v: v.reshape(v.shape[0], t, h * w, v.shape[-1]).sum(axis=1)
  loss_spectral = jnp.mean((group_sum(pred) - group_sum(target)) ** 2)
  loss = cfg.masked_loss_weight * loss_masked + cfg.spectral_loss_weight * loss_spectral
  return {"loss": loss, "loss_masked": loss_masked, "loss_spectral": loss_spectral}


class Decoder(nnx.Module):
  """decoder_embed -> mask tokens + unshuffle -> separable pos-embed -> blocks -> norm -> per-token pixel prediction."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    t, h, w = cfg.grid
    dim, dtype = cfg.decoder_embed_dim, jnp.dtype(cfg.dtype)
    self.cfg = cfg
    self.embed = dense(cfg.embed_dim, dim, ("embed", None), "norm", dtype=dtype, rngs=rngs)
    self.mask_token = param(0.02 * jax.random.normal(rngs.params(), (1, 1, dim), jnp.float32), None, None, "embed")
    self.pos_embed = SeparablePosEmbed(h * w, t, dim, rngs=rngs)
    self.blocks = blocks(dim, cfg.decoder_depth, cfg.decoder_num_heads, cfg.mlp_ratio, 0.0, dtype=dtype,
                         impl=cfg.attention_impl, chunk=cfg.attention_chunk, rngs=rngs)
    self.norm = layer_norm(dim, rngs=rngs)
    self.pred = dense(dim, cfg.patch_dim, ("embed", "patch"), "patch", dtype=dtype, rngs=rngs)

  def __call__(self, latent: jax.Array, ids_restore: jax.Array) -> jax.Array:
    y = self.embed(latent).astype(jnp.float32)
    n, keep, dim = y.shape
    length = ids_restore.shape[1]
    mask_tokens = jnp.broadcast_to(self.mask_token[...], (n, length - keep, dim))
    y = jnp.concatenate([y, mask_tokens], axis=1)
    y = jnp.take_along_axis(y, ids_restore[:, :, None], axis=1) + self.pos_embed()
    y = run_blocks(self.blocks, y, remat=self.cfg.remat, scan=self.cfg.scan_blocks,
                   fence=self.cfg.grad_fence)
    return self.pred(self.norm(y)).astype(jnp.float32)


class MaskedAutoencoder(nnx.Module):
  """`model(x, mask_ratio, noise)` with x [N, H, W, bands] channels last; see `__call__`."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    if cfg.kind != "mae":
      raise ValueError(f"MaskedAutoencoder needs kind='mae', got {cfg.kind!r}")
    self.cfg = cfg
    self.encoder = Encoder(cfg, rngs=rngs)
    self.decoder = Decoder(cfg, rngs=rngs)
    # Fallback randomness for eager use (`mae(x)` without noise); jitted train steps pass `noise`/`rngs` explicitly.
    self.rngs = nnx.Rngs(mask=rngs.params(), dropout=rngs.params())

  def encode(self, x: jax.Array, ids_keep: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None):
    """Encoder on the kept tokens only: [N, keep, D], rows in ids_keep order, after the final norm."""
    tokens = self.encoder.embed(x)
    kept = jnp.take_along_axis(tokens, ids_keep[:, :, None], axis=1)
    return self.encoder.norm(self.encoder.run_blocks(kept, train=train, rngs=rngs))

  def __call__(self, x: jax.Array, mask_ratio: float = 0.9, noise: jax.Array | None = None, *,
               train: bool = False, rngs: nnx.Rngs | None = None) -> dict:
    """Returns loss, loss_masked, loss_spectral, pred [N, L, t*p*p], mask [N, L] (1 = removed), ids_restore,
    ids_keep and latent [N, keep, D]. `noise` [N, L] uniform decides the mask; drawn when omitted."""
    cfg = self.cfg
    if not 0.0 <= mask_ratio < 1.0:
      raise ValueError(f"mask_ratio={mask_ratio} must be in [0, 1)")
    rngs = rngs if rngs is not None else self.rngs
    length = cfg.num_tokens
    if noise is None:
      noise = jax.random.uniform(rngs.mask(), (x.shape[0], length))
    if noise.shape != (x.shape[0], length):
      raise ValueError(f"noise has shape {noise.shape}, expected {(x.shape[0], length)} (batch, tokens)")
    ids_keep, ids_restore, mask = random_masking(noise, num_kept(length, mask_ratio))
    latent = self.encode(x, ids_keep, train=train, rngs=rngs)
    pred = self.decoder(latent, ids_restore)
    losses = reconstruction_loss(pred, patchify(x, cfg), mask, cfg)
    return {**losses, "pred": pred, "mask": mask, "ids_restore": ids_restore, "ids_keep": ids_keep,
            "latent": latent}
