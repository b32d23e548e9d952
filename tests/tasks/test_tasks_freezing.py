"""Frozen parameters (config.optimizer.freeze): a linear probe / frozen backbone trains only what is not frozen."""
import dataclasses
import functools
import json

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from spectralgpt_jax import export, models, sharding, tasks
from spectralgpt_jax.models import flops
from spectralgpt_jax.train import config_checks, freezing, loop, optim, resume, state as state_lib, steps

import tasks_testlib as tl

# eps 1e-3 keeps Adam's first update a smooth function of the gradient; layer decay as the fine-tuning recipe.
OPT = ml_collections.ConfigDict(dict(b1=0.9, b2=0.999, eps=1e-3, weight_decay=0.05, clip_grad_norm=0.0,
                                     layer_decay=0.75, decay_pos_embed=False))
SCHEDULE = optim.warmup_half_cosine(1e-3, total_steps=10, warmup_steps=0)


def _names(tree) -> dict[str, np.ndarray]:
  return {state_lib.param_name(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _one_step(task, cfg, mesh, batch, freeze, accum_steps=1):
  tx = optim.make_optimizer(OPT, SCHEDULE, depth=cfg.depth)
  sharded = state_lib.create_sharded(cfg, tx, mesh, seed=0, freeze=freeze)
  initial = _names(jax.device_get(state_lib.model_params(sharded.state)))
  batch_sharding = sharding.batch_sharding(mesh)
  fn = functools.partial(steps.train_step, sharded.graphdef, jax.random.key(0), SCHEDULE,
                         steps.StepConfig(task=task, freeze=freeze, accum_steps=accum_steps), batch_sharding)
  device_batch = {k: jax.device_put(v, batch_sharding) for k, v in batch.items()}
  compiled, _ = steps.compile_train_step(fn, sharded.state, sharded.shardings, device_batch, batch_sharding)
  state, metrics = jax.device_get(compiled(sharded.state, device_batch))
  moments = [state_lib.param_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(state["optimizer"])[0]]
  return initial, _names(state_lib.model_params(state)), metrics, moments


def test_a_frozen_encoder_is_bit_identical_and_the_head_steps_as_in_full_training():
  task = tasks.get(tl.tiny("classification"))
  cfg = task.model_config()
  rng = np.random.default_rng(0)
  targets = rng.random((8, cfg.num_classes)).astype(np.float32)
  batch = {"image": rng.random((8, 32, 32, cfg.num_frames), np.float32), "targets": targets / targets.sum(-1)[:, None]}
  one = sharding.make_mesh({"data": 1, "fsdp": 1, "model": 1}, devices=jax.devices()[:1])
  _, full, full_metrics, full_moments = _one_step(task, cfg, one, batch, ())
  mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, (2, 2, 2))))
  initial, probed, metrics, moments = _one_step(task, cfg, mesh, batch, ("encoder",))
  encoder = [n for n in initial if n.startswith("encoder/")]
  assert len(encoder) > 30 and set(initial) - set(encoder) == {"head/bias", "head/kernel"}
  for name in encoder:
    np.testing.assert_array_equal(probed[name], initial[name], err_msg=name)
    assert not np.array_equal(full[name], initial[name]) or name.endswith("bias"), name   # full training moved it
  for name in ("head/kernel", "head/bias"):          # Adam is per element: the head's update does not see the rest
    assert not np.array_equal(probed[name], initial[name])
    np.testing.assert_allclose(probed[name], full[name], rtol=1e-5, atol=1e-7, err_msg=name)
  np.testing.assert_allclose(metrics["loss"], full_metrics["loss"], rtol=1e-6)
  assert 0 < metrics["grad_norm"] < full_metrics["grad_norm"]           # the head's gradient only
  assert moments and not any("encoder" in m for m in moments)             # no Adam moments for frozen params
  assert any("encoder" in m for m in full_moments) and len(moments) < len(full_moments) / 10


