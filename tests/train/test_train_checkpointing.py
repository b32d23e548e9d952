"""Checkpoints: restore onto another mesh (state + data iterator), params-only export, stage-2 initialisation."""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from flax import nnx

from spectralgpt_jax import export, models, sharding
from spectralgpt_jax.models.patch_embed import resize_spatial_pos_embed
from spectralgpt_jax.train import checkpointing, optim, state as state_lib

import train_testlib as tl

OPT = ml_collections.ConfigDict(dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.05, clip_grad_norm=0.0))
TX = optim.make_optimizer(OPT, optim.warmup_half_cosine(1e-3, 10, 0))


def _mesh(shape):
  return sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)))


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state) if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)]


def test_save_on_8x1x1_restore_on_2x2x2_with_data_iterator(tmp_path):
  model = models.get_config(tl.TINY_MODEL)
  data_cfg = tl.tiny_config().data
  mesh_a = _mesh((8, 1, 1))
  saved = state_lib.create_sharded(model, TX, mesh_a, seed=0)
  # Make the state distinguishable from a fresh init (which the restore target would otherwise equal).
  state = state_lib.replace_params(saved.state, lambda name, v: np.asarray(v) + 1.0)
  it_a = tl.make_iterator(data_cfg, global_batch_size=16, sharding=sharding.batch_sharding(mesh_a), seed=0, train=True)
  next(it_a), next(it_a)
  ckpt = checkpointing.Checkpointer(str(tmp_path / "ckpt"), every=1, keep=2)
  assert ckpt.save(2, state, it_a)
  ckpt.wait()
  expected_next = np.asarray(next(it_a)["image"])

  mesh_b = _mesh((2, 2, 2))
  target = state_lib.create_sharded(model, TX, mesh_b, seed=1)
  it_b = tl.make_iterator(data_cfg, global_batch_size=16, sharding=sharding.batch_sharding(mesh_b), seed=0,
                          train=True)
  restored, data_restored = checkpointing.Checkpointer(str(tmp_path / "ckpt"), every=1, keep=2).restore(
      2, target.abstract(), it_b)
  assert data_restored
  for got, want in zip(_leaves(restored), _leaves(state)):
    np.testing.assert_array_equal(got, want)
  for leaf, want_sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(target.shardings)):
    assert leaf.sharding == want_sharding          # laid out for the new mesh, not the saved one
  np.testing.assert_array_equal(np.asarray(next(it_b)["image"]), expected_next)


@pytest.fixture(scope="module")
def stage1_export(tmp_path_factory):
  stage1 = state_lib.create_sharded(models.get_config(tl.TINY_MODEL), TX, _mesh((1, 8, 1)), seed=0)   # 16 px
  cfg = models.get_config(tl.TINY_MODEL)
  directory = tmp_path_factory.mktemp("stage1") / "export"
  export.save_params(directory, nnx.to_pure_dict(state_lib.model_params(stage1.state)),
                     export.make_metadata(tl.TINY_MODEL, cfg))
  return str(directory)


def test_export_then_stage2_init_at_another_image_size(stage1_export):
  meta = json.load(open(os.path.join(stage1_export, "metadata.json")))
  assert meta["format"] == export.FORMAT and meta["image_size"] == 16 and meta["arch"] == tl.TINY_MODEL
  model, _ = export.load(stage1_export)       # the same format the .pth converter writes: rebuildable from metadata
  assert models.count_params(model) == meta["param_count"]
  flat1, _ = checkpointing.load_model_params(stage1_export)

  stage2_cfg = models.get_config(tl.TINY_MODEL, img_size=32)     # 4 x 4 spatial patches instead of 2 x 2
  fresh = state_lib.create_sharded(stage2_cfg, TX, _mesh((1, 8, 1)), seed=1)
  flat_fresh = _named_params(fresh.state)
  for resize in ("reinit", "interpolate"):
    stage2, report = checkpointing.init_from(fresh.state, stage1_export, stage2_cfg.replace(pos_embed_resize=resize),
                                             arch=tl.TINY_MODEL)
    assert report.ok and set(report.initialised if resize == "reinit" else report.interpolated) == set(SPATIAL)
    flat2 = _named_params(stage2)
    assert flat1.keys() == flat2.keys()
    for name, value in flat2.items():
      if name in SPATIAL:
        assert value.shape[1] == 16 and flat1[name].shape[1] == 4
        if resize == "reinit":            # the reference: keep the fresh random init
          np.testing.assert_array_equal(value, flat_fresh[name])
        else:
          np.testing.assert_allclose(value, resize_spatial_pos_embed(flat1[name], 4), atol=1e-6)
      else:
        np.testing.assert_array_equal(value, flat1[name], err_msg=name)
    assert int(stage2["optimizer"]["step"][...]) == 0        # fresh optimizer, as the reference


SPATIAL = ("encoder/pos_embed/spatial", "decoder/pos_embed/spatial")    # depend on the image size


def _named_params(state):
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state_lib.model_params(state))[0]:
    out[state_lib._name(path[:-1])] = np.asarray(leaf)
  return out


def test_init_from_rejects_mismatched_architecture(stage1_export):
  wider = models.get_config(tl.TINY_MODEL, decoder_embed_dim=32)
  fresh = state_lib.create_sharded(wider, TX, _mesh((1, 8, 1)), seed=0)
  with pytest.raises(ValueError, match="decoder"):
    checkpointing.init_from(fresh.state, stage1_export, wider, arch=tl.TINY_MODEL)
