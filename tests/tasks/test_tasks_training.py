"""Every downstream task through the one loop: a few steps on real demo pixels, the evaluation outputs outside
checks rely on, init_from from every source format, exact resume, strictness and one-line errors."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from spectralgpt_jax import export, models
from spectralgpt_jax.interop import CheckpointMismatchError
from spectralgpt_jax.train import config_checks, loop, metrics

import tasks_testlib as tl

TASKS = ("classification", "multilabel", "segmentation", "change_detection")
METRIC_KEYS = {"classification": {"top1", "top5"}, "multilabel": {"macro_map", "micro_map"},
               "segmentation": {"oa", "miou", "iou"}, "change_detection": {"precision", "recall", "f1", "oa"}}


class _Runs(dict):
  """One finished tiny run per task (6 steps, final evaluation, export), made when a test first asks for it: each
  pytest-xdist worker runs only the tasks its own tests read."""

  def __init__(self, tmp_path_factory):
    super().__init__()
    self._tmp = tmp_path_factory

  def __missing__(self, kind):
    workdir = self._tmp.mktemp(kind)
    self[kind] = (workdir, loop.run(tl.tiny(kind), str(workdir)))
    return self[kind]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  return _Runs(tmp_path_factory)


@pytest.mark.parametrize("kind", TASKS)
def test_task_trains_evaluates_and_exports(runs, kind):
  workdir, summary = runs[kind]
  assert summary["final_step"] == 6 and summary["task"] == ("classification" if kind == "multilabel" else kind)
  rows = metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  losses = [rows[s]["loss"] for s in sorted(rows)]
  assert all(np.isfinite(losses)) and np.mean(losses[-2:]) < np.mean(losses[:2])

  result = json.loads((workdir / "eval" / "metrics.json").read_text())
  assert METRIC_KEYS[kind] <= set(result) and {"split", "num_examples"} <= set(result)
  for key in METRIC_KEYS[kind] - {"iou"}:
    assert 0.0 <= result[key] <= 1.0, key
  assert result["split"] == {"segmentation": "test", "change_detection": "test", "multilabel": "test"}.get(kind,
                                                                                                         "val")
  predictions = np.load(workdir / "eval" / "predictions.npz")
  names = json.loads((workdir / "export" / "metadata.json").read_text())["class_names"]
  if kind in ("classification", "multilabel"):
    n = result["num_examples"]
    assert predictions["id"].shape == (n,) and len(set(predictions["id"])) == n       # every example once
    assert predictions["scores"].shape == (n, len(names))
    assert predictions["labels"].shape == ((n, len(names)) if kind == "multilabel" else (n,))
  else:
    cm = predictions["confusion"]
    assert cm.shape == (len(names), len(names)) and cm.sum() == result["num_pixels"]
  per_class = json.loads((workdir / "eval" / "per_class.json").read_text())
  assert [row["class"] for row in per_class] == names
  with Image.open(workdir / "eval" / "confusion_matrix.png") as im:
    assert im.size[0] > 100 and im.size[1] > 100
  meta = json.loads((workdir / "export" / "metadata.json").read_text())
  assert meta["task"] == summary["task"] and meta["normalization"]["name"]
  model, _ = export.load(workdir / "export")
  assert models.count_params(model) == meta["param_count"]
  # the export records the final evaluation and the recipe, and its model card shows them
  assert meta["evaluation"]["split"] == result["split"] and meta["evaluation"]["step"] == 6
  for key in METRIC_KEYS[kind] - {"iou"}:
    assert meta["evaluation"]["metrics"][key] == result[key], key
  assert meta["training"]["steps"] == 6 and meta["training"]["optimizer"].startswith("AdamW, peak lr")
  card = (workdir / "export" / "MODEL_CARD.md").read_text()
  for key in METRIC_KEYS[kind] - {"iou"}:
    assert f"| {key} | {result[key]:.4g} |" in card, key
  assert f"| bands, in input order | {', '.join(meta['bands'])} |" in card and ", ".join(names) in card


def test_rerun_of_a_finished_run_re_exports_with_its_evaluation(runs):
  workdir, _ = runs["classification"]
  card = workdir / "export" / "MODEL_CARD.md"
  card.write_text("stale")
  before = json.loads((workdir / "export" / "metadata.json").read_text())
  summary = loop.run(tl.tiny("classification"), str(workdir))
  after = json.loads((workdir / "export" / "metadata.json").read_text())
  assert summary["final_step"] == 6 and after["evaluation"] == before["evaluation"] and after["evaluation"]
  assert "| top1 |" in card.read_text()


def test_dense_evaluation_counts_every_scene_pixel_once(runs):
  from spectralgpt_jax.data import pipeline
  for kind in ("segmentation", "change_detection"):
    workdir, _ = runs[kind]
    result = json.loads((workdir / "eval" / "metrics.json").read_text())
    source, _ = pipeline.make_source(tl.tiny(kind).data, "test", train=False)
    assert result["num_pixels"] == sum(h * w for h, w in source.shapes)
    assert result["num_examples"] == len(source.shapes)


def test_eval_mode_reproduces_the_final_evaluation_from_run_and_export_dirs(runs, tmp_path):
  workdir, _ = runs["classification"]
  trained = json.loads((workdir / "eval" / "metrics.json").read_text())
  for source in (str(workdir), str(workdir / "export")):
    out = tmp_path / os.path.basename(source)
    summary = loop.run(tl.tiny("classification", mode="eval", init_from=source), str(out))
    got = json.loads((out / "eval" / "metrics.json").read_text())
    assert summary["mode"] == "eval" and got["checkpoint"] == source
    for key in ("top1", "top5", "loss", "num_examples"):
      np.testing.assert_allclose(got[key], trained[key], rtol=1e-6, err_msg=key)


def test_eval_mode_refuses_a_checkpoint_without_the_tasks_head(tmp_path):
  mae = models.build("mae_vit_tiny", img_size=32)
  export.save(tmp_path / "mae", mae, export.make_metadata("mae_vit_tiny", mae.cfg))
  with pytest.raises(CheckpointMismatchError, match=r"mode=eval: .* does not hold a trained classification model: 2 "
                     r"parameters would be random"):
    loop.run(tl.tiny("classification", mode="eval", init_from=str(tmp_path / "mae")), str(tmp_path / "W"))


def test_init_from_official_pth_reports_fresh_head_and_ignored_decoder(tmp_path, caplog):
  pth = os.path.join(tl.ROOT, "tests", "data", "reference", "mae_tiny.pth")   # official {'model': sd} layout
  c = tl.tiny("classification", init_from=pth, total_steps=2, eval_every=0, **{"model.img_size": 16,
                                                                                "data.image_size": 16})
  with caplog.at_level("INFO"):
    loop.run(c, str(tmp_path))
  text = caplog.text
  assert "initialised (2): head/bias, head/kernel" in text.replace("head/kernel, head/bias", "head/bias, head/kernel")
  assert "ignored" in text and "decoder" in text


def test_init_from_pretraining_export_copies_the_encoder(tmp_path):
  mae = tl.mae_export(tmp_path / "pre")
  c = tl.tiny("classification", init_from=str(tmp_path / "pre"), total_steps=2, eval_every=0,
              **{"optimizer.lr": 1e-12})
  loop.run(c, str(tmp_path / "run"))
  vit, _ = export.load(tmp_path / "run" / "export")
  np.testing.assert_allclose(np.asarray(vit.encoder.blocks[1].mlp.fc1.kernel[...]),
                             np.asarray(mae.encoder.blocks[1].mlp.fc1.kernel[...]), atol=1e-8)
  np.testing.assert_allclose(np.asarray(vit.encoder.pos_embed.spatial[...]),
                             np.asarray(mae.encoder.pos_embed.spatial[...]), atol=1e-8)


def test_strict_init_from_a_deeper_model_is_one_clear_error(tmp_path):
  deep = models.build("mae_vit_tiny", img_size=32, depth=4)
  export.save(tmp_path / "deep", deep, export.make_metadata("mae_vit_tiny", deep.cfg))
  c = tl.tiny("classification", init_from=str(tmp_path / "deep"), total_steps=2, eval_every=0)
  with pytest.raises(CheckpointMismatchError) as error:
    loop.run(c, str(tmp_path / "strict"))
  message = str(error.value)
  assert "\n" not in message and "encoder/blocks/2" in message and "encoder/blocks/3" in message
  lenient = tl.tiny("classification", init_from=str(tmp_path / "deep"), total_steps=2, eval_every=0,
                    strict_init=False)
  assert loop.run(lenient, str(tmp_path / "lenient"))["final_step"] == 2


def test_resume_of_a_finetuning_run_is_exact(runs, tmp_path):
  """Mixup/cutmix randomness lives in the grain pipeline, whose position is checkpointed with the state."""
  reference, _ = runs["classification"]
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  shutil.rmtree(workdir / "checkpoints" / "6")                   # as if killed after the step-3 checkpoint
  shutil.rmtree(workdir / "eval")
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  (workdir / "metrics.jsonl").write_text("".join(l + "\n" for l in lines if json.loads(l)["step"] <= 3))
  summary = loop.run(tl.tiny("classification"), str(workdir))
  assert summary["start_step"] == 3 and summary["final_step"] == 6
  got = metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  want = metrics.read_metrics(os.path.join(reference, "metrics.jsonl"))
  for step in (4, 5, 6):
    np.testing.assert_allclose(got[step]["loss"], want[step]["loss"], rtol=1e-6, err_msg=str(step))
  assert json.loads((workdir / "eval" / "metrics.json").read_text())["top1"] == pytest.approx(
      json.loads((reference / "eval" / "metrics.json").read_text())["top1"])


def test_resume_with_another_model_is_one_clear_error(runs, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(runs["classification"][0], workdir)
  with pytest.raises(config_checks.ConfigError, match=r"config\.model\.embed_dim=64 \(the run was started with 32\)"):
    loop.run(tl.tiny("classification", total_steps=8, **{"model.embed_dim": 64}), str(workdir))
  with pytest.raises(config_checks.ConfigError, match=r"checkpoint 6 does not fit the configured model"):
    loop.run(tl.tiny("classification", total_steps=8, strict_resume=False, **{"model.embed_dim": 64}),
             str(workdir))
  # A longer schedule is not another run: it resumes.
  assert loop.run(tl.tiny("classification", total_steps=7), str(workdir))["start_step"] == 6


def _main(*args, cwd=tl.ROOT):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, os.path.join(tl.ROOT, "main.py"), *args], capture_output=True, text=True,
                        env=env, cwd=cwd, timeout=300)


def test_cli_eval_command_writes_the_contract_files(runs, tmp_path):
  workdir, _ = runs["change_detection"]
  out = tmp_path / "W"
  small = ["--config.model.img_size=32", "--config.model.embed_dim=32", "--config.model.depth=2",
           "--config.model.num_heads=2", "--config.model.neck_channels=(16,16,32,64)",
           "--config.model.fpn_channels=16", "--config.data.image_size=32", "--config.data.eval_window_overlap=0.0",
           "--config.eval_batch_size=32", "--config.compute_dtype=float32"]
  done = _main("--config=configs/finetune_oscd.py:demo", "--config.mode=eval", f"--config.init_from={workdir}",
               f"--workdir={out}", *small)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((out / "eval" / "metrics.json").read_text())
  assert {"precision", "recall", "f1", "oa", "split", "num_examples"} <= set(result)
  assert sorted(os.listdir(out / "eval")) == ["config.json", "confusion_matrix.png", "metrics.json",
                                              "per_class.json", "predictions.npz"]
  assert not (out / "config.json").exists()               # an evaluation keeps everything under W/eval
  wide = models.build("mae_vit_tiny", img_size=32, embed_dim=48)        # another width: cannot be loaded
  export.save(tmp_path / "wide", wide, export.make_metadata("mae_vit_tiny", wide.cfg))
  bad = _main("--config=configs/finetune_oscd.py:demo", "--config.mode=eval",
              f"--config.init_from={tmp_path / 'wide'}", f"--workdir={tmp_path / 'bad'}", *small)
  assert bad.returncode != 0 and "Traceback" not in bad.stderr
  assert "Checkpoint error:" in bad.stderr and len(bad.stderr.strip().splitlines()[-1]) > 20


def test_eval_of_an_official_format_oscd_pth_equals_its_export(tmp_path):
  """The released OSCD file is a raw DataParallel state dict (`module.` keys): evaluate such a file directly and
  through its converted export; the metrics and confusion matrices agree."""
  sys.path.insert(0, os.path.join(tl.ROOT, "tests"))
  from torch_zip import write_pth
  from spectralgpt_jax.interop import keymap
  cd = models.build("cd_vit_tiny", img_size=32, embed_dim=32, depth=2, num_heads=2, neck_channels=(16, 16, 32, 64),
                    fpn_channels=16, seed=4)
  write_pth(tmp_path / "oscd.pth", {f"module.{k}": v for k, v in keymap.export_state_dict(cd).items()},
            wrap_model=False)
  export.save(tmp_path / "export", cd, export.make_metadata("cd_vit_tiny", cd.cfg))
  results = {}
  for name, source in (("pth", tmp_path / "oscd.pth"), ("export", tmp_path / "export")):
    loop.run(tl.tiny("change_detection", mode="eval", init_from=str(source)), str(tmp_path / name))
    results[name] = (json.loads((tmp_path / name / "eval" / "metrics.json").read_text()),
                     np.load(tmp_path / name / "eval" / "predictions.npz")["confusion"])
  for key in ("precision", "recall", "f1", "oa", "num_pixels"):
    assert results["pth"][0][key] == pytest.approx(results["export"][0][key]), key
  np.testing.assert_array_equal(results["pth"][1], results["export"][1])