def test_freezing_some_blocks_of_scanned_blocks_with_gradient_accumulation():
  """Scanned blocks stack the per-block params at run time: a frozen block inside the stack stays fixed."""
  task = tasks.get(tl.tiny("classification"))
  cfg = dataclasses.replace(task.model_config(), scan_blocks=True)
  rng = np.random.default_rng(1)
  targets = rng.random((8, cfg.num_classes)).astype(np.float32)
  batch = {"image": rng.random((8, 32, 32, cfg.num_frames), np.float32), "targets": targets / targets.sum(-1)[:, None]}
  mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, (2, 4, 1))))
  initial, after, metrics, moments = _one_step(task, cfg, mesh, batch, ("encoder/(patch_embed|blocks/0)",),
                                               accum_steps=2)
  assert np.isfinite(metrics["loss"]) and not any("encoder/blocks/0/" in m for m in moments)
  assert any("encoder/blocks/1/" in m for m in moments)
  for name in initial:
    same = np.array_equal(after[name], initial[name])
    assert same == name.startswith(("encoder/patch_embed/", "encoder/blocks/0/")), name
  _, whole, _, _ = _one_step(task, cfg, mesh, batch, ("encoder/(patch_embed|blocks/0)",))   # one batch of 8
  for name in initial:
    np.testing.assert_allclose(after[name], whole[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_patterns_match_leading_path_components_and_bad_ones_name_the_field():
  names = [state_lib.param_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(
      state_lib.model_params(jax.eval_shape(lambda: _state_of(models.build("vit_tiny", num_classes=3)))))[0]]
  frozen, trained = freezing.check(freezing.parse("encoder/(patch_embed|pos_embed|blocks/0)"), names)
  assert frozen and all(n.startswith(("encoder/patch_embed/", "encoder/pos_embed/", "encoder/blocks/0/"))
                        for n in frozen)
  assert "encoder/blocks/1/attn/q/kernel" in trained and "head/kernel" in trained
  assert freezing.parse(" encoder , head/bias ") == ("encoder", "head/bias")
  assert not freezing.is_frozen("encoder_norm/scale", ("encoder",)) and freezing.is_frozen("encoder", ("encoder",))
  with pytest.raises(config_checks.ConfigError, match=r"config.optimizer.freeze='enc\(': 'enc\(' is not a regular"):
    freezing.parse("enc(")
  with pytest.raises(config_checks.ConfigError, match="'encoder/.pos_embed. blocks/0.' contains whitespace"):
    freezing.parse("encoder/(pos_embed| blocks/0)")      # a pattern broken across a line
  with pytest.raises(config_checks.ConfigError, match="'backbone' matches no parameter of the model .* encoder, head"):
    freezing.check(("backbone",), names)
  with pytest.raises(config_checks.ConfigError, match="freezes every parameter of the model: nothing would train"):
    freezing.check(("encoder", "head"), names)
  # FLOPs of the step: frozen layers run forward only, and no backward runs below the lowest trained layer
  cfg = models.get_config("vit_tiny", num_classes=3)                    # depth 2: layer ids 0, 1, 2, 3
  assert freezing.trained_layers(names, ("encoder",), cfg.depth) == [False, False, False, True]
  partial = freezing.trained_layers(names, freezing.parse("encoder/(patch_embed|pos_embed|blocks/0)"), cfg.depth)
  assert partial == [False, False, True, True] and freezing.trained_layers(names, (), cfg.depth) is None
  embed, block0, block1, head = flops.layer_forward_flops(cfg)
  assert embed + block0 + block1 + head == flops.forward_flops(cfg) and min(embed, block0, head) > 0
  assert flops.train_step_flops(cfg, trained_layers=[False, False, False, True]) == flops.forward_flops(cfg) + 2 * head
  assert flops.train_step_flops(cfg, trained_layers=partial) == flops.forward_flops(cfg) + 2 * (block1 + head)
  assert flops.train_step_flops(cfg, trained_layers=[True] * 4) == flops.train_step_flops(cfg) == 3 * (
      embed + block0 + block1 + head)
  # a config.json written before the key existed is the same run as one with the default
  assert resume.config_differences({"task": "classification"}, {"task": "classification",
                                                                "optimizer": {"freeze": ""}}) == []
  assert resume.config_differences({"optimizer": {"freeze": "head, encoder"}},
                                   {"optimizer": {"freeze": "encoder,head"}}) == []


def _state_of(model):
  return nnx.state(state_lib.ModelState(model))


def test_linear_probe_run_exports_the_pretrained_encoder_unchanged(tmp_path):
  mae = tl.mae_export(tmp_path / "pre")
  c = tl.tiny("classification", init_from=str(tmp_path / "pre"), total_steps=3, eval_every=0,
              **{"optimizer.freeze": "encoder"})
  loop.run(c, str(tmp_path / "run"))
  vit, metadata = export.load(tmp_path / "run" / "export")
  pre = _names(jax.tree.map(np.asarray, state_lib.model_params(_state_of(mae))))
  probed = _names(jax.tree.map(np.asarray, state_lib.model_params(_state_of(vit))))
  shared = [n for n in probed if n.startswith("encoder/") and n in pre]
  assert len(shared) > 30
  for name in shared:
    np.testing.assert_array_equal(probed[name], pre[name], err_msg=name)
  training = json.loads((tmp_path / "run" / "export" / "metadata.json").read_text())["training"]
  assert training["frozen"].startswith("encoder (") and "parameters kept as initialised" in training["frozen"]
  assert "frozen encoder (" in (tmp_path / "run" / "export" / "MODEL_CARD.md").read_text()
  # the run directory's checkpoint (moments of the head only) evaluates like any other
  evaluated = loop.run(tl.tiny("classification", mode="eval", init_from=str(tmp_path / "run")), str(tmp_path / "ev"))
  assert evaluated and (tmp_path / "ev" / "eval" / "metrics.json").exists()
  with pytest.raises(config_checks.ConfigError, match=r"config\.optimizer\.freeze='' \(the run was started with "
                                                      r"'encoder'\)"):
    loop.run(tl.tiny("classification", total_steps=4, eval_every=0), str(tmp_path / "run"))
  with pytest.raises(config_checks.ConfigError, match="its checkpoints hold optimizer moments for other parameters"):
    loop.run(tl.tiny("classification", total_steps=4, eval_every=0, strict_resume=False), str(tmp_path / "run"))
  with pytest.raises(config_checks.ConfigError, match="'blocks' matches no parameter"):
    loop.run(tl.tiny("classification", total_steps=2, **{"optimizer.freeze": "blocks"}), str(tmp_path / "bad"))
