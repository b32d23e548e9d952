"""The one rule table (`interop.transfer`) case by case, and seg / cd models through the real `.pth` path.

There is no reference output of a whole seg or cd model, so the full-model checks compose: a reference-layout
`.pth` holds an encoder (the MAE fixture's, or a width-48 random one) plus the downstream fixture's head; the
encoder must give the features an independently loaded encoder gives, and the head the fixture's outputs.
"""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spectralgpt_jax import export, models
from spectralgpt_jax.interop import (CheckpointMismatchError, convert, infer_kind, keymap, load_pth,
                                     load_reference_checkpoint, read_reference_params)
from spectralgpt_jax.interop.transfer import transfer
from torch_zip import write_pth

DATA = Path(__file__).parent / "data"
REF, DOWN = DATA / "reference", DATA / "reference_downstream"
FIXTURE_HEAD = dict(embed_dim=48, img_size=128, neck_channels=(32, 32, 64, 128), fpn_channels=16)
OUTPUTS = ("merged", "m0", "m1", "m2", "m3", "fpn", "logits")


@nnx.jit(static_argnames=("method", "intermediates"))
def run(model, *inputs, method="__call__", intermediates=None):
  extra = {} if intermediates is None else {"intermediates": intermediates}
  return getattr(model, method)(*inputs, **extra)


def shapes(arch, **overrides):
  return keymap.param_shapes(nnx.eval_shape(lambda: models.build(arch, **overrides)))


def random_params(arch, seed=0, **overrides):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes(arch, **overrides).items()}


def mae_fixture():
  params, unmapped = keymap.from_reference(dict(np.load(REF / "mae_tiny_state_dict.npz")))
  assert not unmapped
  return params


def run_transfer(source, arch, strict=True, **overrides):
  cfg = models.get_config(arch, **overrides)
  return transfer(source, shapes(arch, **overrides), cfg, source_name="src", arch=arch, strict=strict)


def head_names(names):
  return sorted(n for n in names if not n.startswith("encoder/"))


# --- the rule table ---------------------------------------------------------------------------------------------

def test_infer_kind():
  assert infer_kind(mae_fixture()) == "mae"
  assert infer_kind(random_params("vit_tiny")) == "vit"
  assert infer_kind(random_params("seg_vit_tiny")) == infer_kind(random_params("cd_vit_tiny")) == "dense"
  assert infer_kind({"encoder/norm/scale": 0, "unmapped/fc_norm.weight": 0}) == "encoder"
  assert infer_kind({"unmapped/x": 0}) == "unknown"


@pytest.mark.parametrize("arch", ["vit_tiny", "seg_vit_tiny", "cd_vit_tiny"])
def test_mae_into_a_task_model_gives_a_fresh_head_and_ignores_the_decoder(arch):
  source = mae_fixture()
  values, report = run_transfer(source, arch, img_size=16)
  target = shapes(arch, img_size=16)
  assert report.ok and report.source_kind == "mae"
  assert sorted(report.initialised) == head_names(target)
  assert set(report.rules[n] for n in report.initialised) == {"fresh_head"}
  assert sorted(report.ignored) == sorted(n for n in source if n.startswith("decoder/"))
  assert sorted(report.loaded) == sorted(values) == sorted(n for n in target if n.startswith("encoder/"))
  np.testing.assert_array_equal(values["encoder/blocks/1/mlp/fc2/kernel"], source["encoder/blocks/1/mlp/fc2/kernel"])
  json.dumps(report.to_dict())


def test_deeper_source_is_a_one_line_grouped_error_and_non_strict_loads_what_fits():
  source = random_params("vit_tiny", depth=4)
  with pytest.raises(CheckpointMismatchError) as err:
    run_transfer(source, "vit_tiny")
  message = str(err.value)
  assert message == ("src does not fit vit_tiny: 32 unexpected (encoder/blocks/2/* (16 params), "
                     "encoder/blocks/3/* (16 params))")
  values, report = run_transfer(source, "vit_tiny", strict=False)
  assert not report.ok and len(report.unexpected) == 32 and not report.missing
  assert sorted(values) == sorted(report.loaded) == sorted(shapes("vit_tiny"))
  assert report.error_line() == message


def test_mis_shaped_and_missing_params_are_errors():
  source = random_params("vit_tiny")
  source["encoder/blocks/0/mlp/fc1/kernel"] = np.zeros((32, 64), np.float32)
  del source["encoder/norm/bias"], source["head/bias"]
  with pytest.raises(CheckpointMismatchError) as err:
    run_transfer(source, "vit_tiny")
  assert str(err.value) == ("src does not fit vit_tiny: 2 missing (encoder/norm/bias, head/bias); 1 mismatched "
                            "(encoder/blocks/0/mlp/fc1/kernel: checkpoint (32, 64) vs model (32, 128))")


