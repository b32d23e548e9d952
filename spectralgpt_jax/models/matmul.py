"""bfloat16 matmuls that accumulate in float32 and that XLA:CPU runs on its bf16 kernels.

A dot of bfloat16 operands with a bfloat16 result is what `compute_dtype=bfloat16` writes everywhere. GPUs and TPUs
run it natively (accumulating in float32). XLA:CPU instead converts the operands to float32 and runs a float32
dot, so bfloat16 bought nothing on a CPU with native bf16 dot products (AVX512-BF16, AMX). Asked for a float32
result from bfloat16 operands, XLA:CPU runs YNNPACK's bf16 kernels: measured on a 2-core AVX512-BF16 machine,
[4096, 512] x [512, 512] at 250-340 GFLOP/s, against 125 with a bf16 result and 164 in float32 (docs/benchmarks.md).

So the linear layers (and the patch embedding) call `linear_dot_general`, a drop-in `dot_general` for
`nnx.Linear`: on XLA:CPU, on a CPU with bf16 dot products (`bf16_kernels_pay`), with bfloat16 operands, it asks for
a float32 result and rounds it to the operands' dtype. That is the same maths as the plain 16-bit dot (float32
accumulation, a 16-bit result). Its backward pass is written out (`jax.custom_vjp`) so that the input and weight
gradients take the fast form too; autodiff of a float32-result dot would mix a float32 cotangent with 16-bit
operands. Float32 operands, other platforms and other dimension numbers go to `jax.lax.dot_general` unchanged, and
so do bf16 operands on a CPU without bf16 dot products (AVX2-only x86), where YNNPACK's bf16 kernels measured
slower than XLA's own conversion to float32. Attention's batched dots are not routed here: XLA:CPU computes the
head transposes that feed them in float32 (it runs 16-bit elementwise ops and copies in float32), so they stay
float32 dots either way (measured; docs/benchmarks.md).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from spectralgpt_jax import runtime


def bf16_kernels_pay() -> bool:
  """Whether bf16 linear layers take the bf16-kernel form here: on XLA:CPU, on a CPU with bf16 dot products.

  On an AVX2-only CPU the same form ran at 96-101 GFLOP/s against 124-160 for float32 and 123-152 for the plain
  bf16 dot (which XLA:CPU converts to float32), so there the plain dot is kept (docs/benchmarks.md)."""
  return jax.default_backend() == "cpu" and runtime.cpu_has_bf16_dots()


def _bfloat16_on_cpu(*arrays) -> bool:
  # float16 is left alone: whether XLA:CPU has fast float16 kernels was not measured
  return all(a.dtype == jnp.bfloat16 for a in arrays) and bf16_kernels_pay()


def _dot_f32(a, b, dimension_numbers, out_dtype):
  return lax.dot_general(a, b, dimension_numbers, preferred_element_type=jnp.float32).astype(out_dtype)


def _linear_dims(x_ndim: int):
  return (((x_ndim - 1,), (0,)), ((), ()))


@jax.custom_vjp
def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x[..., k] @ w[k, n], bfloat16 operands, float32 accumulation, the result in x's dtype."""
  return _dot_f32(x, w, _linear_dims(x.ndim), x.dtype)


def _matmul_fwd(x, w):
  return _matmul(x, w), (x, w)


def _matmul_bwd(residuals, g):
  x, w = residuals
  g = g.astype(x.dtype)
  dx = _dot_f32(g, w, (((g.ndim - 1,), (1,)), ((), ())), x.dtype)          # g[..., n] . w[k, n] -> [..., k]
  lead = tuple(range(x.ndim - 1))
  dw = _dot_f32(x, g, ((lead, lead), ((), ())), w.dtype)                   # sum over tokens of x^T g -> [k, n]
  return dx, dw


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def linear_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None):
  """`nnx.Linear`'s `dot_general`: `_matmul` for a bfloat16 [..., k] x [k, n] on CPU, `lax.dot_general` otherwise."""
  fast = (_bfloat16_on_cpu(lhs, rhs) and rhs.ndim == 2 and dimension_numbers == _linear_dims(lhs.ndim)
          and precision is None and preferred_element_type is None and out_sharding is None)
  if fast:
    return _matmul(lhs, rhs)
  return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                         preferred_element_type=preferred_element_type, out_sharding=out_sharding)
