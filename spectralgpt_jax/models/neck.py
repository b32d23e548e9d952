"""Dense-prediction head of the segmentation and change-detection models (SegMunich / OSCD).

merged [N, h, w, D] --neck--> m0..m3 at 8x, 4x, 2x, 1x the patch grid --FPN--> [N, 8h, 8w, F] --3x3 conv--> logits.

Layers are channels-last. A 1x1 Conv2d is a Dense over the channel axis (kernel [in, out]); the reference's
ConvTranspose2d with kernel = stride and no padding is a Dense followed by depth-to-space (kernel [k, k, in, out]),
which avoids Flax's transposed-convolution kernel conventions. Convolutions get PyTorch's default initialisation
(U(+-1/sqrt(fan_in)) weight and bias, what an nn.Conv2d untouched by a custom init starts from); GroupNorm starts
at scale 1, bias 0; the spectral merge is a Linear and starts as the encoder's Linear layers (xavier, zero bias).

Feature maps are pinned to "batch-sharded, channels whole" (`sharding.constrain`) when traced under a mesh:
left to XLA's propagation, the small maps, slices and concatenations got layouts with wrong gradients on a
(2, 2, 2) mesh. Logical axes: "embed" is the encoder width entering the neck, "channels_in" / "channels" the input /
output channels of every other conv (sharded like the transformer's "embed" / "mlp" pair), "norm" the GroupNorm vectors.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spectralgpt_jax.models import matmul
from spectralgpt_jax.models.config import ModelConfig
from spectralgpt_jax.models.layers import axes, param
from spectralgpt_jax.sharding import constrain

GN_EPS = 1e-5        # torch GroupNorm default (Flax's is 1e-6)
NECK_GROUPS = 32     # GroupNorm groups of the four neck branches
FPN_GROUPS = 16      # ... and of the PPM output and FPN fuse layers
PPM_BINS = (1, 2, 3, 6)
NECK_SCALES = (8, 4, 2, 1)   # upsampling of branch i; branch 3 has no transposed conv


def _torch_uniform(fan_in: int):
  bound = fan_in ** -0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def dropout(x: jax.Array, rate: float, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
  """Element-wise dropout (torch nn.Dropout on 4D maps is not channel-wise)."""
  if not train or rate == 0.0:
    return x
  if rngs is None:
    raise ValueError("train=True with dropout > 0 needs rngs (a 'dropout' stream)")
  keep = 1.0 - rate
  mask = jax.random.bernoulli(rngs.dropout(), keep, x.shape)
  return jnp.where(mask, x / keep, 0).astype(x.dtype)


def conv1x1(din: int, dout: int, in_axis: str, *, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  init = _torch_uniform(din)
  return nnx.Linear(din, dout, dtype=dtype, param_dtype=jnp.float32, kernel_init=init, bias_init=init, rngs=rngs,
                    dot_general=matmul.linear_dot_general, kernel_metadata=axes(in_axis, "channels"),
                    bias_metadata=axes("channels"))


def group_norm(dim: int, groups: int, *, rngs: nnx.Rngs) -> nnx.GroupNorm:
  """GroupNorm(groups) as the reference; widths below `groups` (tiny test models only) get one group per channel.
  Float32 statistics with the two-pass variance (as torch), whatever the matmul dtype."""
  return nnx.GroupNorm(dim, num_groups=min(groups, dim), epsilon=GN_EPS, dtype=jnp.float32, param_dtype=jnp.float32,
                       use_fast_variance=False, rngs=rngs, scale_metadata=axes("norm"), bias_metadata=axes("norm"))


def _lerp_weights(length: int, out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source indices and weight of the upper neighbour, computed in float32 as torch does (scale = (in-1)/(out-1),
  source = scale * i): the last output pixel can then sit a hair below the last input pixel, as in the reference."""
  scale = np.float32((length - 1) / (out - 1)) if out > 1 else np.float32(0)
  src = scale * np.arange(out, dtype=np.float32)
  lo = np.minimum(np.floor(src).astype(np.int32), length - 1)
  hi = np.minimum(lo + 1, length - 1)
  return lo, hi, np.clip(src - lo.astype(np.float32), 0, 1).astype(np.float32)


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Bilinear resize of [N, H, W, C] with align_corners=True (torch F.interpolate): output pixel i samples source
  coordinate i * (in - 1) / (out - 1). Separable gathers and lerps (columns, then rows, the order of torch's CPU
  kernel), so no matmul precision is involved."""
  for axis, out in ((2, size[1]), (1, size[0])):
    length = x.shape[axis]
    if length == out:
      continue
    lo, hi, frac = _lerp_weights(length, out)
    shape = [1] * x.ndim
    shape[axis] = out
    upper = jnp.asarray(frac.reshape(shape), x.dtype)
    x = (1 - upper) * jnp.take(x, lo, axis=axis) + upper * jnp.take(x, hi, axis=axis)
  return x


def adaptive_max_pool(x: jax.Array, bins: int) -> jax.Array:
  """torch AdaptiveMaxPool2d on [N, H, W, C]: bin i covers [floor(i*S/bins), ceil((i+1)*S/bins)), so bins overlap
  when bins does not divide S. Max is separable, so rows then columns."""
  for axis in (1, 2):
    size = x.shape[axis]
    parts = [jax.lax.slice_in_dim(x, (i * size) // bins, -(-(i + 1) * size // bins), axis=axis).max(axis, keepdims=True)
             for i in range(bins)]
    x = jnp.concatenate(parts, axis=axis)
  return x


class ConvNormAct(nnx.Module):
  """1x1 conv -> GroupNorm -> exact (erf) GELU -> dropout: the reference's conv/GN/GELU/Dropout sequences."""

  def __init__(self, din: int, dout: int, groups: int, rate: float, *, in_axis: str = "channels_in", dtype,
               rngs: nnx.Rngs):
    self.rate, self.dtype = rate, dtype
    self.conv = conv1x1(din, dout, in_axis, dtype=dtype, rngs=rngs)
    self.norm = group_norm(dout, groups, rngs=rngs)

  def activate(self, x: jax.Array) -> jax.Array:
    return jax.nn.gelu(self.norm(self.conv(x)), approximate=False).astype(self.dtype)

  def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    return constrain(dropout(self.activate(x), self.rate, train, rngs), "batch")


