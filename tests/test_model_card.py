"""Model cards: rendered from an export's metadata, written beside it, and regenerated with a separate evaluation."""
import hashlib
import json

import pytest

from spectralgpt_jax import export, model_card, models


@pytest.fixture(scope="module")
def mae_export(tmp_path_factory):
  model = models.build("mae_vit_tiny", img_size=32)
  source = tmp_path_factory.mktemp("pth") / "SpectralGPT.pth"
  source.write_bytes(b"weights")
  metadata = export.make_metadata("mae_vit_tiny", model.cfg, source=str(source),
                                  source_sha256=hashlib.sha256(b"weights").hexdigest(), task="pretrain",
                                  mask_ratio=0.9, load_report={"missing": [], "unexpected": ["x", "y"]})
  return export.save(tmp_path_factory.mktemp("export") / "mae", model, metadata), model


def test_every_export_has_a_card_that_says_what_its_metadata_says(mae_export):
  directory, model = mae_export
  meta = export.read_metadata(directory)
  card = (directory / model_card.CARD_NAME).read_text()
  cfg = model.cfg
  assert card.startswith("# Model card: `mae_vit_tiny`, spectral masked autoencoder (pretraining)")
  assert f"| parameters | {meta['param_count']:,} |" in card
  assert f"| encoder | ViT, width {cfg.embed_dim}, depth {cfg.depth}, {cfg.num_heads} heads" in card
  t, side = cfg.num_frames // cfg.t_patch_size, cfg.img_size // cfg.patch_size
  assert f"| tokens | {t} spectral groups x {side} x {side} patches = {t * side * side} |" in card
  assert f"| bands, in input order | {', '.join(meta['bands'])} |" in card
  assert "| image size | 32 px at 10 m |" in card
  assert "| normalisation | per image and band: (x - min) / (max - min + eps), eps = 1e-12 |" in card
  assert f"| source SHA-256 | `{hashlib.sha256(b'weights').hexdigest()}` |" in card
  assert "| conversion report | 0 missing, 2 unexpected |" in card
  assert "No evaluation is recorded with this export" in card
  assert "--config.init_from=THIS_DIRECTORY" in card and "--cloud_mask auto" in card
  licence = card.split("## Licence\n\n")[1]
  assert "spectralgpt_jax, Apache-2.0" in licence and "Copernicus" in licence
  assert f"- Converted from `{meta['source']}`: the terms under which those weights were published" in licence
  assert "Training data" not in licence                 # a conversion records none


def test_cards_by_task_and_normalisation():
  cfg = models.build("vit_tiny", img_size=32, num_classes=3).cfg
  meta = export.make_metadata("vit_tiny", cfg, task="classification", class_names=["a", "b", "c"],
                              normalization={"name": "zscore", "stats": "ssl4eo_s12_l2a", "missing_bands": "zero"},
                              data={"name": "bigearthnet", "train_split": "train", "eval_split": "test"},
                              evaluation={"split": "test", "step": 9, "metrics": {"macro_map": 0.51234, "loss": 2.0}})
  card = model_card.render(meta)
  assert "| classes | 3 (multi-label, sigmoid): a, b, c |" in card
  assert "| normalisation | per band (x - mean) / std, statistics `ssl4eo_s12_l2a` |" in card
  assert "| missing bands | filled by `zero`, as in training |" in card
  assert "BigEarthNet-S2 v1.0: 590,326 Sentinel-2 L2A patches" in card
  assert "| splits | trained on `train`, evaluated on `test` |" in card
  assert "split `test`, step 9" in card and "| macro_map | 0.5123 |" in card and "| loss | 2 |" in card
  assert "out of distribution" in card and "Trained on `bigearthnet` only" in card
  eurosat = model_card.render({**meta, "data": {"name": "eurosat"}})
  assert "| classes | 3: a, b, c |" in eurosat
  demo = model_card.render({**meta, "data": {"name": "eurosat", "demo": True}})
  assert "| training data | `eurosat` demo data: the embedded demo scene" in demo
  assert "- A demo run: a few steps on the embedded demo scene. Do not use these weights" in demo
  assert "Trained on `eurosat` only" not in demo and "EuroSAT-MS" not in demo
  assert "- Training data `eurosat` (demo stand-in): CC0" in demo and ": MIT." in eurosat
  tuned = model_card.render({**meta, "data": {"name": "segmunich"}, "training": {"init_from": "/w/SpectralGPT.pth"}})
  assert "- Initialised from `/w/SpectralGPT.pth`: the terms under which those weights" in tuned
  assert "- Training data `segmunich`: its licence is not recorded here" in tuned


def test_the_command_adds_a_separate_evaluation(mae_export, tmp_path, capsys):
  directory, _ = mae_export
  metrics = tmp_path / "metrics.json"
  metrics.write_text(json.dumps({"loss": 0.25, "split": "val", "num_examples": 1234, "checkpoint": str(directory),
                                 "per_class": [0.1, 0.2]}))
  assert model_card.main([str(directory), "--metrics", str(metrics)]) == 0
  card = (directory / model_card.CARD_NAME).read_text()
  assert "split `val`, 1,234 examples" in card and "| loss | 0.25 |" in card and "per_class" not in card
  assert export.read_metadata(directory)["format"] == export.FORMAT      # metadata.json is left as it was
  bad = tmp_path / "bad.json"
  bad.write_text("[1, 2]")
  assert model_card.main([str(directory), "--metrics", str(bad)]) == 1
  assert capsys.readouterr().err.strip().endswith("bad.json: not a JSON object of metrics")
  assert model_card.main([str(tmp_path / "nowhere")]) == 1
  assert "no metadata.json" in capsys.readouterr().err


def test_the_documented_module_command_runs(mae_export):
  """`python -m spectralgpt_jax.model_card DIR` as the docs give it: run as __main__, every helper the card needs
  must be defined before the module's last line calls main()."""
  import subprocess
  import sys
  directory, _ = mae_export
  result = subprocess.run([sys.executable, "-m", "spectralgpt_jax.model_card", str(directory)],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "## Licence" in (directory / model_card.CARD_NAME).read_text()
