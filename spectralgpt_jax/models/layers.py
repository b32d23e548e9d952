"""Transformer building blocks, numerically matching the reference `util/video_vit.py` + timm 0.4.12.

Every parameter carries logical axis names as `out_sharding` metadata with `eager_sharding=False`: the model can be
built anywhere (no mesh needed), and `spectralgpt_jax.sharding` maps the names to mesh axes with one rules table.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

LN_EPS = 1e-6  # every reference LayerNorm (encoder, decoder, classifier) uses 1e-6


def axes(*names: str | None) -> dict:
  """Variable metadata: logical axis names, applied by the training system rather than at creation."""
  return {"out_sharding": tuple(names), "eager_sharding": False}


def param(value: jax.Array, *names: str | None) -> nnx.Param:
  return nnx.Param(value, **axes(*names))


def dense(din: int, dout: int, kernel_axes: Sequence[str | None], bias_axis: str | None, *, dtype, rngs: nnx.Rngs,
          kernel_init=nnx.initializers.xavier_uniform()) -> nnx.Linear:
  """Linear layer initialised as the reference `_init_weights`: xavier-uniform weight, zero bias."""
  return nnx.Linear(din, dout, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init,
                    bias_init=nnx.initializers.zeros_init(), rngs=rngs,
                    kernel_metadata=axes(*kernel_axes), bias_metadata=axes(bias_axis))


def layer_norm(dim: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Two-pass variance (as torch) rather than E[x^2]-E[x]^2: needed for parity and safer in low precision.
  # Computed in float32 whatever the matmul dtype.
  return nnx.LayerNorm(dim, epsilon=LN_EPS, dtype=jnp.float32, param_dtype=jnp.float32, use_fast_variance=False,
                       rngs=rngs, scale_metadata=axes("norm"), bias_metadata=axes("norm"))


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, impl: str = "xla", chunk: int = 256) -> jax.Array:
  """Softmax attention over [N, L, heads, head_dim] inputs, scale 1/sqrt(head_dim), no masking, no dropout.

  The one swappable attention function (roadmap: fast paths). `xla`: explicit softmax, fastest on CPU and exact;
  `cudnn`: `jax.nn.dot_product_attention(implementation='cudnn')` (GPU fused kernel, fp16/bf16 only);
  `chunked`: queries in chunks of `chunk`, halving peak memory for long sequences.
  """
  scale = q.shape[-1] ** -0.5
  if impl == "cudnn":
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")

  def block(qc):
    logits = jnp.einsum("nqhd,nkhd->nhqk", qc * jnp.asarray(scale, qc.dtype), k,
                        preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("nhqk,nkhd->nqhd", weights, v)

  length = q.shape[1]
  if impl == "chunked" and length > chunk and length % chunk == 0:
    qs = q.reshape(q.shape[0], length // chunk, chunk, *q.shape[2:]).swapaxes(0, 1)
    out = jax.lax.map(block, qs)
    return out.swapaxes(0, 1).reshape(q.shape)
  return block(q)


class Attention(nnx.Module):
  """Multi-head self-attention with separate q/k/v projections (the released checkpoints' layout)."""

  def __init__(self, dim: int, num_heads: int, *, dtype, impl: str, chunk: int, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.impl, self.chunk = impl, chunk
    self.q = dense(dim, dim, ("embed", "heads"), "heads", dtype=dtype, rngs=rngs)
    self.k = dense(dim, dim, ("embed", "heads"), "heads", dtype=dtype, rngs=rngs)
    self.v = dense(dim, dim, ("embed", "heads"), "heads", dtype=dtype, rngs=rngs)
    self.proj = dense(dim, dim, ("heads", "embed"), "norm", dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    n, length, dim = x.shape
    split = lambda t: t.reshape(n, length, self.num_heads, dim // self.num_heads)
    out = attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), impl=self.impl, chunk=self.chunk)
    return self.proj(out.reshape(n, length, dim))


class Mlp(nnx.Module):
  """timm Mlp: fc1 -> exact (erf) GELU -> fc2. Flax's default gelu is the tanh approximation: not used."""

  def __init__(self, dim: int, hidden: int, *, dtype, rngs: nnx.Rngs):
    self.fc1 = dense(dim, hidden, ("embed", "mlp"), "mlp", dtype=dtype, rngs=rngs)
    self.fc2 = dense(hidden, dim, ("mlp", "embed"), "norm", dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


def drop_path(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Per-sample stochastic depth as timm: x / keep * floor(keep + U[0,1)) with one draw per sample."""
  if rate == 0.0 or key is None:
    return x
  keep = 1.0 - rate
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  mask = jnp.floor(keep + jax.random.uniform(key, shape, dtype=jnp.float32))
  return x / keep * mask.astype(x.dtype)


class Block(nnx.Module):
  """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path_rate: float, *, dtype, impl: str,
               chunk: int, rngs: nnx.Rngs):
    self.drop_path_rate = drop_path_rate
    self.norm1 = layer_norm(dim, rngs=rngs)
    self.attn = Attention(dim, num_heads, dtype=dtype, impl=impl, chunk=chunk, rngs=rngs)
    self.norm2 = layer_norm(dim, rngs=rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    stochastic = train and self.drop_path_rate > 0.0
    if stochastic and rngs is None:
      raise ValueError("train=True with drop_path_rate > 0 needs rngs (a 'dropout' stream)")
    key1 = rngs.dropout() if stochastic else None
    key2 = rngs.dropout() if stochastic else None
    x = x + drop_path(self.attn(self.norm1(x).astype(x.dtype)), self.drop_path_rate, key1)
    return x + drop_path(self.mlp(self.norm2(x).astype(x.dtype)), self.drop_path_rate, key2)


def blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path_rate: float, *, dtype, impl: str,
           chunk: int, rngs: nnx.Rngs) -> nnx.List:
  """`depth` blocks with stochastic depth increasing linearly from 0 to `drop_path_rate` (reference `dpr`)."""
  rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
  return nnx.List([Block(dim, num_heads, mlp_ratio, r, dtype=dtype, impl=impl, chunk=chunk, rngs=rngs)
                   for r in rates])