@pytest.mark.parametrize("mode", ["reinit", "interpolate"])
def test_spatial_pos_embed_of_another_image_size(mode):
  """96 -> 128 px: a 12x12 spatial grid into a 16x16 model (encoder and decoder)."""
  source = random_params("mae_vit_tiny", img_size=96)
  source["encoder/pos_embed/spatial"] = np.full((1, 144, 32), 0.5, np.float32)
  values, report = run_transfer(source, "mae_vit_tiny", img_size=128, pos_embed_resize=mode)
  resized = ["decoder/pos_embed/spatial", "encoder/pos_embed/spatial"]
  assert report.ok and report.shapes["encoder/pos_embed/spatial"] == ((1, 144, 32), (1, 256, 32))
  if mode == "reinit":
    assert sorted(report.initialised) == resized and not report.interpolated
    assert not set(resized) & set(values)
  else:
    assert sorted(report.interpolated) == resized and not report.initialised
    assert values["encoder/pos_embed/spatial"].shape == (1, 256, 32)
    np.testing.assert_allclose(values["encoder/pos_embed/spatial"], 0.5, atol=1e-6)
  source["encoder/pos_embed/spatial"] = np.zeros((1, 150, 32), np.float32)   # not a square grid
  _, report = run_transfer(source, "mae_vit_tiny", strict=False, img_size=128, pos_embed_resize=mode)
  assert report.mismatched == ["encoder/pos_embed/spatial"]


def test_another_class_count_reinitialises_the_classifier_only():
  source = random_params("seg_vit_tiny")   # 13 classes
  values, report = run_transfer(source, "seg_vit_tiny", num_classes=5)
  assert report.ok and sorted(report.initialised) == ["classifier/bias", "classifier/kernel"]
  assert report.rules["classifier/kernel"] == "fresh_head_reshaped"
  assert len(report.loaded) == len(source) - 2 and not report.ignored


def test_classifier_into_segmentation_ignores_its_head():
  values, report = run_transfer(random_params("vit_tiny"), "seg_vit_tiny", img_size=16)
  assert report.ok and sorted(report.ignored) == ["head/bias", "head/kernel"]
  assert sorted(report.initialised) == head_names(shapes("seg_vit_tiny", img_size=16))


def test_joint_pos_embed_and_same_kind_rules():
  _, report = run_transfer(mae_fixture(), "vit_tiny", reference_pos_embed=True)
  assert "encoder/pos_embed/embedding" in report.initialised
  assert {"encoder/pos_embed/spatial", "encoder/pos_embed/spectral"} <= set(report.ignored)
  # A source of the same kind without a head is incomplete, not a fresh start.
  source = {k: v for k, v in random_params("seg_vit_tiny").items() if not k.startswith("classifier/")}
  _, report = run_transfer(source, "seg_vit_tiny", strict=False)
  assert sorted(report.missing) == ["classifier/bias", "classifier/kernel"]
  # A raw reference key with no counterpart is unexpected even from another kind of model.
  _, report = run_transfer({**mae_fixture(), "unmapped/fc_norm.weight": np.ones(32)}, "vit_tiny", strict=False)
  assert report.unexpected == ["unmapped/fc_norm.weight"]


# --- seg / cd through the real .pth path ------------------------------------------------------------------------

def fixture_head_state_dict():
  return dict(load_pth(DOWN / "head.pth")["model"])


def width48_encoder_state_dict(seed=0):
  """A random encoder (D 48, 2 blocks, 128 px) in the reference layout, LayerNorm affine moved off 1/0."""
  encoder = models.build("vit_tiny", embed_dim=48, img_size=128, seed=seed)
  rng = np.random.default_rng(seed)
  return {k: v + rng.normal(0, 0.05, v.shape).astype(np.float32)
          for k, v in keymap.export_state_dict(encoder).items() if not k.startswith("head.")}


@pytest.fixture(scope="module")
def width48_encoder():
  """The encoder-only file loaded into a classifier: the independent path the seg/cd encoders must agree with."""
  return width48_encoder_state_dict()


@pytest.mark.parametrize("arch,data_parallel", [("seg_vit_tiny", False), ("cd_vit_tiny", True)])
def test_full_model_parity_through_pth(tmp_path, width48_encoder, arch, data_parallel):
  sd = {**width48_encoder, **fixture_head_state_dict()}
  path = tmp_path / "model.pth"
  if data_parallel:   # the OSCD file: a raw DataParallel state dict
    write_pth(path, {f"module.{k}": v for k, v in sd.items()}, wrap_model=False)
  else:               # the SegMunich file: {'model': state_dict}
    write_pth(path, sd)
  model, report = load_reference_checkpoint(path, arch=arch, embed_dim=48, img_size=128)
  assert report.ok and len(report.loaded) == len(sd) and not (report.initialised or report.ignored)
  assert model.cfg.num_classes == 5   # taken from cls_seg

  encoder_path = tmp_path / "encoder.pth"
  write_pth(encoder_path, width48_encoder)
  vit, vit_report = load_reference_checkpoint(encoder_path, arch="vit_tiny", embed_dim=48, img_size=128)
  assert vit_report.ok and sorted(vit_report.initialised) == ["head.bias", "head.weight"]
  x1, x2 = (jax.random.uniform(jax.random.key(i), (1, 128, 128, 12)) for i in (0, 1))
  features = run(vit.encoder, x1, method="features")
  np.testing.assert_allclose(run(model.encoder, x1, method="features"), features, rtol=0, atol=1e-6)

  io = np.load(DOWN / "head_io.npz")
  out = run(model, jnp.asarray(io["tokens"]), method="decode", intermediates=True)
  for key in OUTPUTS:
    np.testing.assert_allclose(out[key], io[key], rtol=0, atol=1e-5, err_msg=key)

  fc_w, fc_b = sd["fc.0.weight"][0], sd["fc.0.bias"][0]
  merge = lambda f: np.einsum("nthwd,t->nhwd", np.asarray(f).reshape(1, 4, 16, 16, 48), fc_w) + fc_b
  if arch == "cd_vit_tiny":
    expected = merge(features) - merge(run(vit.encoder, x2, method="features"))
    np.testing.assert_allclose(run(model, x1, x2, method="difference"), expected, rtol=0, atol=1e-5)
  else:
    np.testing.assert_allclose(run(model, x1, method="feature_map"), merge(features), rtol=0, atol=1e-5)


