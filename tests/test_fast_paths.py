"""The fast-path switches (attention implementation, rematerialisation, scanned blocks, bfloat16 compute) compute
what the plain path computes: same outputs and same gradients, within float tolerance."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import NamedSharding, PartitionSpec as P

from spectralgpt_jax import models, runtime, sharding
from spectralgpt_jax.models.attention import attention
from spectralgpt_jax.models.config import ATTENTION_IMPLS, REMAT_POLICIES, resolve_attention

# Compile time dominates these tiny models: XLA's cheaper optimisation level (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compiles")


def _qkvg(shape, dtype=jnp.float32):
  return [jax.random.normal(k, shape, dtype) for k in jax.random.split(jax.random.key(0), 4)]


def _attention_and_grads(impl, q, k, v, g):
  out, vjp = jax.vjp(lambda *a: attention(*a, impl=impl, chunk=64), q, k, v)
  return out, vjp(g)


def _assert_close(a, b, tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), atol=tol, rtol=tol)


@pytest.mark.parametrize("impl", ["explicit_vjp", "chunked", "auto"])
def test_attention_impls_match_plain_xla(impl):
  q, k, v, g = _qkvg((2, 128, 4, 16))
  _assert_close(jax.jit(lambda *a: _attention_and_grads(impl, *a))(q, k, v, g),
                _attention_and_grads("xla", q, k, v, g), 2e-5)


def test_explicit_vjp_in_bfloat16_stays_close_to_float32():
  q, k, v, g = _qkvg((2, 64, 2, 32))
  low = _attention_and_grads("explicit_vjp", *(x.astype(jnp.bfloat16) for x in (q, k, v, g)))
  _assert_close(low, _attention_and_grads("xla", q, k, v, g), 6e-2)


def _needs_devices(n: int):
  """On one accelerator (benchmarks/gpu.sh runs this file on a single GPU) the mesh tests cannot run."""
  return pytest.mark.skipif(jax.device_count() < n, reason=f"needs {n} devices, there are {jax.device_count()}")


@_needs_devices(4)
def test_pallas_tpu_kernel_matches_xla_sharded_over_the_mesh():
  """The TPU flash kernel (run by Pallas's TPU interpreter on CPU) under shard_map on a (1, 2, 2) mesh: the batch
  split over fsdp, the heads over model; and the 102-token fallback to xla. (Four devices: the interpreter's
  backward pass does not finish on eight simulated devices with jax 0.10.2, a property of the interpreter.)"""
  mesh = sharding.make_mesh(dict(data=1, fsdp=2, model=2), devices=jax.devices()[:4])
  q, k, v, g = _qkvg((4, 256, 2, 64))
  spec = NamedSharding(mesh, P(("data", "fsdp"), None, "model"))
  fn = jax.jit(lambda *a: _attention_and_grads("pallas", *a), in_shardings=spec)
  with pltpu.force_tpu_interpret_mode(), jax.set_mesh(mesh):
    got = fn(q, k, v, g)
    short = jax.jit(lambda *a: _attention_and_grads("pallas", *a))(*(x[:, :102] for x in (q, k, v, g)))
  _assert_close(got, _attention_and_grads("xla", q, k, v, g), 2e-5)
  _assert_close(short, _attention_and_grads("xla", *(x[:, :102] for x in (q, k, v, g))), 2e-5)


def test_auto_resolves_per_platform():
  assert resolve_attention("auto", "cpu") == "explicit_vjp"
  assert resolve_attention("auto", "tpu") == "pallas"
  assert resolve_attention("auto", "gpu", jnp.bfloat16) == "cudnn"
  assert resolve_attention("auto", "gpu", jnp.float32) == "xla"     # cuDNN's fused kernel has no float32 path
  assert resolve_attention("chunked", "tpu") == "chunked"
  assert set(ATTENTION_IMPLS) >= {"auto", "xla", "explicit_vjp", "cudnn", "pallas", "chunked"}


def _loss_and_grads(name, train, batch=2, **overrides):
  model = models.build(name, seed=0, **overrides)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  x = jax.random.uniform(jax.random.key(1), (batch, model.cfg.img_size, model.cfg.img_size, model.cfg.num_frames))

  def loss(params):
    m = nnx.merge(graphdef, params, rest)
    if model.cfg.kind == "mae":
      return m(x, mask_ratio=0.75, noise=jax.random.uniform(jax.random.key(2), (batch, m.cfg.num_tokens)))["loss"]
    return jnp.mean(m(x, train=train, rngs=nnx.Rngs(dropout=3)) ** 2)
  return jax.jit(jax.value_and_grad(loss))(params)


SWITCHES = [dict(remat=policy) for policy in REMAT_POLICIES if policy != "none"] + [
    dict(scan_blocks=True), dict(scan_blocks=True, remat="dots"), dict(attention_impl="explicit_vjp"),
    dict(grad_fence="on"), dict(grad_fence="on", remat="full")]
PLAIN = dict(attention_impl="xla", grad_fence="off")


@pytest.mark.parametrize("overrides", SWITCHES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_mae_loss_and_gradients_equal_the_plain_path(overrides):
  plain = _loss_and_grads("mae_vit_tiny", False, **PLAIN)
  _assert_close(_loss_and_grads("mae_vit_tiny", False, **{**PLAIN, **overrides}), plain, 1e-5)


def test_grad_fence_is_on_for_cpu_and_cuts_the_backward_pass():
  """auto fences on CPU; the fence is a conditional in the compiled backward pass (one per block boundary of the
  encoder and the decoder), and absent when off."""
  from spectralgpt_jax.models.layers import use_grad_fence

  assert use_grad_fence("auto") == (jax.default_backend() == "cpu") and use_grad_fence("on")
  assert not use_grad_fence("off")

  def compiled(fence):
    model = models.build("mae_vit_tiny", seed=0, grad_fence=fence)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jnp.ones((2, model.cfg.img_size, model.cfg.img_size, model.cfg.num_frames))
    noise = jnp.linspace(0, 1, 2 * model.cfg.num_tokens).reshape(2, -1)
    loss = lambda p: nnx.merge(graphdef, p, rest)(x, mask_ratio=0.75, noise=noise)["loss"]   # noqa: E731
    return jax.jit(jax.grad(loss)).lower(params).compile().as_text()

  model = models.get_config("mae_vit_tiny")
  boundaries = (model.depth - 1) + (model.decoder_depth - 1)
  assert compiled("on").count("conditional(") == boundaries > 0
  assert compiled("off").count("conditional(") == 0


@pytest.mark.parametrize("overrides", [dict(scan_blocks=True), dict(scan_blocks=True, remat="full"),
                                       dict(grad_fence="on")], ids=["scan", "scan+remat", "fence"])
def test_classifier_with_drop_path_draws_the_same_keys_when_scanned(overrides):
  """Drop path on (train mode, depth 4 so three blocks have a rate): scanned or fenced blocks draw the plain keys."""
  kw = dict(depth=4, drop_path_rate=0.5, attention_impl="xla", grad_fence="off")
  plain = _loss_and_grads("vit_tiny", True, **kw)
  assert not np.allclose(plain[0], _loss_and_grads("vit_tiny", False, **kw)[0])   # drop path really is on
  _assert_close(_loss_and_grads("vit_tiny", True, **{**kw, **overrides}), plain, 1e-5)


def test_bfloat16_compute_stays_close_to_float32():
  """bf16 matmuls with float32 master weights (the params and their gradients stay float32)."""
  loss32, grads32 = _loss_and_grads("mae_vit_tiny", False, attention_impl="xla")
  loss16, grads16 = _loss_and_grads("mae_vit_tiny", False, dtype="bfloat16")
  assert {x.dtype for x in jax.tree.leaves(grads16)} == {jnp.dtype(jnp.float32)}
  np.testing.assert_allclose(loss16, loss32, rtol=2e-2)
  # Per-parameter gradient directions agree; skipped: gradients that are zero in exact arithmetic (the key bias
  # shifts every logit of a row equally, which softmax ignores), where both paths only hold rounding noise.
  total = float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads32))))
  cos = [float(jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
         for a, b in zip(jax.tree.leaves(grads16), jax.tree.leaves(grads32)) if jnp.linalg.norm(b) > 1e-4 * total]
  assert len(cos) > 20 and min(cos) > 0.98, cos


def test_bfloat16_linear_layers_under_remat_equal_no_remat(monkeypatch):
  """The written-out VJP of the bf16 linear layers on CPU (models/matmul.py) under rematerialisation."""
  monkeypatch.setenv(runtime.BF16_DOTS_ENV, "1")   # that form, whether or not this CPU has bf16 dot products
  _assert_close(_loss_and_grads("mae_vit_tiny", False, dtype="bfloat16", remat="dots"),
                _loss_and_grads("mae_vit_tiny", False, dtype="bfloat16"), 1e-5)


def test_unknown_remat_policy_names_the_field():
  with pytest.raises(ValueError, match=r"model\.remat='some'"):
    models.get_config("mae_vit_tiny", remat="some")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU (benchmarks/gpu.sh)")
def test_cudnn_attention_matches_xla_in_bfloat16():
  q, k, v, g = (x.astype(jnp.bfloat16) for x in _qkvg((2, 1024, 12, 64)))
  got = jax.jit(lambda *a: _attention_and_grads("cudnn", *a))(q, k, v, g)
  _assert_close(got, jax.jit(lambda *a: _attention_and_grads("xla", *a))(q, k, v, g), 3e-2)
  assert resolve_attention("auto", jax.default_backend(), jnp.bfloat16) == "cudnn"


@_needs_devices(8)
def test_scanned_blocks_under_a_mesh_equal_the_loop():
  """Under a (2, 2, 2) mesh the scan's carry is pinned batch-sharded (sharding.constrain): same loss and gradients."""
  mesh = sharding.make_mesh(dict(data=2, fsdp=2, model=2), devices=jax.devices()[:8])
  with jax.set_mesh(mesh):
    scanned = _loss_and_grads("mae_vit_tiny", False, attention_impl="xla", scan_blocks=True, batch=4)
    fenced = _loss_and_grads("mae_vit_tiny", False, attention_impl="xla", grad_fence="on", batch=4)
  plain = _loss_and_grads("mae_vit_tiny", False, attention_impl="xla", grad_fence="off", batch=4)
  _assert_close(scanned, plain, 1e-5)
  _assert_close(fenced, plain, 1e-5)
