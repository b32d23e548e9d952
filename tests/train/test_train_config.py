"""Config files and config errors: every variant loads and checks; mistakes fail before compiling, naming the key."""
import os
import subprocess
import sys

import pytest

from spectralgpt_jax.train import config_checks

import train_testlib as tl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "configs"))
import pretrain  # noqa: E402  (configs/pretrain.py)


@pytest.mark.parametrize("arg, model, image", [
    ("demo", "mae_vit_tiny", 48),
    ("fmow", "mae_vit_base_patch8_96", 96), ("fmow,L", "mae_vit_large_patch8_96", 96),
    ("fmow,H", "mae_vit_huge_patch8_96", 96),
    ("bigearthnet,B", "mae_vit_base_patch8_128", 128), ("bigearthnet,size=L", "mae_vit_large_patch8_128", 128),
])
def test_config_variants_pass_the_checks(arg, model, image):
  c = pretrain.get_config(arg)
  assert c.model.name == model and c.data.image_size == image == c.model.img_size
  devices = 8 if arg == "demo" else 256      # e.g. a v5e-256 pod slice
  plan = config_checks.check(c, device_count=devices, num_train_examples=None if arg == "demo" else 100_000)
  if arg.startswith("fmow"):
    assert c.model.mask_ratio == 0.90 and plan.peak_lr == pytest.approx(2e-4 * 4096 / 256)
    assert plan.warmup_steps == pytest.approx(20 * 100_000 / 4096)
    assert plan.total_steps == int(200 * 100_000 / 4096)
  if arg.startswith("bigearthnet"):
    assert plan.peak_lr == pytest.approx(1e-4 * 4096 / 256)


def test_bad_size_argument():
  with pytest.raises(ValueError, match="model size"):
    pretrain.get_config("fmow,XL")


def _error(config, devices=8, match=None):
  with pytest.raises(config_checks.ConfigError, match=match):
    config_checks.check(config, device_count=devices)


def test_config_errors_name_the_key():
  c = tl.tiny_config()
  with c.optimizer.unlocked():
    c.optimizer.blrr = 1.0
  _error(c, match=r"config\.optimizer\.blrr: unknown key \(did you mean config\.optimizer\.blr\?\)")
  _error(tl.tiny_config(**{"mesh.fsdp": 3}), match=r"config\.mesh\.fsdp=-1|config\.mesh=")
  _error(tl.tiny_config(**{"mesh.data": 3, "mesh.fsdp": 1}), match=r"needs 3 devices but there are 8")
  _error(tl.tiny_config(**{"mesh.data": 3}), match=r"config\.mesh\.fsdp=-1: .*3.*does not divide the 8 devices")
  _error(tl.tiny_config(batch_size=12), match=r"config\.batch_size=12: .*not divisible by the 8 data-parallel")
  _error(tl.tiny_config(**{"optimizer.accum_steps": 3}), match=r"config\.batch_size=16: must be a positive "
         r"multiple of config\.optimizer\.accum_steps=3")
  _error(tl.tiny_config(**{"optimizer.accum_steps": 4}), match=r"micro-batch")       # 16 / 4 = 4 < 8 devices
  _error(tl.tiny_config(**{"model.embed_dim": 31}), match=r"config\.model\.embed_dim=31")
  _error(tl.tiny_config(**{"data.image_size": 32}), match=r"config\.data\.image_size=32")
  _error(tl.tiny_config(total_steps=0, total_epochs=2.0), match=r"config\.total_epochs needs the training set")
  _error(tl.tiny_config(compute_dtype="float16"), match=r"config\.compute_dtype")


def _main(*args):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], capture_output=True, text=True,
                        env=env, cwd=ROOT, timeout=120)


def test_cli_errors_are_one_clear_line(tmp_path):
  unknown = _main("--config=configs/pretrain.py:demo", f"--workdir={tmp_path}", "--config.optimizer.blrr=1")
  assert unknown.returncode != 0
  assert "Config error: config.optimizer.blrr: unknown key 'blrr'" in unknown.stderr
  assert "Traceback" not in unknown.stderr
  mesh = _main("--config=configs/pretrain.py:demo", f"--workdir={tmp_path}", "--config.mesh.fsdp=3")
  assert mesh.returncode != 0 and "Config error: config.mesh.fsdp=-1" not in mesh.stderr
  assert "Config error: config.mesh" in mesh.stderr and "Traceback" not in mesh.stderr
  assert "compiled train step" not in mesh.stderr        # failed before any compile
