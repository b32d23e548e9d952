"""3D spectral-spatial tokenisation: bands are a depth axis cut into groups of `t_patch_size`.

Token order is the reference's `l = t*(h*w) + i*w + j` (spectral group t, patch row i, column j) and a token's pixel
vector is ordered (band-in-group u, row py, column px): index `(u*p + py)*p + px`. The reference Conv3d with
kernel = stride = (t, p, p) on one input channel equals a Dense layer on these vectors, which is what we use
(`kernel[(u, py, px), d] = conv_weight[d, 0, u, py, px]`); it avoids a 3D convolution with no overlap.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spectralgpt_jax.models import matmul
from spectralgpt_jax.models.config import ModelConfig
from spectralgpt_jax.models.layers import param


def patchify(x: jax.Array, cfg: ModelConfig) -> jax.Array:
  """[N, H, W, bands] (channels last) -> [N, L, t_patch*p*p] in token and pixel-vector order."""
  n, height, width, bands = x.shape
  if (height, width, bands) != (cfg.img_size, cfg.img_size, cfg.num_frames):
    raise ValueError(f"input of shape [H, W, bands]={[height, width, bands]} does not match the model "
                     f"(img_size={cfg.img_size}, num_frames={cfg.num_frames} bands)")
  p, u = cfg.patch_size, cfg.t_patch_size
  t, h, w = cfg.grid
  x = x.reshape(n, h, p, w, p, t, u)               # axes: n, i, py, j, px, t, u
  x = x.transpose(0, 5, 1, 3, 6, 2, 4)             # n, t, i, j, u, py, px
  return x.reshape(n, t * h * w, u * p * p)


def unpatchify(tokens: jax.Array, cfg: ModelConfig) -> jax.Array:
  """Inverse of `patchify`: [N, L, t_patch*p*p] -> [N, H, W, bands]."""
  n = tokens.shape[0]
  p, u = cfg.patch_size, cfg.t_patch_size
  t, h, w = cfg.grid
  x = tokens.reshape(n, t, h, w, u, p, p).transpose(0, 2, 5, 3, 6, 1, 4)   # n, i, py, j, px, t, u
  return x.reshape(n, h * p, w * p, t * u)


def _uniform(bound: float):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class PatchEmbed(nnx.Module):
  """Linear projection of each 3D patch; initialised as the reference (xavier on the [D, t*p*p] view, torch's
  default conv bias U(+-1/sqrt(fan_in)))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    fan_in = cfg.patch_dim
    self.kernel = param(nnx.initializers.xavier_uniform()(rngs.params(), (fan_in, cfg.embed_dim)), "patch", "embed")
    self.bias = param(_uniform(fan_in ** -0.5)(rngs.params(), (cfg.embed_dim,)), "norm")

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = jnp.dtype(self.cfg.dtype)
    tokens = patchify(x, self.cfg).astype(dtype)
    kernel = self.kernel[...].astype(dtype)
    dims = (((tokens.ndim - 1,), (0,)), ((), ()))
    return matmul.linear_dot_general(tokens, kernel, dims) + self.bias[...].astype(dtype)


def _normal(key, shape, std=0.02):
  # The reference uses trunc_normal_(std=.02) whose bounds are +-2 (=+-100 sigma): effectively a plain normal.
  return std * jax.random.normal(key, shape, jnp.float32)


class SeparablePosEmbed(nnx.Module):
  """Learned spatial [1, h*w, D] + spectral [1, T', D] embeddings: pos[t*h*w + s] = spatial[s] + spectral[t]."""

  def __init__(self, num_spatial: int, num_spectral: int, dim: int, *, rngs: nnx.Rngs):
    self.spatial = param(_normal(rngs.params(), (1, num_spatial, dim)), None, "vocab_pos", "embed")
    self.spectral = param(_normal(rngs.params(), (1, num_spectral, dim)), None, None, "embed")

  def __call__(self) -> jax.Array:
    spatial, spectral = self.spatial[...], self.spectral[...]
    num_spectral, num_spatial = spectral.shape[1], spatial.shape[1]
    return (jnp.tile(spatial, (1, num_spectral, 1)) + jnp.repeat(spectral, num_spatial, axis=1))


class JointPosEmbed(nnx.Module):
  """The reference fine-tuning ViT's single `pos_embed` [1, L, D], initialised to zeros (never set otherwise)."""

  def __init__(self, num_tokens: int, dim: int):
    self.embedding = param(jnp.zeros((1, num_tokens, dim), jnp.float32), None, "vocab_pos", "embed")

  def __call__(self) -> jax.Array:
    return self.embedding[...]


def resize_spatial_pos_embed(embed: np.ndarray, new_side: int) -> np.ndarray:
  """Bicubic resize of a [1, s*s, D] spatial position embedding to [1, new_side**2, D].

  Our optional improvement over the reference's re-initialisation when changing image size (96 -> 128 px); mirrors
  the MAE/DeiT `interpolate_pos_embed` (bicubic on the s x s grid, align_corners=False).
  """
  embed = np.asarray(embed, np.float32)
  side = int(round(embed.shape[1] ** 0.5))
  if side * side != embed.shape[1]:
    raise ValueError(f"spatial position embedding of {embed.shape[1]} positions is not a square grid")
  grid = jnp.asarray(embed[0].reshape(side, side, -1))
  resized = jax.image.resize(grid, (new_side, new_side, grid.shape[-1]), method="bicubic", antialias=False)
  return np.asarray(resized).reshape(1, new_side * new_side, -1)
