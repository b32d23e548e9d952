"""Transformer building blocks, numerically matching the reference `util/video_vit.py` + timm 0.4.12.

Every parameter carries logical axis names as `out_sharding` metadata with `eager_sharding=False`: the model can be
built anywhere (no mesh needed), and `spectralgpt_jax.sharding` maps the names to mesh axes with one rules table.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from spectralgpt_jax import sharding
from spectralgpt_jax.models import matmul
from spectralgpt_jax.models.attention import attention

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
                    bias_init=nnx.initializers.zeros_init(), dot_general=matmul.linear_dot_general, rngs=rngs,
                    kernel_metadata=axes(*kernel_axes), bias_metadata=axes(bias_axis))


def layer_norm(dim: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Two-pass variance (as torch) rather than E[x^2]-E[x]^2: needed for parity and safer in low precision.
  # Computed in float32 whatever the matmul dtype.
  return nnx.LayerNorm(dim, epsilon=LN_EPS, dtype=jnp.float32, param_dtype=jnp.float32, use_fast_variance=False,
                       rngs=rngs, scale_metadata=axes("norm"), bias_metadata=axes("norm"))


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


def drop_path(x: jax.Array, rate, key: jax.Array | None) -> jax.Array:
  """Per-sample stochastic depth as timm: x / keep * floor(keep + U[0,1)) with one draw per sample. `rate` may be
  traced (the scanned blocks pass their rates as an array); rate 0 then gives floor(1 + U) = 1, x unchanged."""
  if key is None or (isinstance(rate, (int, float)) and rate == 0.0):
    return x
  keep = 1.0 - rate
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  mask = jnp.floor(keep + jax.random.uniform(key, shape, dtype=jnp.float32))
  return x / jnp.asarray(keep, x.dtype) * mask.astype(x.dtype)


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
    return run_blocks([self], x, train=train, rngs=rngs)

  def apply(self, x: jax.Array, keys: tuple[jax.Array, jax.Array] | None, rate) -> jax.Array:
    """The block with explicit drop-path keys (None: no drop path) and rate (may be traced)."""
    key1, key2 = keys if keys is not None else (None, None)
    x = x + drop_path(self.attn(self.norm1(x).astype(x.dtype)), rate, key1)
    return x + drop_path(self.mlp(self.norm2(x).astype(x.dtype)), rate, key2)


def blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path_rate: float, *, dtype, impl: str,
           chunk: int, rngs: nnx.Rngs) -> nnx.List:
  """`depth` blocks with stochastic depth increasing linearly from 0 to `drop_path_rate` (reference `dpr`)."""
  rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
  return nnx.List([Block(dim, num_heads, mlp_ratio, r, dtype=dtype, impl=impl, chunk=chunk, rngs=rngs)
                   for r in rates])


CHECKPOINT_POLICIES = {   # ModelConfig.remat -> what jax.checkpoint may keep from the forward pass of a block
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@jax.custom_vjp
def grad_fence(h: jax.Array) -> jax.Array:
  """Identity whose gradient is computed once and stored.

  Why: in the backward pass of a block chain the residual stream's gradient is a long sum of elementwise terms (each
  block's LayerNorm backward). XLA:CPU fuses that whole sum into every consumer, e.g. the transposing copy in front
  of each weight-gradient dot, so each recomputes it from the last block down: the cost grows with depth squared
  (ViT-B encoder, 12 blocks at 102 tokens, fwd + bwd: those copy fusions took 0.69 of 1.67 s, against 4.5 ms for
  one block; fenced, the chain takes 0.97 s, PyTorch 0.82 s).
  A conditional on a runtime value is a boundary fusion cannot cross (optimization barriers are expanded away on
  CPU before fusion), so the gradient is materialised here once per block.
  """
  return h


def _fence_fwd(h):
  return h, None


def _fence_bwd(_, g):
  # Both branches are the identity; the predicate only has to be unknown at compile time (false only for NaN).
  flat = g.reshape(-1)
  return (jax.lax.cond(flat[0] == flat[0], lambda a: a, lambda a: a + 0, g),)


grad_fence.defvjp(_fence_fwd, _fence_bwd)


def use_grad_fence(setting: str) -> bool:
  """ModelConfig.grad_fence on the default backend: "auto" fences on CPU only (measured there, docs/benchmarks.md)."""
  return setting == "on" or (setting == "auto" and jax.default_backend() == "cpu")


def run_blocks(blocks: Sequence[Block], x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None,
               remat: str = "none", scan: bool = False, fence: str = "off") -> jax.Array:
  """Apply `blocks` in order; `remat` (ModelConfig.remat) recomputes each block in the backward pass, `scan` runs
  them under `lax.scan` over their stacked weights (one traced and compiled block instead of `depth`).

  `fence` (ModelConfig.grad_fence) puts a `grad_fence` between consecutive blocks of the plain loop (scan needs
  none: its loop boundary already stops fusion).

  Both are the same computation as the plain loop: the drop-path keys are drawn in the same order (two per block
  that has a rate, from the 'dropout' stream) and the parameters keep their per-block layout, so checkpoints do
  not depend on these switches. Scanning stacks the weights at each call (one extra copy of the blocks' weights,
  sharded as they are).
  """
  rates = [block.drop_path_rate for block in blocks]
  stochastic = train and any(rate > 0 for rate in rates)
  if stochastic and rngs is None:
    raise ValueError("train=True with drop_path_rate > 0 needs rngs (a 'dropout' stream)")
  keys = [(rngs.dropout(), rngs.dropout()) if stochastic and rate > 0 else None for rate in rates]
  graphdef, _ = nnx.split(blocks[0])
  apply = lambda state, h, block_keys, rate: nnx.merge(graphdef, state).apply(h, block_keys, rate)
  if remat != "none":
    apply = jax.checkpoint(apply, policy=CHECKPOINT_POLICIES[remat])
  states = [nnx.split(block)[1] for block in blocks]
  if not scan or len(blocks) == 1:
    fenced = use_grad_fence(fence)
    for i, (state, block_keys, rate) in enumerate(zip(states, keys, rates)):
      x = apply(state, grad_fence(x) if fenced and i else x, block_keys, rate)
    return x

  stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
  if stochastic:   # blocks without a rate get an unused key: rate 0 leaves x unchanged (see drop_path)
    filler = (jax.random.key(0), jax.random.key(0))
    pairs = [k if k is not None else filler for k in keys]
    scanned_keys = (jnp.stack([a for a, _ in pairs]), jnp.stack([b for _, b in pairs]))
  else:
    scanned_keys = None
  # The carry's layout is pinned to batch-sharded: sharding propagation does not see through the while loop,
  # and left to itself the TPU compiler kept the activations inside it unsharded (205 GiB per chip instead of
  # 15 for ViT-B at batch 4096 on v5e-64, docs/scaling.md).
  body = lambda h, xs: (sharding.constrain(apply(xs[0], sharding.constrain(h, "batch"), xs[1], xs[2]), "batch"),
                        None)
  x, _ = jax.lax.scan(body, sharding.constrain(x, "batch"), (stacked, scanned_keys, jnp.asarray(rates, jnp.float32)))
  return x
