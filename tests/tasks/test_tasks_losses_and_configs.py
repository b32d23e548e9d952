"""The tasks' losses against the reference formulas, and the fine-tuning recipes' numbers after the config checks."""
import jax.numpy as jnp
import numpy as np
import pytest

from spectralgpt_jax import tasks
from spectralgpt_jax.tasks import change_detection
from spectralgpt_jax.tasks.base import TaskConfigError
from spectralgpt_jax.train import config_checks

import tasks_testlib as tl


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_classification_losses_match_the_reference_formulas():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 5)).astype(np.float32)
  single = tasks.get(tl.tiny("classification"))
  targets = rng.random((6, 5)).astype(np.float32)
  targets /= targets.sum(-1, keepdims=True)
  soft = float(single._loss(jnp.asarray(logits), {"targets": jnp.asarray(targets)}))
  assert soft == pytest.approx(np.mean(-(targets * _log_softmax(logits)).sum(-1)), rel=1e-5)   # SoftTargetCE
  labels = np.array([0, 4, 2, 2, 1, 3])
  hard = float(single._loss(jnp.asarray(logits), {"label": jnp.asarray(labels)}))
  assert hard == pytest.approx(np.mean(-_log_softmax(logits)[np.arange(6), labels]), rel=1e-5)
  valid = np.array([1, 1, 1, 0, 0, 1], bool)                                   # padding rows do not count
  masked = float(single._loss(jnp.asarray(logits), {"label": jnp.asarray(labels), "valid": jnp.asarray(valid)}))
  assert masked == pytest.approx(np.mean(-_log_softmax(logits)[np.arange(6), labels][valid]), rel=1e-5)

  multi = tasks.get(tl.tiny("multilabel"))
  y = (rng.random((6, 5)) < 0.4).astype(np.uint8)
  sigmoid = 1 / (1 + np.exp(-logits))
  # torch.nn.MultiLabelSoftMarginLoss: mean_n [ -(1/C) sum_c (y log s(x) + (1 - y) log s(-x)) ]
  want = np.mean(-(y * np.log(sigmoid) + (1 - y) * np.log(1 - sigmoid)).mean(-1))
  assert float(multi._loss(jnp.asarray(logits), {"labels": jnp.asarray(y)})) == pytest.approx(want, rel=1e-5)


def test_dense_losses_ignore_label_255_and_weight_like_nll():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
  mask = rng.integers(0, 3, (2, 4, 4)).astype(np.uint8)
  mask[0, :2] = 255
  seg = tasks.get(tl.tiny("segmentation"))
  total, weight = seg.loss_terms(jnp.asarray(logits), {"image": jnp.zeros((2, 4, 4, 12)), "mask": jnp.asarray(mask)})
  keep = mask != 255
  nll = -np.take_along_axis(_log_softmax(logits), np.where(keep, mask, 0)[..., None].astype(int), -1)[..., 0]
  assert float(total / weight) == pytest.approx(nll[keep].mean(), rel=1e-5) and float(weight) == keep.sum()

  cd = tasks.get(tl.tiny("change_detection", **{"loss.class_weights": "0.25,2.0"}))
  change = rng.integers(0, 2, (2, 4, 4)).astype(np.uint8)
  logits2 = logits[..., :2]
  total, weight = cd.loss_terms(jnp.asarray(logits2), {"image1": jnp.zeros((2, 4, 4, 12)),
                                                       "change": jnp.asarray(change)})
  w = np.array([0.25, 2.0])[change]
  nll = -np.take_along_axis(_log_softmax(logits2), change[..., None].astype(int), -1)[..., 0]
  assert float(total / weight) == pytest.approx((w * nll).sum() / w.sum(), rel=1e-5)     # torch NLLLoss(weight)


def test_reference_class_weights_and_their_settings():
  maps = [np.zeros((10, 10), np.uint8), np.ones((5, 4), np.uint8) * 255]
  p = 20 / 120
  np.testing.assert_allclose(change_detection.reference_class_weights(maps), [10 * 2 * p, 2 * (1 - p)], rtol=1e-6)
  for bad in ("nope", "1,2,3", "-1,1"):
    with pytest.raises(TaskConfigError, match=r"config\.loss\.class_weights"):
      tasks.get(tl.tiny("change_detection", **{"loss.class_weights": bad})).check()
  assert tasks.get(tl.tiny("change_detection", **{"loss.class_weights": "none"})).class_weights().tolist() == [1, 1]


