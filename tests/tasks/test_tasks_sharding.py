"""The fine-tuning steps are layout-independent: one step on data / FSDP / tensor-parallel meshes equals the
single-device step (the seg/cd heads carry logical axis names and shard like the encoder)."""
import functools

import jax
import ml_collections
import numpy as np
import pytest

from spectralgpt_jax import sharding, tasks
from spectralgpt_jax.train import optim, state as state_lib, steps

import tasks_testlib as tl

# eps 1e-3 makes Adam's first update a smooth function of the gradient (see tests/train/test_train_steps.py).
OPT = ml_collections.ConfigDict(dict(b1=0.9, b2=0.999, eps=1e-3, weight_decay=0.05, clip_grad_norm=0.0,
                                     layer_decay=0.75, decay_pos_embed=False))
SCHEDULE = optim.warmup_half_cosine(1e-3, total_steps=10, warmup_steps=0)


def _batch(task, cfg, n=8):
  rng = np.random.default_rng(0)
  image = lambda: rng.random((n, cfg.img_size, cfg.img_size, cfg.num_frames), np.float32)
  label = lambda k: rng.integers(0, k, (n, cfg.img_size, cfg.img_size)).astype(np.uint8)
  if task.name == "classification":
    targets = rng.random((n, cfg.num_classes)).astype(np.float32)
    return {"image": image(), "targets": targets / targets.sum(-1, keepdims=True)}
  if task.name == "segmentation":
    return {"image": image(), "mask": label(cfg.num_classes)}
  return {"image1": image(), "image2": image(), "change": label(2)}


def _step(task, cfg, mesh, batch):
  """One compiled step from the seed-0 state created on `mesh` (the same values on every mesh: threefry is
  partitionable, so initialisation does not depend on the layout)."""
  tx = optim.make_optimizer(OPT, SCHEDULE, depth=cfg.depth)
  sharded = state_lib.create_sharded(cfg, tx, mesh, seed=0)
  batch_sharding = sharding.batch_sharding(mesh)
  fn = functools.partial(steps.train_step, sharded.graphdef, jax.random.key(0), SCHEDULE, steps.StepConfig(task=task),
                         batch_sharding)
  state = sharded.state
  device_batch = {k: jax.device_put(v, batch_sharding) for k, v in batch.items()}
  compiled, _ = steps.compile_train_step(fn, state, sharded.shardings, device_batch, batch_sharding)
  new_state, metrics = compiled(state, device_batch)
  return jax.device_get(new_state), jax.device_get(metrics), sharded.shardings


@pytest.mark.parametrize("kind", ["segmentation", "change_detection", "classification"])
def test_finetuning_step_equals_single_device_on_sharded_meshes(kind):
  c = tl.tiny(kind, **({"loss.class_weights": "none"} if kind == "change_detection" else {}))
  task = tasks.get(c)
  cfg = task.model_config()
  batch = _batch(task, cfg)
  one = sharding.make_mesh({"data": 1, "fsdp": 1, "model": 1}, devices=jax.devices()[:1])
  ref_state, ref_metrics, _ = _step(task, cfg, one, batch)
  for shape in ((1, 4, 2),) if kind == "classification" else ((2, 2, 2),):
    state, metrics, shardings = _step(task, cfg, sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape))), batch)
    specs = {str(s.spec) for s in jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))}
    assert any("model" in s for s in specs) and any("fsdp" in s for s in specs)
    for key in ("loss", "grad_norm"):
      np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=5e-6, err_msg=f"{shape} {key}")
    diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(state_lib.model_params(state)),
                             jax.tree.leaves(state_lib.model_params(ref_state)))]
    assert max(diffs) < 5e-6, shape
  moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
           for a, b in zip(jax.tree.leaves(state_lib.model_params(ref_state)),
                           jax.tree.leaves(state_lib.model_params(jax.device_get(_initial(task, cfg, one)))))]
  assert max(moved) > 1e-5                                   # the step did update the params


def _initial(task, cfg, mesh):
  return state_lib.create_sharded(cfg, optim.make_optimizer(OPT, SCHEDULE, depth=cfg.depth), mesh, seed=0).state
