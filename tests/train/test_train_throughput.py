"""MFU bookkeeping: the device peak table, the override, and the step statistics written to metrics.jsonl."""
from __future__ import annotations

import logging
import types

import jax
import numpy as np
import pytest

from spectralgpt_jax import models, runtime
from spectralgpt_jax.models.flops import train_step_flops
from spectralgpt_jax.train import loop, throughput

import train_testlib as tl


@pytest.mark.parametrize("kind, dtype, peak", [
    ("TPU v4", "bfloat16", 275.0), ("TPU v5 lite", "bfloat16", 197.0), ("TPU v5", "bfloat16", 459.0),
    ("TPU v6 lite", "bfloat16", 918.0), ("NVIDIA A100-SXM4-80GB", "float32", 156.0),
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.0), ("NVIDIA H100 PCIe", "bfloat16", 756.0),
    ("NVIDIA H200", "bfloat16", 989.0)])
def test_peak_table_matches_device_kinds(kind, dtype, peak):
  assert throughput.peak_tflops(types.SimpleNamespace(device_kind=kind), dtype) == peak


def test_unknown_device_has_no_peak_unless_given():
  cpu = types.SimpleNamespace(device_kind="cpu")
  assert throughput.peak_tflops(cpu, "float32") is None
  assert throughput.peak_tflops(cpu, "float32", override=2.5) == 2.5
  cfg = models.get_config("vit_tiny")
  assert "mfu" not in throughput.step_stats(cfg, batch_size=4, step_s=1.0, devices=[cpu])


@pytest.mark.parametrize("name", ["mae_vit_base_patch8_128", "vit_base_patch8_128", "seg_vit_base_patch8_128",
                                  "cd_vit_base_patch8_128"])
def test_step_stats_use_the_analytic_flops_of_each_task(name):
  cfg = models.get_config(name, dtype="bfloat16")
  h100 = types.SimpleNamespace(device_kind="NVIDIA H100 80GB HBM3")
  stats = throughput.step_stats(cfg, batch_size=64, step_s=0.5, devices=[h100] * 8)
  flops = train_step_flops(cfg, 0.9) * 64
  np.testing.assert_allclose(stats["model_tflops_per_s"], flops / 0.5 / 8 / 1e12)
  np.testing.assert_allclose(stats["mfu"], stats["model_tflops_per_s"] / 989.0)
  tokens = 1024 * (2 if cfg.kind == "cd" else 1)
  np.testing.assert_allclose(stats["tokens_per_s"], 64 * tokens / 0.5)


def test_negative_peak_is_a_config_error():
  from spectralgpt_jax.train import config_checks
  with pytest.raises(config_checks.ConfigError, match=r"config\.peak_tflops=-1"):
    config_checks.check(tl.tiny_config(peak_tflops=-1.0), device_count=8)


@pytest.mark.parametrize("dtype, bf16_dots, warned", [("bfloat16", "0", True), ("bfloat16", "1", False),
                                                      ("float32", "0", False)])
def test_bfloat16_on_a_cpu_without_bf16_dots_logs_the_faster_choice(monkeypatch, caplog, dtype, bf16_dots, warned):
  monkeypatch.setenv(runtime.BF16_DOTS_ENV, bf16_dots)
  model = models.get_config("vit_tiny", dtype=dtype)
  run = types.SimpleNamespace(plan=types.SimpleNamespace(model=model),
                              mesh=types.SimpleNamespace(devices=np.array(jax.devices()[:1])))
  with caplog.at_level(logging.WARNING):
    loop._warn_slow_cpu_bfloat16(run)
  assert ("--config.compute_dtype=float32 is faster" in caplog.text) is warned