@pytest.mark.parametrize("config,arg,expect", [
    ("finetune_eurosat", "paper", dict(model="vit_base_patch8_128", classes=10, lr=2e-4 * 512 / 256, batch=512,
                                       epochs=150, warmup=20, layer_decay=0.75, drop_path=0.1, schedule="cosine")),
    ("finetune_eurosat", "reference,L", dict(model="vit_large_patch8_128", batch=256, drop_path=0.2)),
    ("finetune_bigearthnet", "paper", dict(classes=19, lr=4e-4 * 512 / 256, split="test", mixup=0.0)),
    ("finetune_bigearthnet", "reference", dict(split="val", lr=2e-4 * 256 / 256)),
    ("finetune_segmunich", "paper", dict(model="seg_vit_base_patch8_128", classes=13, lr=5e-4 * 96 / 256, batch=96,
                                         epochs=250, warmup=15, schedule="poly")),
    ("finetune_segmunich", "reference", dict(lr=1e-4, batch=64, append=True)),
    ("finetune_oscd", "paper,L", dict(model="cd_vit_large_patch8_128", classes=2, lr=1e-3, batch=64, epochs=60,
                                      schedule="exponential")),
    ("finetune_oscd", "reference", dict(lr=1e-4, batch=32, epochs=300, reference_patches=True)),
])
def test_recipes_pass_the_checks_with_the_papers_numbers(config, arg, expect):
  c = tl.config_module(config).get_config(arg)
  c.data.data_dir = "/nonexistent"            # class names come from the dataset registry, no data is read
  if "class_weights" in c.loss:
    c.loss.class_weights = "none"
  examples = 10_000
  plan = config_checks.check(c, device_count=32, num_train_examples=examples)   # e.g. a v4-32 slice
  if "model" in expect:
    assert c.model.name == expect["model"]
  if "classes" in expect:
    assert plan.model.num_classes == expect["classes"]
  if "lr" in expect:
    assert plan.peak_lr == pytest.approx(expect["lr"])
  if "batch" in expect:
    assert c.batch_size == expect["batch"]
  if "epochs" in expect:
    assert plan.total_steps == int(expect["epochs"] * examples / c.batch_size)
  if "warmup" in expect:
    assert plan.warmup_steps == pytest.approx(expect["warmup"] * examples / c.batch_size)
  for key, field in (("layer_decay", "layer_decay"), ("schedule", "schedule")):
    if key in expect:
      assert c.optimizer[field] == expect[key]
  if "drop_path" in expect:
    assert plan.model.drop_path_rate == expect["drop_path"]
  if "split" in expect:
    assert c.data.eval_split == expect["split"]
  if "mixup" in expect:
    assert c.data.mixup == expect["mixup"]
  if "append" in expect:
    assert c.data.append_missing_bands is expect["append"]
  if "reference_patches" in expect:
    assert c.metrics.reference_patches and c.data.reference_windows


def test_bad_downstream_configs_name_the_key():
  with pytest.raises(config_checks.ConfigError, match=r"config\.model\.name='vit_tiny': the segmentation task"):
    config_checks.check(tl.tiny("segmentation", **{"model.name": "vit_tiny"}), device_count=8)
  with pytest.raises(config_checks.ConfigError, match=r"config\.model\.num_classes=3: the dataset has 5"):
    config_checks.check(tl.tiny("classification", **{"model.num_classes": 3}), device_count=8)
  with pytest.raises(config_checks.ConfigError, match=r"config\.metrics\.bogus: unknown key"):
    c = tl.tiny("classification")
    c.metrics.bogus = True
    config_checks.check(c, device_count=8)
  with pytest.raises(config_checks.ConfigError, match=r"config\.mode='predict'"):
    config_checks.check(tl.tiny("classification", mode="predict"), device_count=8)
  with pytest.raises(ValueError, match="model size 'H'"):
    tl.config_module("finetune_oscd").get_config("paper,H")
