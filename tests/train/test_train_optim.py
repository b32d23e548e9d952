"""Fine-tuning optimizer rules: layer-wise lr decay as the reference's param groups, decay masks, schedules."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from spectralgpt_jax import models
from spectralgpt_jax.train import optim

DEPTH = 12


def test_layer_ids_and_scales_match_the_reference_param_groups():
  # util/lr_decay.py: patch_embed / pos_embed -> 0, blocks.i -> i + 1, the rest (norm, head) -> depth + 1.
  assert optim.layer_id("encoder/patch_embed/kernel", DEPTH) == 0
  assert optim.layer_id("encoder/pos_embed/spatial", DEPTH) == 0
  assert optim.layer_id("encoder/blocks/0/attn/q/kernel", DEPTH) == 1
  assert optim.layer_id("encoder/blocks/11/mlp/fc2/bias", DEPTH) == 12
  assert optim.layer_id("encoder/norm/scale", DEPTH) == 13
  assert optim.layer_id("head/kernel", DEPTH) == 13
  model = nnx.eval_shape(lambda: models.build("vit_base_patch8_128"))
  scales = nnx.to_flat_state(optim.layer_scales(nnx.state(model, nnx.Param), DEPTH, 0.75))
  by_name = {"/".join(map(str, p)): v.get_value() for p, v in scales}
  assert by_name["encoder/patch_embed/kernel"] == pytest.approx(0.75 ** 13)        # 0.02376 in the reference
  assert by_name["encoder/blocks/11/attn/q/kernel"] == pytest.approx(0.75)
  assert by_name["head/kernel"] == 1.0
  assert len({round(v, 12) for v in by_name.values()}) == 14                      # ids 0..13


def test_layer_decay_update_equals_adamw_with_per_group_learning_rates():
  """One step of our chain == torch-style AdamW where each parameter group has lr * scale (decay included)."""
  params = {"encoder": {"patch_embed": {"kernel": jnp.ones((3, 2))}, "blocks": {0: {"w": jnp.full((2, 2), 2.0)}}},
            "head": {"kernel": jnp.full((2, 2), -1.0), "bias": jnp.ones((2,))}}
  grads = jax.tree.map(lambda p: 0.1 * jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape) + 0.05, params)
  cfg = ml_collections.ConfigDict(dict(b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05, clip_grad_norm=0.0,
                                       layer_decay=0.5, decay_pos_embed=False))
  lr = 1e-2
  tx = optim.make_optimizer(cfg, lambda step: lr, depth=1)
  updates, _ = tx.update(grads, tx.init(params), params)
  scale = {"encoder/patch_embed/kernel": 0.25, "encoder/blocks/0/w": 0.5, "head/kernel": 1.0, "head/bias": 1.0}
  for name, s in scale.items():
    keys = [int(k) if k.isdigit() else k for k in name.split("/")]
    p, g, u = params, grads, updates
    for k in keys:
      p, g, u = p[k], g[k], u[k]
    adam = g / (jnp.abs(g) + 1e-8)              # first Adam step after bias correction: m = g, v = g^2
    decay = 0.05 * p if p.ndim > 1 else 0.0
    np.testing.assert_allclose(u, -lr * s * (adam + decay), rtol=1e-5, err_msg=name)


def test_decay_masks_of_the_recipes():
  model = nnx.eval_shape(lambda: models.build("vit_tiny"))
  params = nnx.state(model, nnx.Param)

  def decayed(**kw):
    flat = nnx.to_flat_state(optim.decay_mask(params, **kw))
    return {"/".join(map(str, p)) for p, v in flat if v.get_value()}

  pretrain, finetune, dense = decayed(), decayed(decay_pos_embed=False), decayed(decay_1d=True)
  assert "encoder/pos_embed/spatial" in pretrain and "encoder/pos_embed/spatial" not in finetune
  assert "encoder/blocks/0/attn/q/kernel" in finetune and not any(n.endswith("bias") for n in finetune)
  assert "head/bias" in dense and "encoder/norm/scale" in dense     # the dense-task reference decays everything


def test_poly_schedule_matches_the_segmunich_reference_lambda():
  peak, steps_per_epoch, epochs, warm_epochs = 1e-4, 10, 250, 15
  total, warmup = epochs * steps_per_epoch, warm_epochs * steps_per_epoch
  schedule = optim.warmup_poly(peak, total, warmup, power=0.9, warmup_start=1e-3)
  for x in (0, 1, 75, 150, 151, 1000, 2499):
    if x <= warmup:
      alpha = x / warmup
      factor = 1e-3 * (1 - alpha) + alpha
    else:
      factor = (1 - (x - warmup) / (total - warmup)) ** 0.9
    np.testing.assert_allclose(float(schedule(x)), peak * factor, rtol=1e-5, atol=peak * 1e-6)   # float32


def test_exponential_schedule_steps_once_per_epoch():
  schedule = optim.epoch_exponential(1e-3, steps_per_epoch=12.5, rate=0.95)
  assert float(schedule(0)) == pytest.approx(1e-3)
  assert float(schedule(12)) == pytest.approx(1e-3)            # still epoch 0
  assert float(schedule(13)) == pytest.approx(0.95e-3)
  assert float(schedule(250)) == pytest.approx(1e-3 * 0.95 ** 20)


def test_make_schedule_dispatch_and_chain_without_layer_decay_is_adamw():
  cfg = ml_collections.ConfigDict(dict(schedule="constant", b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05,
                                       clip_grad_norm=0.0, layer_decay=1.0))
  schedule = optim.make_schedule(cfg, peak_lr=3e-4, total_steps=10, warmup_steps=0, steps_per_epoch=None)
  assert float(schedule(7)) == pytest.approx(3e-4)
  params = {"w": jnp.ones((2, 2)), "b": jnp.zeros((2,))}
  grads = {"w": jnp.full((2, 2), 0.3), "b": jnp.full((2,), -0.2)}
  ours = optim.make_optimizer(cfg, schedule)
  ref = optax.adamw(schedule, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05, mask=lambda p: jax.tree.map(
      lambda x: x.ndim > 1, p))
  got, _ = ours.update(grads, ours.init(params), params)
  want, _ = ref.update(grads, ref.init(params), params)
  for k in params:
    np.testing.assert_array_equal(got[k], want[k])