def test_mae_fixture_encoder_in_a_segmentation_file(tmp_path):
  """Real reference encoder weights (the tiny MAE fixture) inside a seg file: same features as the MAE."""
  head = {k: v for k, v in keymap.export_state_dict(models.build("seg_vit_tiny", img_size=16, seed=5)).items()
          if keymap.reference_name(k).split("/")[0] != "encoder"}
  encoder = {k: v for k, v in np.load(REF / "mae_tiny_state_dict.npz").items()
             if not k.startswith("decoder") and k != "mask_token"}
  write_pth(tmp_path / "seg.pth", {**encoder, **head})
  seg, report = load_reference_checkpoint(tmp_path / "seg.pth", arch="seg_vit_tiny", img_size=16)
  assert report.ok and len(report.loaded) == len(encoder) + len(head)
  mae, _ = load_reference_checkpoint(REF / "mae_tiny.pth", arch="mae_vit_tiny")
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 12))
  np.testing.assert_allclose(run(seg.encoder, x, method="features"), run(mae.encoder, x, method="features"),
                             rtol=0, atol=1e-6)


def test_seg_or_cd_is_inferred_from_the_file(tmp_path):
  cd_sd = keymap.export_state_dict(models.build("cd_vit_tiny", seed=1))
  write_pth(tmp_path / "oscd.pth", {f"module.{k}": v for k, v in cd_sd.items()}, wrap_model=False)
  write_pth(tmp_path / "seg2.pth", cd_sd)   # 2 classes but not a DataParallel file: segmentation
  model, report = load_reference_checkpoint(tmp_path / "oscd.pth")
  assert report.arch == "cd_vit_tiny" and report.ok and isinstance(model, models.ChangeDetectionViT)
  _, report = load_reference_checkpoint(tmp_path / "seg2.pth")
  assert report.arch == "seg_vit_tiny" and report.config.num_classes == 2
  params, args = read_reference_params(tmp_path / "oscd.pth")
  assert sorted(params) == sorted(keymap.param_shapes(model)) and args == {}


def test_convert_cli_for_segmentation_and_export_roundtrip(tmp_path):
  sd = keymap.export_state_dict(models.build("seg_vit_tiny", seed=2))
  write_pth(tmp_path / "segmunich.pth", sd)
  out = tmp_path / "converted"
  assert convert.main(["--checkpoint", str(tmp_path / "segmunich.pth"), "--arch", "seg_vit_tiny",
                       "--out", str(out)]) == 0
  metadata = json.loads((out / "metadata.json").read_text())
  assert metadata["task"] == "segmentation" and len(metadata["class_names"]) == 13
  assert metadata["class_names"][0] == "Background"
  assert metadata["normalization"]["eps"] == 1e-9
  assert metadata["data"] == {"missing_bands": "band_mean", "append_missing_bands": True}
  assert metadata["model_config"]["neck_channels"] == [32, 32, 64, 128]
  restored, _ = export.load(out)
  loaded, _ = load_reference_checkpoint(tmp_path / "segmunich.pth", arch="seg_vit_tiny")
  assert restored.cfg == loaded.cfg and isinstance(restored, models.SegmentationViT)
  x = jax.random.uniform(jax.random.key(0), (1, 32, 32, 12))
  np.testing.assert_array_equal(run(restored, x), run(loaded, x))


def test_convert_cli_for_change_detection(tmp_path):
  sd = keymap.export_state_dict(models.build("cd_vit_tiny", seed=3))
  write_pth(tmp_path / "oscd.pth", {f"module.{k}": v for k, v in sd.items()}, wrap_model=False)
  out = tmp_path / "converted"
  assert convert.main(["--checkpoint", str(tmp_path / "oscd.pth"), "--out", str(out)]) == 0
  metadata = json.loads((out / "metadata.json").read_text())
  assert metadata["arch"] == "cd_vit_tiny" and metadata["task"] == "change_detection"
  assert metadata["class_names"] == ["no change", "change"] and "data" not in metadata
