"""bfloat16 matmuls on CPU (models/matmul.py): the same maths as the plain bf16 dot, run on XLA:CPU's bf16 kernels."""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spectralgpt_jax import models, runtime
from spectralgpt_jax.models import matmul

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import profile_step  # noqa: E402  (its HLO reader)

DIMS = (((2,), (0,)), ((), ()))


def _x_w_g(dtype=jnp.bfloat16):
  kx, kw, kg = jax.random.split(jax.random.key(3), 3)
  return (jax.random.normal(kx, (2, 48, 64)).astype(dtype), jax.random.normal(kw, (64, 40)).astype(dtype),
          jax.random.normal(kg, (2, 48, 40)).astype(dtype))


def _value_and_grads(dot, x, w, g):
  out, vjp = jax.vjp(lambda a, b: dot(a, b, DIMS), x, w)
  return (out, *vjp(g))


def _f32(tree):
  return [np.asarray(t, np.float32) for t in tree]


@pytest.fixture
def bf16_kernels(monkeypatch):
  """The bf16-kernel form on whatever this CPU has (the gate is read when a function is traced: use fresh ones)."""
  monkeypatch.setenv(runtime.BF16_DOTS_ENV, "1")


@pytest.mark.parametrize("flags,env,expected", [
    ("fpu sse2 avx2 fma", "", False), ("avx2 avx512f avx512_bf16", "", True), ("avx2 amx_bf16 amx_tile", "", True),
    ("avx2 avx512f avx512_bf16", "0", False), ("avx2", "1", True), ("avx2", "yes", False)])
def test_cpu_has_bf16_dots_reads_the_flags_and_the_override(monkeypatch, flags, env, expected):
  monkeypatch.setattr(runtime, "cpu_info", lambda: {"flags": flags})
  monkeypatch.setenv(runtime.BF16_DOTS_ENV, env)
  assert runtime.cpu_has_bf16_dots() is expected


def test_without_bf16_dot_products_bf16_linear_layers_are_the_plain_dot(monkeypatch):
  """On an AVX2-only CPU YNNPACK's bf16 kernels are slower than XLA's float32 conversion: the plain dot is kept."""
  x, w, g = _x_w_g()
  jaxpr = lambda: str(jax.make_jaxpr(lambda a, b: matmul.linear_dot_general(a, b, DIMS))(x, w))   # noqa: E731
  monkeypatch.setenv(runtime.BF16_DOTS_ENV, "0")
  assert "custom_vjp" not in jaxpr()
  got = jax.jit(lambda *a: _value_and_grads(matmul.linear_dot_general, *a))(x, w, g)
  want = jax.jit(lambda *a: _value_and_grads(jax.lax.dot_general, *a))(x, w, g)
  for a, b in zip(_f32(got), _f32(want)):
    np.testing.assert_array_equal(a, b)
  monkeypatch.setenv(runtime.BF16_DOTS_ENV, "1")
  assert "custom_vjp" in jaxpr() and jax.default_backend() == "cpu"


def test_linear_dot_general_equals_the_exact_product_rounded_once(bf16_kernels):
  """Output and both gradients: the float32 product of the bf16 operands, rounded once to bf16 (one ulp)."""
  x, w, g = _x_w_g()
  fast = jax.jit(lambda *a: _value_and_grads(matmul.linear_dot_general, *a))(x, w, g)
  exact = _value_and_grads(lambda a, b, d: jax.lax.dot_general(a, b, d, precision="highest"),
                           *(t.astype(jnp.float32) for t in (x, w, g)))
  assert [t.dtype for t in fast] == [jnp.bfloat16] * 3
  for got, want in zip(_f32(fast), _f32(exact)):
    np.testing.assert_allclose(got, want, rtol=2 ** -7, atol=1e-2)


def test_linear_dot_general_leaves_float32_and_other_dimension_numbers_to_lax():
  x, w, g = _x_w_g(jnp.float32)
  for a, b in zip(_value_and_grads(matmul.linear_dot_general, x, w, g), _value_and_grads(jax.lax.dot_general, x, w, g)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  batch_dims = (((2,), (2,)), ((0,), (0,)))
  w3 = jnp.stack([wb.T, wb.T])                                   # [2, 40, 64]: a batched dot, not a linear layer
  np.testing.assert_array_equal(np.asarray(matmul.linear_dot_general(xb, w3, batch_dims), np.float32),
                                np.asarray(jax.lax.dot_general(xb, w3, batch_dims), np.float32))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the XLA:CPU rewrite of bf16 dots")
def test_bfloat16_mae_keeps_its_linear_layers_in_bfloat16_on_cpu(bf16_kernels):
  """The compiled loss + gradient of a bf16 MAE: every dot of the linear layers and the patch embedding (forward,
  input and weight gradients) takes bf16 operands. With the plain bf16 dot (kept on CPUs without bf16 dot products)
  XLA:CPU converts all of them to float32 dots. (Attention's batched dots are left out: at the tiny model's 4-16 tokens
  XLA:CPU runs them in float32 either way.)"""
  model = models.build("mae_vit_tiny", seed=0, dtype="bfloat16")
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  batch = 2
  images = jax.random.uniform(jax.random.key(1), (batch, model.cfg.img_size, model.cfg.img_size, model.cfg.num_frames))
  noise = jax.random.uniform(jax.random.key(2), (batch, model.cfg.num_tokens))

  def loss(p):
    return nnx.merge(graphdef, p, rest)(images, mask_ratio=0.75, noise=noise)["loss"]

  hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
  dots = [dot for found in profile_step.dots_of(hlo).values() for dot in found]
  linear = [(lhs.split("[")[0], rhs.split("[")[0]) for _, lhs, rhs, _, batched in dots if not batched]
  # 3 dots (forward, input gradient, weight gradient) per linear layer; the patch embedding has no input gradient.
  # Forward and input gradients alone make 2n - 1, so this also checks that the weight gradients were read.
  kernels = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
             if "kernel" in jax.tree_util.keystr(path)]
  assert len(linear) >= 3 * len(kernels) - 1, (len(linear), len(kernels))
  assert set(linear) == {("bf16", "bf16")}, sorted(set(linear))

