"""Numerical parity with the PyTorch reference on tiny models, through the real `.pth` import path.

Fixtures: tests/data/reference (copied from the reference generator; see its README.md and SOURCE). Tolerances are
the ones that README gives for a float32 CPU port.
"""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spectralgpt_jax.interop import keymap, load_reference_checkpoint

REF = Path(__file__).parent / "data" / "reference"
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def mae_io():
  return dict(np.load(REF / "mae_tiny_io.npz"))


@pytest.fixture(scope="module")
def mae():
  model, report = load_reference_checkpoint(REF / "mae_tiny.pth", arch="mae_vit_tiny")
  assert report.ok and len(report.loaded) == 63
  return model


def channels_last(x):
  return jnp.asarray(x).transpose(0, 2, 3, 1)   # reference input is [N, bands, H, W]


@pytest.mark.parametrize("case,ratio", [("r75", 0.75), ("r90", 0.90)])
def test_mae_forward_matches_reference(mae, mae_io, case, ratio):
  out = mae(channels_last(mae_io["x"]), mask_ratio=ratio, noise=jnp.asarray(mae_io["noise"]))
  for key in ("mask", "ids_restore", "ids_keep"):
    np.testing.assert_array_equal(np.asarray(out[key]), mae_io[f"{case}/{key}"], err_msg=key)
  np.testing.assert_allclose(out["latent"], mae_io[f"{case}/latent"], **TOL)
  np.testing.assert_allclose(out["pred"], mae_io[f"{case}/pred"], **TOL)
  np.testing.assert_allclose(out["loss"], mae_io[f"{case}/loss"], **TOL)
  np.testing.assert_allclose(out["loss_masked"], mae_io[f"{case}/loss1_masked_mse"], **TOL)
  np.testing.assert_allclose(out["loss_spectral"], mae_io[f"{case}/loss3_spectral_sum_mse"], **TOL)


def test_patch_embedding_and_target_match_reference(mae, mae_io):
  from spectralgpt_jax import models
  x = channels_last(mae_io["x"])
  tokens = mae.encoder.patch_embed(x)                             # [N, L, D] in token order
  np.testing.assert_allclose(tokens.reshape(2, 4, 4, 32), mae_io["r75/patch_embed_out"], **TOL)
  np.testing.assert_allclose(models.patchify(x, mae.cfg), mae_io["r75/target"], **TOL)


@pytest.mark.parametrize("case,ratio", [("r75", 0.75), ("r90", 0.90)])
def test_mae_gradients_match_reference(mae, mae_io, case, ratio):
  x, noise = channels_last(mae_io["x"]), jnp.asarray(mae_io["noise"])
  graphdef, params, rest = nnx.split(mae, nnx.Param, ...)

  def loss_fn(params):
    return nnx.merge(graphdef, params, rest)(x, mask_ratio=ratio, noise=noise)["loss"]

  grads = jax.grad(loss_fn)(params)
  flat = list(nnx.to_flat_state(grads))
  assert len(flat) == 63
  for path, grad in flat:
    key = keymap.torch_key(path)
    ours = keymap.to_torch(path, np.asarray(grad[...]), mae.cfg)
    np.testing.assert_allclose(ours, mae_io[f"{case}/grad/{key}"], rtol=1e-4, atol=1e-5, err_msg=key)


def test_reference_classifier_logits_match(tmp_path):
  io = np.load(REF / "vit_tiny_io.npz")
  vit, report = load_reference_checkpoint(REF / "vit_tiny.pth", arch="vit_tiny")
  # a reference fine-tuned classifier switches on the reference pooling and joint pos-embed automatically
  assert report.ok and vit.cfg.reference_pooling and vit.cfg.reference_pos_embed
  x = channels_last(io["x"])
  np.testing.assert_allclose(vit.encoder.patch_embed(x).reshape(2, 4, 4, 32), io["patch_embed_out"], **TOL)
  np.testing.assert_allclose(vit.encoder.norm(vit.pool(vit.encoder.features(x))), io["pooled_normed"], **TOL)
  np.testing.assert_allclose(vit(x), io["logits"], **TOL)


def test_mae_into_classifier_loads_what_the_reference_loads():
  expected = json.loads((REF / "finetune_load_tiny.json").read_text())
  vit, report = load_reference_checkpoint(REF / "mae_tiny.pth", arch="vit_tiny", reference_pos_embed=True,
                                          reference_pooling=True)
  assert sorted(report.initialised) == expected["missing_keys"]
  assert sorted(report.ignored) == expected["unexpected_keys"]
  np.testing.assert_array_equal(vit.encoder.pos_embed.embedding[...], 0.0)   # the reference's zero pos_embed
  # Our default instead carries the pretrained separable position embeddings over.
  ours, report = load_reference_checkpoint(REF / "mae_tiny.pth", arch="vit_tiny")
  assert "pos_embed_spatial" in report.loaded and "pos_embed_temporal" in report.loaded
  sd = np.load(REF / "mae_tiny_state_dict.npz")
  np.testing.assert_array_equal(ours.encoder.pos_embed.spatial[...], sd["pos_embed_spatial"])
  np.testing.assert_array_equal(ours.encoder.blocks[1].mlp.fc2.kernel[...], sd["blocks.1.mlp.fc2.weight"].T)


def test_pth_reader_equals_npz_state_dict(mae):
  sd = np.load(REF / "mae_tiny_state_dict.npz")
  exported = keymap.export_state_dict(mae)
  assert sorted(exported) == sorted(sd.files)
  for key in sd.files:
    np.testing.assert_array_equal(exported[key], sd[key], err_msg=key)