class DepthToSpaceUp(nnx.Module):
  """ConvTranspose2d(kernel = stride = k, padding 0): out[n, y*k+i, x*k+j, o] = b[o] + sum_c in[n,y,x,c] K[i,j,c,o]."""

  def __init__(self, din: int, dout: int, scale: int, *, dtype, rngs: nnx.Rngs):
    self.scale, self.dtype = scale, dtype
    init = _torch_uniform(dout * scale * scale)   # torch takes a ConvTranspose's fan_in from weight.size(1) * k * k
    self.kernel = param(init(rngs.params(), (scale, scale, din, dout)), None, None, "channels_in", "channels")
    self.bias = param(init(rngs.params(), (dout,)), "channels")

  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, _ = x.shape
    k = self.scale
    y = jnp.einsum("nyxc,ijco->nyixjo", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    return y.reshape(n, h * k, w * k, -1) + self.bias[...].astype(self.dtype)


class NeckBranch(ConvNormAct):
  """conv{i}: 1x1 conv D -> C_i, GroupNorm(32), GELU, transposed conv (k = s = scale) to the FPN width, dropout."""

  def __init__(self, dim: int, width: int, out: int, scale: int, rate: float, *, dtype, rngs: nnx.Rngs):
    super().__init__(dim, width, NECK_GROUPS, rate, in_axis="embed", dtype=dtype, rngs=rngs)
    self.up = DepthToSpaceUp(width, out, scale, dtype=dtype, rngs=rngs) if scale > 1 else None

  def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    y = self.activate(x)
    if self.up is not None:
      y = self.up(y)
    return constrain(dropout(y, self.rate, train, rngs), "batch")


def neck(cfg: ModelConfig, *, rngs: nnx.Rngs) -> nnx.List:
  """The four branches; on the merged [N, h, w, D] map they give m0..m3 (widths `cfg.pyramid_channels`)."""
  return nnx.List([NeckBranch(cfg.embed_dim, width, out, scale, cfg.neck_dropout, dtype=jnp.dtype(cfg.dtype),
                              rngs=rngs)
                   for width, out, scale in zip(cfg.neck_channels, cfg.pyramid_channels, NECK_SCALES)])


class PyramidPooling(nnx.Module):
  """PPM on m3: max-pool to 1/2/3/6 bins, 1x1 conv C -> F, bilinear back; concat [pools..., m3]; ConvNormAct."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    dtype, c, f = jnp.dtype(cfg.dtype), cfg.pyramid_channels[3], cfg.fpn_channels
    self.pools = nnx.List([conv1x1(c, f, "channels_in", dtype=dtype, rngs=rngs) for _ in PPM_BINS])
    self.out = ConvNormAct(len(PPM_BINS) * f + c, f, FPN_GROUPS, cfg.neck_dropout, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    size = x.shape[1:3]
    x = constrain(x, "batch")
    pooled = [constrain(resize_bilinear(conv(adaptive_max_pool(x, bins)), size), "batch")
              for conv, bins in zip(self.pools, PPM_BINS)]
    return self.out(jnp.concatenate(pooled + [x.astype(pooled[0].dtype)], axis=-1), train=train, rngs=rngs)


class FPNHead(nnx.Module):
  """Top-down path (reference FPNHEAD): x1 = PPM(m3); x2 = smooth0(top(up(x1)) + lateral0(m2));
  x3 = smooth1(up(x2) + lateral1(m1)); x4 = smooth2(up(x3) + lateral2(m0)); fuse(cat[up(x1), up(x2), up(x3), x4]).
  Every resize is bilinear with align_corners=True."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    dtype, f, rate = jnp.dtype(cfg.dtype), cfg.fpn_channels, cfg.fuse_dropout
    self.ppm = PyramidPooling(cfg, rngs=rngs)
    self.top = conv1x1(f, f, "channels_in", dtype=dtype, rngs=rngs)
    widths = cfg.pyramid_channels[2::-1]   # m2, m1, m0
    self.lateral = nnx.List([ConvNormAct(c, f, FPN_GROUPS, rate, dtype=dtype, rngs=rngs) for c in widths])
    self.smooth = nnx.List([ConvNormAct(f, f, FPN_GROUPS, rate, dtype=dtype, rngs=rngs) for _ in widths])
    self.fuse = ConvNormAct(4 * f, f, FPN_GROUPS, rate, dtype=dtype, rngs=rngs)

  def __call__(self, m: Sequence[jax.Array], *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    levels = [self.ppm(m[3], train=train, rngs=rngs)]
    for i, lateral in enumerate((m[2], m[1], m[0])):
      up = resize_bilinear(levels[-1], lateral.shape[1:3])
      if i == 0:
        up = self.top(up)
      levels.append(self.smooth[i](constrain(up, "batch") + self.lateral[i](lateral, train=train, rngs=rngs),
                                   train=train, rngs=rngs))
    full = levels[-1].shape[1:3]
    resized = [constrain(resize_bilinear(x, full), "batch") for x in levels]
    return self.fuse(jnp.concatenate(resized, axis=-1), train=train, rngs=rngs)


class SpectralMerge(nnx.Module):
  """Learned T' -> 1 weighted sum over the spectral groups (reference `fc = Linear(4, 1)`, xavier init as the
  reference's Linear layers), shared over channels and positions: tokens [N, T'*h*w, D] -> map [N, h, w, D]."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.grid, self.dtype = cfg.grid, jnp.dtype(cfg.dtype)
    self.kernel = param(nnx.initializers.xavier_uniform()(rngs.params(), (cfg.grid[0], 1)), "spectral", None)
    self.bias = param(jnp.zeros((1,), jnp.float32), None)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    t, h, w = self.grid
    n, _, d = tokens.shape
    groups = tokens.reshape(n, t, h, w, d).astype(self.dtype)
    merged = jnp.einsum("nthwd,t->nhwd", groups, self.kernel[...][:, 0].astype(self.dtype))
    return constrain(merged + self.bias[...].astype(self.dtype), "batch")


def classifier_conv(cfg: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Conv:
  """cls_seg: 3x3 conv (padding 1) F -> K at full resolution."""
  init = _torch_uniform(cfg.fpn_channels * 9)
  return nnx.Conv(cfg.fpn_channels, cfg.num_classes, (3, 3), padding=((1, 1), (1, 1)), dtype=jnp.dtype(cfg.dtype),
                  param_dtype=jnp.float32, kernel_init=init, bias_init=init, rngs=rngs,
                  kernel_metadata=axes(None, None, "channels_in", "classes"), bias_metadata=axes("classes"))
