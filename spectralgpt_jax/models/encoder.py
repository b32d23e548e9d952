"""The ViT encoder shared by the masked autoencoder, the classifier and (later) segmentation/change detection."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from spectralgpt_jax.models.config import ModelConfig
from spectralgpt_jax.models.layers import blocks, layer_norm, run_blocks
from spectralgpt_jax.models.patch_embed import JointPosEmbed, PatchEmbed, SeparablePosEmbed


class Encoder(nnx.Module):
  """Patch embedding + position embedding + `depth` blocks + a final LayerNorm (`norm`).

  `norm` is applied by the caller: the MAE normalises every token, the reference classifier normalises the pooled
  vector, and the dense-prediction heads of the roadmap skip it.
  """

  def __init__(self, cfg: ModelConfig, *, joint_pos_embed: bool = False, rngs: nnx.Rngs):
    self.cfg = cfg
    t, h, w = cfg.grid
    self.patch_embed = PatchEmbed(cfg, rngs=rngs)
    self.pos_embed = (JointPosEmbed(cfg.num_tokens, cfg.embed_dim) if joint_pos_embed
                      else SeparablePosEmbed(h * w, t, cfg.embed_dim, rngs=rngs))
    self.blocks = blocks(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.drop_path_rate,
                         dtype=jnp.dtype(cfg.dtype), impl=cfg.attention_impl, chunk=cfg.attention_chunk, rngs=rngs)
    self.norm = layer_norm(cfg.embed_dim, rngs=rngs)

  def embed(self, x: jax.Array) -> jax.Array:
    """[N, H, W, bands] -> position-embedded tokens [N, L, D] (float32 residual stream)."""
    return self.patch_embed(x).astype(jnp.float32) + self.pos_embed()

  def run_blocks(self, tokens: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    return run_blocks(self.blocks, tokens, train=train, rngs=rngs, remat=self.cfg.remat, scan=self.cfg.scan_blocks,
                      fence=self.cfg.grad_fence)

  def features(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Last-block token features [N, L, D] in token order l = t*(h*w) + i*w + j, before the final norm."""
    return self.run_blocks(self.embed(x), train=train, rngs=rngs)
