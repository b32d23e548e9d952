"""End-to-end runs of loop.run: kill-and-resume, SIGTERM save, two real processes, run artefacts."""
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from spectralgpt_jax import models
from spectralgpt_jax.models.flops import train_step_flops
from spectralgpt_jax.train import loop, metrics

import train_testlib as tl

HERE = os.path.dirname(os.path.abspath(__file__))
# One configuration for every run in this file, so the uninterrupted in-process run is the reference for all.
RUN = {"total_steps": 6, "batch_size": 8, "eval_batch_size": 8, "checkpoint_every": 2, "eval_every": 3,
       "image_every": 3, "log_every": 1, "data.as_if_processes": 2,
       "peak_tflops": 1e-3}   # a made-up per-device peak (1 GFLOP/s): CPUs have no table entry, MFU needs one
LOSS_KEYS = ("loss", "loss_masked", "loss_spectral", "grad_norm", "lr")


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  """A persistent compilation cache shared by this file's subprocesses: the same program compiles once."""
  return {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _launch(workdir, overrides, env=None):
  return subprocess.Popen([sys.executable, os.path.join(HERE, "run_tiny.py"), str(workdir), json.dumps(overrides)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                          text=True)


def _wait_for(path, proc, timeout=240):
  start = time.time()
  while not os.path.exists(path):
    if proc.poll() is not None:
      raise AssertionError(f"run ended before {path} appeared:\n{proc.stdout.read()[-4000:]}")
    if time.time() - start > timeout:
      proc.kill()
      raise AssertionError(f"timed out waiting for {path}")
    time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  summary = loop.run(tl.tiny_config(**RUN), str(workdir), make_iterator=tl.make_iterator)
  assert summary["final_step"] == 6 and summary["start_step"] == 0
  return workdir


def _assert_same_rows(got_dir, ref_dir, steps, kind="train", rtol=1e-6):
  got = metrics.read_metrics(os.path.join(got_dir, "metrics.jsonl"), kind)
  ref = metrics.read_metrics(os.path.join(ref_dir, "metrics.jsonl"), kind)
  for step in steps:
    keys = LOSS_KEYS if kind == "train" else ("val_loss", "val_loss_masked", "val_loss_spectral")
    for key in keys:
      np.testing.assert_allclose(got[step][key], ref[step][key], rtol=rtol, err_msg=f"step {step} {key}")


def test_run_writes_metrics_images_tensorboard_export(reference):
  rows = metrics.read_metrics(os.path.join(reference, "metrics.jsonl"))
  assert sorted(rows) == [1, 2, 3, 4, 5, 6]
  for row in rows.values():
    assert {"step", "loss", "loss_masked", "loss_spectral", "lr", "grad_norm", "img_per_s", "step_s"} <= set(row)
    np.testing.assert_allclose(row["loss"], row["loss_masked"] + row["loss_spectral"], rtol=1e-5)
    # Throughput from the one analytic FLOP count (16 tokens per tiny image, 8 devices, batch 8).
    cfg = models.get_config(tl.TINY_MODEL)
    np.testing.assert_allclose(row["tokens_per_s"], row["img_per_s"] * cfg.num_tokens, rtol=1e-6)
    flops = train_step_flops(cfg, mask_ratio=0.75) * RUN["batch_size"]
    np.testing.assert_allclose(row["mfu"], flops / row["step_s"] / 8 / 1e12 / RUN["peak_tflops"], rtol=1e-6)
  assert rows[6]["loss"] < rows[1]["loss"]
  val = metrics.read_metrics(os.path.join(reference, "metrics.jsonl"), "val")
  assert sorted(val) == [3, 6] and val[6]["val_loss"] < val[3]["val_loss"]
  assert sorted(os.listdir(reference / "images")) == ["recon_0000003.png", "recon_0000006.png"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(reference / "tensorboard"))
  meta = json.load(open(reference / "export" / "metadata.json"))
  assert meta["image_size"] == 16 and meta["step"] == 6 and len(meta["bands"]) == 12
  assert meta["model_config"]["embed_dim"] == 32
  assert sorted(os.listdir(reference / "checkpoints")) == ["4", "6"]      # keep_checkpoints=2


def test_sigkill_then_sigterm_then_resume_matches_uninterrupted_run(reference, tmp_path, compile_cache):
  slow = {**RUN, "data.seconds_per_example": 0.06}      # ~0.5 s per step: room to interrupt between checkpoints
  # 1. SIGKILL right after the step-2 checkpoint is committed (orbax renames the step directory on commit).
  proc = _launch(tmp_path, slow, compile_cache)
  _wait_for(tmp_path / "checkpoints" / "2", proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  # 2. Rerun: it resumes; SIGTERM once it has logged a step past the restored one -> checkpoint + clean exit.
  out_path = tmp_path / "metrics.jsonl"
  lines_before = len(out_path.read_text().splitlines()) if out_path.exists() else 0
  proc = _launch(tmp_path, slow, compile_cache)
  start = time.time()
  while proc.poll() is None and time.time() - start < 240:
    new_lines = out_path.read_text().splitlines()[lines_before:]
    if any(json.loads(line)["step"] >= 3 for line in new_lines):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=240)[0]
  assert proc.returncode == 0, output[-4000:]
  summary = json.loads(output.split("SUMMARY ")[1].splitlines()[0])
  assert summary["start_step"] == 2
  if summary["preempted"]:        # (the run may legitimately finish before the signal lands)
    assert summary["final_step"] < 6
    assert str(summary["final_step"]) in os.listdir(tmp_path / "checkpoints")
  # 3. Rerun again: resumes from the SIGTERM checkpoint (or finds the run complete) and finishes.
  proc = _launch(tmp_path, RUN, compile_cache)
  output = proc.communicate(timeout=240)[0]
  assert proc.returncode == 0, output[-4000:]
  final = json.loads(output.split("SUMMARY ")[1].splitlines()[0])
  assert final["start_step"] == summary["final_step"] and final["final_step"] == 6
  _assert_same_rows(tmp_path, reference, range(3, 7))
  _assert_same_rows(tmp_path, reference, [6], kind="val")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_with_jax_distributed(reference, tmp_path):
  """Two real processes x 2 CPU devices, localhost coordinator, 2x2 (data x fsdp) mesh: same losses as one process."""
  env = {"SPECTRALGPT_DISTRIBUTED": "1", "JAX_COORDINATOR_ADDRESS": f"localhost:{_free_port()}",
         "JAX_NUM_PROCESSES": "2", "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
  overrides = {**RUN, "mesh.data": 2, "mesh.fsdp": 2}
  procs = [_launch(tmp_path, overrides, env={**env, "JAX_PROCESS_ID": str(i)}) for i in range(2)]
  outputs = [p.communicate(timeout=280)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  summaries = [json.loads(out.split("SUMMARY ")[1].splitlines()[0]) for out in outputs]
  assert sorted((s["process_index"], s["process_count"]) for s in summaries) == [(0, 2), (1, 2)]
  # Each process feeds its own half of every batch; the reference orders its rows the same way (as_if_processes).
  _assert_same_rows(tmp_path, reference, range(1, 7), rtol=2e-5)
  val = metrics.read_metrics(os.path.join(tmp_path, "metrics.jsonl"), "val")   # eval rows are ordered per process
  assert sorted(val) == [3, 6] and all(np.isfinite(v["val_loss"]) for v in val.values())
  assert os.path.exists(tmp_path / "export" / "metadata.json")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "6"]


def test_resume_with_another_worker_layout_continues_the_data_stream(reference, tmp_path, caplog):
  """grain's saved iterator position only fits the process/worker layout that wrote it. Resuming with worker
  processes from an in-process run's checkpoint falls back to restarting the stream at the step's global batch,
  which sees the same examples: the losses equal the uninterrupted run's."""
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  shutil.rmtree(workdir / "checkpoints" / "6")                     # as if killed after the step-4 checkpoint
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  (workdir / "metrics.jsonl").write_text("".join(l + "\n" for l in lines if json.loads(l)["step"] <= 4))
  with caplog.at_level(logging.WARNING):
    summary = loop.run(tl.tiny_config(**RUN, **{"data.workers": 1}), str(workdir), make_iterator=tl.make_iterator)
  assert summary["start_step"] == 4 and summary["final_step"] == 6
  assert "restarting the data stream at global batch 4" in caplog.text
  _assert_same_rows(workdir, reference, steps=(5, 6))
  _assert_same_rows(workdir, reference, steps=(6,), kind="val")
