"""The pure train step: identical results on every mesh, gradient accumulation, non-finite guard, optimizer rules."""
import functools

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from spectralgpt_jax import models, sharding
from spectralgpt_jax.train import optim, state as state_lib, steps

import train_testlib as tl

MODEL = models.get_config(tl.TINY_MODEL, depth=1)     # one encoder block: same code paths, faster compiles
# Adam's first update is lr * g / (|g| + eps), i.e. +-lr for |g| >> eps: float-rounding differences between layouts
# in near-zero gradients would flip whole-lr steps. eps = 1e-3 makes the update a smooth function of the gradient,
# so parameter equality after the step is a tight check of gradient equality.
OPT = ml_collections.ConfigDict(dict(b1=0.9, b2=0.95, eps=1e-3, weight_decay=0.05, clip_grad_norm=0.0))
# warmup 0: the very first update already uses the peak lr, so one step moves every parameter.
SCHEDULE = optim.warmup_half_cosine(1e-3, total_steps=10, warmup_steps=0)


def _one_device_state():
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "model": 1}, devices=jax.devices()[:1])
  return mesh, state_lib.create_sharded(MODEL, optim.make_optimizer(OPT, SCHEDULE), mesh, seed=0)


@functools.cache
def _compiled(mesh, accum):
  tx = optim.make_optimizer(OPT, SCHEDULE)
  abstract = nnx.eval_shape(lambda: state_lib.TrainState(models.build_from_config(MODEL), tx))
  graphdef, abstract_state = nnx.split(abstract)
  shardings = sharding.shardings_for(abstract_state, nnx.get_partition_spec(abstract_state), mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  task = tl.pretrain_task(0.75, depth=1)
  assert task.model_config() == MODEL
  cfg = steps.StepConfig(task=task, accum_steps=accum)
  fn = functools.partial(steps.train_step, graphdef, jax.random.key(0), SCHEDULE, cfg, batch_sharding)
  abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state,
                                shardings)
  batch = {"image": jax.ShapeDtypeStruct((16, 16, 16, 12), np.float32)}
  compiled, memory = steps.compile_train_step(fn, abstract_state, shardings, batch, batch_sharding)
  assert memory is None or memory.argument_size_in_bytes > 0
  return compiled, shardings, batch_sharding


def _step(mesh, sharded_state, images, *, accum=1):
  """One compiled step on `mesh`, starting from `sharded_state` re-laid-out onto that mesh."""
  compiled, shardings, batch_sharding = _compiled(mesh, accum)
  state = jax.device_put(jax.device_get(sharded_state.state), shardings)
  state, metrics = compiled(state, {"image": jax.device_put(images, batch_sharding)})
  return jax.device_get(state), jax.device_get(metrics), shardings


@pytest.fixture(scope="module")
def reference():
  images = tl.synthetic_images(16, 16, seed=3) + np.random.RandomState(0).rand(16, 16, 16, 12).astype(np.float32) * .1
  mesh, init = _one_device_state()
  state, metrics, _ = _step(mesh, init, images)
  return images, init, state, metrics


def _max_param_diff(a, b):
  pa, pb = state_lib.model_params(a), state_lib.model_params(b)
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(pa),
                                                                                     jax.tree.leaves(pb)))


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (1, 4, 2)])
def test_sharded_step_equals_single_device(reference, shape):
  images, init, ref_state, ref_metrics = reference
  mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)))
  state, metrics, shardings = _step(mesh, init, images)
  if shape[1] > 1:   # FSDP really shards params and Adam moments
    specs = {str(s.spec) for s in jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))}
    assert any("fsdp" in s for s in specs)
  if shape[2] > 1:
    assert any("model" in str(s.spec) for s in jax.tree.leaves(
        shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)))
  for key in ("loss", "loss_masked", "loss_spectral", "grad_norm"):
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=2e-6, err_msg=key)
  moved = _max_param_diff(init.state, ref_state)
  assert moved > 1e-4                          # the step did update the params ...
  assert _max_param_diff(state, ref_state) < 2e-6   # ... identically on every mesh
  assert int(state["optimizer"]["step"][...]) == 1


def test_grad_accumulation_equals_large_batch(reference):
  images, init, ref_state, ref_metrics = reference
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "model": 1}, devices=jax.devices()[:1])
  state, metrics, _ = _step(mesh, init, images, accum=4)
  for key in ("loss", "loss_masked", "loss_spectral", "grad_norm"):
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=2e-6, err_msg=key)
  assert _max_param_diff(state, ref_state) < 2e-6


def test_nonfinite_update_is_not_applied(reference):
  images, init, _, _ = reference
  bad = images.copy()
  bad[3, 0, 0, 0] = np.nan
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "model": 1}, devices=jax.devices()[:1])
  state, metrics, _ = _step(mesh, init, bad)
  assert metrics["finite"] == 0.0 and not np.isfinite(metrics["loss"])
  assert _max_param_diff(state, init.state) == 0.0          # params untouched
  opt_leaves = jax.tree.leaves(state["optimizer"]["opt_state"])
  assert all(np.all(np.isfinite(np.asarray(x))) for x in opt_leaves if np.asarray(x).dtype.kind == "f")
  assert int(state["optimizer"]["step"][...]) == 1          # the step counter still advances


def test_schedule_matches_reference_formula():
  peak, total, warmup = 3.2e-3, 1000, 100.5
  schedule = optim.warmup_half_cosine(peak, total, warmup)
  for step in (0, 1, 50, 100, 101, 500, 999, 1000):
    e, w, big_e = step / 10, warmup / 10, total / 10       # fractional epochs with 10 steps per epoch
    expected = peak * e / w if e < w else peak * 0.5 * (1 + np.cos(np.pi * (e - w) / (big_e - w)))
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=peak * 1e-6)
  assert optim.peak_learning_rate(2e-4, 4096) == pytest.approx(3.2e-3)


def test_weight_decay_mask_follows_timm_rule():
  model = models.build_from_config(MODEL)
  mask = nnx.to_flat_state(optim.decay_mask(nnx.state(model, nnx.Param)))
  decayed = {"/".join(map(str, path)) for path, v in mask if v.get_value()}
  assert "encoder/pos_embed/spatial" in decayed and "decoder/pos_embed/spectral" in decayed
  assert "decoder/mask_token" in decayed and "encoder/patch_embed/kernel" in decayed
  assert not any(name.endswith(("bias", "scale")) for name in decayed)


def test_logical_rules_cover_model_and_reject_unknown_names():
  mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "model": 2})
  abstract = nnx.eval_shape(lambda: models.build_from_config(MODEL))
  specs = nnx.get_partition_spec(nnx.state(abstract, nnx.Param))
  sharding.shardings_for(nnx.state(abstract, nnx.Param), specs, mesh)    # every logical name is in RULES
  spec = jax.sharding.PartitionSpec
  assert sharding.logical_to_mesh_spec(spec("embed", "mlp"), (32, 128), mesh) == spec("fsdp", "model")
  assert sharding.logical_to_mesh_spec(spec("heads",), (3,), mesh) == spec()     # 3 % 2: replicated
  with pytest.raises(KeyError, match="layers"):
    sharding.logical_to_mesh_spec(spec("layers"), (4,), mesh)
