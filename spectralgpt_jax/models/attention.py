"""Softmax attention, one function with one switch (`ModelConfig.attention_impl`) for every platform.

All implementations compute the same maths: softmax(q k^T / sqrt(head_dim)) v over [N, L, heads, head_dim]
inputs, no masking, no dropout, logits and softmax in float32 whatever the matmul dtype.

  xla           plain jnp: XLA fuses it; autodiff gives the backward pass.
  explicit_vjp  the same forward, with a hand-written backward pass (a `jax.custom_vjp`) whose contractions run
                head-major ([N, heads, L, d], batch dimensions leading). On XLA:CPU the contractions that autodiff
                derives for dK and dV (contracting over the query axis in the token-major layout) run several times
                slower than these; see docs/benchmarks.md.
  cudnn         `jax.nn.dot_product_attention(implementation="cudnn")`: cuDNN's fused flash attention on NVIDIA GPUs
                (bfloat16/float16 only).
  pallas        the Pallas TPU flash-attention kernel, run per device under `shard_map` (batch over the data axes,
                heads over "model"); sequences that are not a multiple of 128 (the MAE encoder's 102 kept tokens)
                fall back to `xla`, where attention is a small share of the step anyway.
  chunked       queries in chunks of `chunk` under `lax.map`: lower peak memory for long sequences.
  auto          (default) explicit_vjp on CPU, cudnn on GPU for 16-bit inputs (xla for float32), pallas on TPU:
                resolved by `config.resolve_attention` for the platform of the default backend when traced.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from spectralgpt_jax.models.config import resolve_attention

PALLAS_BLOCK = 128


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, impl: str = "auto", chunk: int = 256) -> jax.Array:
  """Softmax attention of [N, L, heads, head_dim] q, k, v -> [N, L, heads, head_dim] (see the module docstring)."""
  if impl == "auto":
    impl = resolve_attention(impl, jax.default_backend(), dtype=q.dtype)
  scale = q.shape[-1] ** -0.5
  if impl == "cudnn":
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
  if impl == "explicit_vjp":
    return _explicit_vjp_attention(q, k, v)
  if impl == "pallas" and q.shape[1] % PALLAS_BLOCK == 0:
    return _pallas_attention(q, k, v)
  length = q.shape[1]
  if impl == "chunked" and length > chunk and length % chunk == 0:
    qs = q.reshape(q.shape[0], length // chunk, chunk, *q.shape[2:]).swapaxes(0, 1)
    out = jax.lax.map(lambda qc: _softmax_attention(qc, k, v), qs)
    return out.swapaxes(0, 1).reshape(q.shape)
  return _softmax_attention(q, k, v)


def _softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("nqhd,nkhd->nhqk", q * jnp.asarray(scale, q.dtype), k, preferred_element_type=jnp.float32)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("nhqk,nkhd->nqhd", weights, v)


# ------------------------------------------------------------------------------------------------ explicit VJP
def _head_major(x: jax.Array) -> jax.Array:
  return x.transpose(0, 2, 1, 3)          # [N, L, h, d] <-> [N, h, L, d]


def _forward(q, k, v):
  """Head-major forward: returns the output [N, L, h, d] and the residuals of the backward pass."""
  scale = q.shape[-1] ** -0.5
  qh, kh, vh = _head_major(q), _head_major(k), _head_major(v)
  logits = jnp.einsum("nhqd,nhkd->nhqk", qh * jnp.asarray(scale, q.dtype), kh, preferred_element_type=jnp.float32)
  weights = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("nhqk,nhkd->nhqd", weights.astype(v.dtype), vh)
  return _head_major(out), (qh, kh, vh, weights.astype(v.dtype))


@jax.custom_vjp
def _explicit_vjp_attention(q, k, v):
  return _forward(q, k, v)[0]


def _backward(residuals, d_out):
  """dV = P^T dO; dP = dO V^T; dS = P * (dP - rowsum(dP * P)); dQ = dS K * scale; dK = dS^T Q * scale.

  dV and dK contract over the query axis. Written as P^T dO ("nhqk,nhqd->nhkd", which autodiff produces) XLA:CPU
  runs them at about a third of its matmul speed; computed transposed, (dO^T P)[d, k] ("nhqd,nhqk->nhdk"), they
  run at full speed, and the transposed result costs nothing extra: it is transposed to the token-major
  [N, L, h, d] layout anyway.
  """
  qh, kh, vh, weights = residuals
  scale = jnp.asarray(qh.shape[-1] ** -0.5, qh.dtype)
  do = _head_major(d_out)
  dv = jnp.einsum("nhqd,nhqk->nhdk", do, weights)
  dp = jnp.einsum("nhqd,nhkd->nhqk", do, vh, preferred_element_type=jnp.float32)
  p = weights.astype(jnp.float32)
  ds = (p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True))).astype(qh.dtype)
  dq = jnp.einsum("nhqk,nhkd->nhqd", ds, kh) * scale
  dk = jnp.einsum("nhqd,nhqk->nhdk", qh, ds) * scale
  from_transposed = lambda x: x.transpose(0, 3, 1, 2)      # [N, h, d, L] -> [N, L, h, d]
  return _head_major(dq), from_transposed(dk), from_transposed(dv)


_explicit_vjp_attention.defvjp(lambda q, k, v: _forward(q, k, v), _backward)


# ------------------------------------------------------------------------------------------------ Pallas (TPU)
def _pallas_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """The Pallas TPU flash-attention kernel per device. A custom call has no sharding rule of its own: under a mesh
  it runs inside `shard_map` with the batch split over the data axes and the heads over "model" (where they
  divide), so each device attends over its own examples and heads without gathering anything."""
  from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash

  def kernel(qb, kb, vb):
    block = min(PALLAS_BLOCK, qb.shape[1])
    sizes = tpu_flash.BlockSizes(block_q=block, block_k_major=block, block_k=block, block_b=1,
                                 block_q_major_dkv=block, block_k_major_dkv=block, block_k_dkv=block,
                                 block_q_dkv=block, block_k_major_dq=block, block_k_dq=block, block_q_dq=block)
    out = tpu_flash.flash_attention(_head_major(qb), _head_major(kb), _head_major(vb), sm_scale=qb.shape[-1] ** -0.5,
                                    block_sizes=sizes)
    return _head_major(out)

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return kernel(q, k, v)
  spec = _per_device_spec(q.shape, mesh)
  return jax.shard_map(kernel, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec, check_vma=False)(q, k, v)


def _per_device_spec(shape: tuple[int, ...], mesh) -> P:
  """[N, L, h, d]: N over the data axes that divide it, h over "model" when it divides."""
  from spectralgpt_jax import sharding
  batch_axes = tuple(a for a in sharding.BATCH_AXES if mesh.shape.get(a, 1) > 1)
  if shape[0] % math.prod(mesh.shape[a] for a in batch_axes):
    batch_axes = ()
  heads = "model" if mesh.shape.get("model", 1) > 1 and shape[2] % mesh.shape["model"] == 0 else None
  return P(batch_axes or None, None, heads, None)

