"""benchmarks/memory_plan.py: its core on the 8 simulated CPU devices of the test session (the GPU-host path, tiny
model), its errors, and, where libtpu is installed, an ahead-of-time compile for a small TPU topology."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from spectralgpt_jax import models
from spectralgpt_jax.models.flops import train_step_flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "memory_plan.py")
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def _load():
  spec = importlib.util.spec_from_file_location("memory_plan", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module          # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


memory_plan = _load()


def _check_fields(result: dict, *, batch: int, num_devices: int) -> None:
  json.dumps(result)                                   # one JSON line: everything serialisable
  memory = result["memory_bytes"]
  peak = memory["argument"] + memory["output"] - memory["alias"] + memory["temp"]
  assert result["peak_bytes_per_device"] == peak > 0
  assert memory["alias"] > 0                           # the state is donated
  resident = peak + memory["generated_code"]            # a TPU keeps the program in HBM too
  assert isinstance(result["fits"], bool) and result["fits"] == (resident <= result["hbm_bytes_per_device"])
  cfg = models.get_config(result["model"])
  assert result["flops_per_device"] == train_step_flops(cfg, 0.9) * batch // num_devices
  assert result["num_devices"] == num_devices and result["batch"] == batch
  assert result["compile_s"] >= 0 and result["versions"]["jax"]


def test_plan_gpu_host_on_simulated_devices(fast_compiles):
  result = memory_plan.plan("mae_vit_tiny", "8xH100", batch=32, mesh="2,2,2", accum_steps=2)
  _check_fields(result, batch=32, num_devices=8)
  assert result["mesh"] == {"data": 2, "fsdp": 2, "model": 2}
  assert result["micro_batch_per_device"] == 32 // 2 // 4
  assert result["hbm_bytes_per_device"] == 80 * 2 ** 30 and result["fits"]
  assert result["platform"] == "gpu" and result["attention_impl"] == "xla"   # cuDNN does not compile for the CPU
  assert "approximates" in result["memory_analysis"]


def test_targets():
  assert memory_plan.resolve_target("v5e-64").topology == "v5e:8x8"
  v4 = memory_plan.resolve_target("v4-32")             # 32 TensorCores = 16 megacore chips
  assert (v4.topology, v4.num_devices, v4.chip_config) == ("v4:2x2x4", 16, "megacore")
  v5p = memory_plan.resolve_target("v5p-128")
  assert (v5p.topology, v5p.num_devices, v5p.hbm_bytes) == ("v5:4x4x4", 64, 95 * 2 ** 30)
  assert memory_plan.resolve_target("cpu-8").num_devices == 8
  for name, size in (("B", "base"), ("L", "large"), ("H", "huge")):
    assert memory_plan.model_name("pretrain", name) == (f"mae_vit_{size}_patch8_128", name)
    assert memory_plan.model_name("pretrain", f"mae_vit_{size}_patch8_128")[1] == name   # its plans apply
  headline = memory_plan.plan_for("H", "v5e-64")        # docs/scaling.md: H at 4096 on 64 v5e chips
  assert (headline["batch"], headline["mesh"], headline["accum_steps"]) == (4096, (1, 64, 1), 2)


def test_compiler_out_of_memory_messages():
  gib = 2 ** 30
  assert memory_plan._oom_bytes("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                                "temporaries (42.99G) exceeds available HBM (30.75G).") == (int(42.99 * gib),
                                                                                           int(30.75 * gib))
  assert memory_plan._oom_bytes("Ran out of memory in memory space hbm. Used 20.5G of 15.75G hbm.") == (
      int(20.5 * gib), int(15.75 * gib))
  assert memory_plan._oom_bytes("INTERNAL: something else") is None


def test_bad_requests():
  with pytest.raises(memory_plan.PlanError, match="--batch=30: must divide by"):
    memory_plan.plan("mae_vit_tiny", "cpu-8", batch=30, mesh="1,8,1")
  with pytest.raises(memory_plan.PlanError, match="--mesh=3,-1,1"):
    memory_plan.plan("mae_vit_tiny", "cpu-8", batch=32, mesh="3,-1,1")
  with pytest.raises(memory_plan.PlanError, match="--model=mae_vit_nope: unknown"):
    memory_plan.plan("mae_vit_nope", "cpu-8", batch=32)
  # The script itself: one line on stderr, exit status 2, no traceback (fails before JAX is imported).
  run = subprocess.run([sys.executable, SCRIPT, "--model", "B", "--topology", "v9-8"], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "SPECTRALGPT_JAX_FAST_RUNTIME": "0"})
  assert run.returncode == 2 and run.stdout == ""
  assert run.stderr.strip().startswith("memory_plan: --topology=v9-8: unknown") and len(run.stderr.splitlines()) == 1


@pytest.mark.skipif(HAS_LIBTPU, reason="libtpu is installed")
def test_tpu_without_libtpu():
  with pytest.raises(memory_plan.PlanError, match=r'pip install -e "\.\[tpu\]"'):
    memory_plan.plan("mae_vit_tiny", "v5e-4", batch=8)


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (pip install -e '.[tpu]'); the CI venv has none")
def test_tpu_topology_compile():
  result = memory_plan.plan("mae_vit_tiny", "v5e-4", batch=16)
  _check_fields(result, batch=16, num_devices=4)
  assert result["platform"] == "tpu" and result["libtpu_topology"] == "v5e:2x2" and result["fits"]
  assert result["attention_impl"] == "pallas" and result["versions"]["libtpu"]
