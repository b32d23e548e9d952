"""Evaluation covers every example exactly once, whatever the batch size and the number of processes: the data
layer pads each process's share, the loop gathers the processes' rows in global order, the evaluators drop the
padding rows and compute the metrics once over the whole split."""
import zlib

import numpy as np
import pytest

from spectralgpt_jax import tasks
from spectralgpt_jax.data import pipeline
from spectralgpt_jax.tasks import metrics

import tasks_testlib as tl


def _gathered_batches(data_cfg, global_batch: int, processes: int):
  """The global eval batches as the loop sees them after gathering: process-major concatenation of every
  process's local batch (what multihost_utils.process_allgather(tiled=True) returns)."""
  iterators = [pipeline.finetune_iterator(data_cfg, global_batch_size=global_batch, sharding=None, seed=0,
                                          train=False, process_index=p, process_count=processes)
               for p in range(processes)]
  per_process = [list(it) for it in iterators]
  assert len({len(b) for b in per_process}) == 1          # every process runs the same number of batches
  for batches in zip(*per_process):
    yield {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _fake_scores(ids: np.ndarray, num_classes: int) -> np.ndarray:
  """Deterministic per-example scores keyed by the example id (so duplicates would be detectable)."""
  out = np.stack([np.random.default_rng(zlib.crc32(str(i).encode())).random(num_classes) for i in ids])
  return out.astype(np.float32)


@pytest.mark.parametrize("kind,batch,processes", [("classification", 6, 2), ("classification", 5, 1),
                                                  ("multilabel", 9, 3)])
def test_classification_evaluation_sees_every_example_once(kind, batch, processes):
  c = tl.tiny(kind, eval_batch_size=batch)
  task = tasks.get(c)
  source, _ = pipeline.make_source(c.data, c.data.eval_split, train=False)
  evaluator = task.evaluator()
  seen = []
  label_key = pipeline.label_key(c.data)
  for b in _gathered_batches(c.data, batch, processes):
    scores = _fake_scores(b["id"], len(task.class_names()))
    evaluator.add({"loss": np.float32(0), "count": np.float32(b["valid"].sum())},
                  {"scores": scores, "labels": b[label_key], "valid": b["valid"]}, {"id": b["id"]})
    seen += list(b["id"][b["valid"]])
  ids = [str(source[i]["id"]) for i in range(len(source))]
  assert sorted(seen) == sorted(ids) and len(set(seen)) == len(source)      # exactly once
  result = evaluator.result()
  assert result["num_examples"] == len(source)
  scores = _fake_scores(np.array(ids), len(task.class_names()))
  labels = np.stack([np.asarray(source[i][label_key]) for i in range(len(source))])
  if kind == "multilabel":
    want = metrics.mean_average_precision(scores, labels)
    assert result["macro_map"] == pytest.approx(want["macro_map"])
    assert result["micro_map"] == pytest.approx(want["micro_map"])
  else:
    assert result["top1"] == pytest.approx(metrics.topk_accuracy(scores, labels, 1))


@pytest.mark.parametrize("kind,batch,processes", [("change_detection", 6, 2), ("segmentation", 9, 3)])
def test_dense_evaluation_blends_every_window_of_every_scene_once(kind, batch, processes):
  c = tl.tiny(kind, eval_batch_size=batch, **{"data.eval_window_overlap": 0.5})
  task = tasks.get(c)
  evaluator = task.evaluator()
  label_key = pipeline.label_key(c.data)
  for b in _gathered_batches(c.data, batch, processes):
    labels = b[label_key].astype(np.int64)
    logits = np.eye(len(task.class_names()), dtype=np.float32)[labels] * 4.0   # a perfect model
    evaluator.add({"loss": np.float32(0), "count": np.float32(1)},
                  {"logits": logits, "labels": b[label_key], "valid": b["valid"],
                   **{k: b[k] for k in pipeline.WINDOW_KEYS}}, {"id": b["id"]})
  result = evaluator.result()
  windows = task.eval_windows()
  assert result["num_examples"] == len(windows.shapes) and result["num_windows"] == len(windows)
  assert result["num_pixels"] == sum(h * w for h, w in windows.shapes)      # every scene pixel exactly once
  assert result["oa"] == pytest.approx(1.0)
  if kind == "change_detection":
    assert result["f1"] == pytest.approx(1.0)
  else:
    assert result["miou"] == pytest.approx(1.0)


def test_two_process_evaluation_equals_one_process(tmp_path):
  """Two real processes (2 CPU devices each, jax.distributed on localhost) evaluate a checkpoint: every process
  gathers the other's rows and ids, and process 0 writes the same metrics and predictions as one process."""
  import json
  import os
  import socket
  import subprocess
  import sys

  from spectralgpt_jax import export, models
  vit = models.build("vit_tiny", img_size=32, num_classes=5, seed=1)
  export.save(tmp_path / "ckpt", vit, export.make_metadata("vit_tiny", vit.cfg))
  overrides = {"mode": "eval", "init_from": str(tmp_path / "ckpt"), "eval_batch_size": 12}
  script = os.path.join(os.path.dirname(__file__), "run_task.py")

  def launch(workdir, env):
    return subprocess.Popen([sys.executable, script, "classification", str(workdir), json.dumps(overrides)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **env})

  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  cluster = {"SPECTRALGPT_DISTRIBUTED": "1", "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
             "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
  procs = [launch(tmp_path / "two", {**cluster, "JAX_PROCESS_ID": str(i)}) for i in range(2)]
  single = launch(tmp_path / "one", {"XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"})
  for p in procs + [single]:
    out = p.communicate(timeout=400)[0]
    assert p.returncode == 0, out[-4000:]
  two = json.loads((tmp_path / "two" / "eval" / "metrics.json").read_text())
  one = json.loads((tmp_path / "one" / "eval" / "metrics.json").read_text())
  for key in ("top1", "top5", "loss", "num_examples"):
    assert two[key] == pytest.approx(one[key], rel=1e-5), key
  a, b = np.load(tmp_path / "two" / "eval" / "predictions.npz"), np.load(tmp_path / "one" / "eval" / "predictions.npz")
  order_a, order_b = np.argsort(a["id"]), np.argsort(b["id"])
  assert list(a["id"][order_a]) == list(b["id"][order_b]) and len(set(a["id"])) == len(a["id"])
  np.testing.assert_allclose(a["scores"][order_a], b["scores"][order_b], atol=1e-5)
