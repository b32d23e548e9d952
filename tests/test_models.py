"""Model family: shapes of every named variant (abstract, no allocation), parameter counts, masking, loss options."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spectralgpt_jax import models
from spectralgpt_jax.models.mae import num_kept, random_masking, reconstruction_loss

# Compile time dominates these tiny models: XLA's cheaper optimisation level (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compiles")

# Reference parameter counts (measured on the PyTorch reference).
REFERENCE_COUNTS = {
    "mae_vit_base_patch8_96": 98_496_960, "mae_vit_base_patch8_128": 98_640_320,
    "mae_vit_base_patch8_2tensor_128": 98_560_896, "mae_vit_large_patch8_96": 315_970_752,
    "mae_vit_large_patch8_128": 316_142_784, "mae_vit_huge_patch8_96": 643_558_336,
    "mae_vit_huge_patch8_128": 643_759_040,
    "seg_vit_base_patch8_128": 109_244_946, "cd_vit_base_patch8_128": 109_219_591,   # measured on the reference
}
ENCODER_COUNTS = {"mae_vit_base_patch8_128": 85_403_904, "mae_vit_large_patch8_128": 302_775_296,
                  "mae_vit_huge_patch8_128": 630_260_480, "mae_vit_base_patch8_96": 85_317_888}


def abstract(name, **overrides):
  return nnx.eval_shape(lambda: models.build(name, **overrides))


def test_classifier_param_counts():
  # The reference classifier (joint pos_embed) has 85,998,346 parameters for 10 classes.
  assert models.count_params(abstract("vit_base_patch8_128", reference_pos_embed=True)) == 85_998_346
  # Ours replaces the joint [1, 1024, 768] embedding by the pretrained spatial [1,256,768] + spectral [1,4,768] pair.
  assert models.count_params(abstract("vit_base_patch8_128")) == 85_998_346 - 1024 * 768 + 260 * 768


@pytest.mark.parametrize("name", models.names())
def test_every_variant_output_shapes_and_param_counts(name):
  cfg = models.get_config(name)
  x = jax.ShapeDtypeStruct((2, cfg.img_size, cfg.img_size, cfg.num_frames), jnp.float32)
  model = abstract(name)
  if name in REFERENCE_COUNTS:
    assert models.count_params(model) == REFERENCE_COUNTS[name]
  if name in ENCODER_COUNTS:
    assert models.count_params(model.encoder) == ENCODER_COUNTS[name]
  graphdef, state = nnx.split(model)

  def forward(state, x):
    model = nnx.merge(graphdef, state)
    if cfg.kind == "mae":
      return model(x, mask_ratio=0.9, noise=jnp.zeros((x.shape[0], cfg.num_tokens)))
    return model(x, x) if cfg.kind == "cd" else model(x)

  out = jax.eval_shape(forward, state, x)
  if cfg.kind == "mae":
    keep = num_kept(cfg.num_tokens, 0.9)
    assert out["pred"].shape == (2, cfg.num_tokens, cfg.patch_dim)
    assert out["latent"].shape == (2, keep, cfg.embed_dim)
    assert out["mask"].shape == out["ids_restore"].shape == (2, cfg.num_tokens)
    assert out["loss"].shape == () and out["loss"].dtype == jnp.float32
  elif cfg.kind in ("seg", "cd"):
    assert out.shape == (2, cfg.img_size, cfg.img_size, cfg.num_classes) and out.dtype == jnp.float32
  else:
    assert out.shape == (2, cfg.num_classes)


@pytest.mark.parametrize("name", ["mae_vit_tiny", "vit_tiny", "seg_vit_tiny", "cd_vit_tiny"])
def test_seeded_build_draws_the_keys_of_nnx_rngs_eagerly_and_under_jit(name):
  """`build(seed=s)` (models.ParamKeys) gives exactly the parameters of `nnx.Rngs(params=s)`, eagerly and with the
  constructor traced (how train.state creates a sharded state; jit rounds some initialisers differently from eager
  mode, so each is compared with its own kind)."""
  params = lambda build: jax.tree.leaves(nnx.state(build(), nnx.Param))                    # noqa: E731
  with_rngs = lambda: models.build(name, rngs=nnx.Rngs(params=3))                          # noqa: E731
  with_seed = lambda: models.build(name, seed=3)                                           # noqa: E731
  pairs = [(params(with_rngs), params(with_seed)),
           (jax.jit(lambda: params(with_rngs))(), jax.jit(lambda: params(with_seed))())]
  for expected, got in pairs:
    assert len(expected) == len(got) > 10
    for a, b in zip(expected, got):
      np.testing.assert_array_equal(a, b)
  other_seed = params(lambda: models.build(name, seed=4))
  assert not all(np.array_equal(a, b) for a, b in zip(pairs[0][1], other_seed))


def test_token_grids():
  assert models.get_config("mae_vit_base_patch8_96").num_tokens == 576
  assert models.get_config("mae_vit_base_patch8_128").num_tokens == 1024
  assert models.get_config("mae_vit_base_patch8_2tensor_128").grid == (6, 16, 16)
  assert num_kept(1024, 0.9) == 102 and num_kept(576, 0.9) == 57 and num_kept(1024, 0.75) == 256


def test_patchify_roundtrip_and_order():
  cfg = models.get_config("mae_vit_tiny")
  x = jnp.arange(2 * 16 * 16 * 12, dtype=jnp.float32).reshape(2, 16, 16, 12)
  tokens = models.patchify(x, cfg)
  assert tokens.shape == (2, 16, 192)
  np.testing.assert_array_equal(models.unpatchify(tokens, cfg), x)
  # token l = t*(h*w) + i*w + j; vector index (u*p + py)*p + px holds band 3t+u at pixel (8i+py, 8j+px)
  t, i, j, u, py, px = 2, 1, 0, 1, 5, 3
  assert tokens[1, t * 4 + i * 2 + j, (u * 8 + py) * 8 + px] == x[1, 8 * i + py, 8 * j + px, 3 * t + u]


def test_random_masking_properties():
  noise = jax.random.uniform(jax.random.key(0), (3, 1024))
  ids_keep, ids_restore, mask = random_masking(noise, 102)
  assert mask.sum(axis=1).tolist() == [922.0] * 3
  # kept tokens are the smallest-noise ones, in ascending-noise order
  np.testing.assert_array_equal(ids_keep, np.argsort(np.asarray(noise), axis=1)[:, :102])
  assert np.all(np.asarray(mask)[np.arange(3)[:, None], np.asarray(ids_keep)] == 0)


def test_2tensor_variant_runs_forward():
  # The reference crashes on t_patch 2 (hard-coded 192); shapes here derive from the config.
  model = models.build("mae_vit_tiny_2tensor")
  out = model(jnp.ones((2, 16, 16, 12)), mask_ratio=0.75)
  assert out["pred"].shape == (2, 24, 128) and np.isfinite(float(out["loss"]))


def test_spectral_loss_sums_band_groups():
  cfg = models.get_config("mae_vit_tiny")
  pred = jnp.zeros((1, 16, 192))
  target = jnp.zeros((1, 16, 192)).at[0, 0, 0].set(1.0).at[0, 4, 0].set(1.0)   # same pixel, groups 0 and 1
  losses = reconstruction_loss(pred, target, jnp.ones((1, 16)), cfg)
  # group sum at spatial 0, index 0 is 2 -> squared error 4 averaged over 4 positions x 192
  np.testing.assert_allclose(losses["loss_spectral"], 4.0 / (4 * 192), rtol=1e-6)
  np.testing.assert_allclose(losses["loss_masked"], 2.0 / (16 * 192), rtol=1e-6)
  weighted = reconstruction_loss(pred, target, jnp.ones((1, 16)), cfg.replace(spectral_loss_weight=0.0))
  np.testing.assert_allclose(weighted["loss"], weighted["loss_masked"])


def test_norm_pix_loss_normalises_only_the_masked_term():
  cfg = models.get_config("mae_vit_tiny")
  rng = np.random.default_rng(0)
  pred, target = jnp.asarray(rng.normal(size=(2, 16, 192))), jnp.asarray(rng.normal(3, 2, size=(2, 16, 192)))
  mask = jnp.ones((2, 16))
  plain = reconstruction_loss(pred, target, mask, cfg)
  normed = reconstruction_loss(pred, target, mask, cfg.replace(norm_pix_loss=True))
  t = np.asarray(target)
  t_norm = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(normed["loss_masked"], np.mean((np.asarray(pred) - t_norm) ** 2), rtol=1e-5)
  np.testing.assert_allclose(normed["loss_spectral"], plain["loss_spectral"], rtol=1e-6)


def test_initialisation_follows_reference():
  model = models.build("mae_vit_base_patch8_128", depth=1, decoder_depth=1)
  kernel = np.asarray(model.encoder.patch_embed.kernel[...])
  assert kernel.shape == (192, 768) and np.abs(kernel).max() <= (6 / (192 + 768)) ** 0.5
  assert np.abs(np.asarray(model.encoder.patch_embed.bias[...])).max() <= 192 ** -0.5
  np.testing.assert_allclose(np.std(np.asarray(model.encoder.pos_embed.spatial[...])), 0.02, rtol=0.05)
  np.testing.assert_allclose(np.std(np.asarray(model.decoder.mask_token[...])), 0.02, rtol=0.6)
  block = model.encoder.blocks[0]
  assert np.all(np.asarray(block.attn.q.bias[...]) == 0) and np.all(np.asarray(block.norm1.scale[...]) == 1)
  limit = (6 / (768 + 3072)) ** 0.5
  fc1 = np.asarray(block.mlp.fc1.kernel[...])
  assert np.abs(fc1).max() <= limit and np.abs(fc1).max() > 0.9 * limit


def test_every_parameter_has_logical_axes():
  names = set()
  for path, variable in nnx.to_flat_state(nnx.state(models.build("mae_vit_tiny"), nnx.Param)):
    axes = variable.get_metadata()["out_sharding"]
    assert len(axes) == variable.ndim, path
    names.update(axes)
  assert {"embed", "mlp", "heads", "patch", "vocab_pos"} <= names


def test_classifier_train_mode_drop_path_is_random_and_eval_deterministic():
  vit = models.build("vit_tiny", drop_path_rate=0.5)
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 12))
  np.testing.assert_array_equal(vit(x), vit(x))
  a = vit(x, train=True, rngs=nnx.Rngs(dropout=1))
  b = vit(x, train=True, rngs=nnx.Rngs(dropout=2))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, vit(x, train=True, rngs=nnx.Rngs(dropout=1)))


def test_reference_pooling_drops_token_zero():
  ref = models.build("vit_tiny", reference_pooling=True)
  tokens = jnp.arange(2 * 16 * 3, dtype=jnp.float32).reshape(2, 16, 3)
  np.testing.assert_allclose(ref.pool(tokens), tokens[:, 1:].mean(1))
  np.testing.assert_allclose(models.build("vit_tiny").pool(tokens), tokens.mean(1))


@pytest.mark.parametrize("overrides,key", [
    (dict(img_size=20), "img_size"), (dict(num_frames=10), "num_frames"), (dict(num_heads=3), "embed_dim"),
    (dict(attention_impl="flash"), "attention_impl")])
def test_bad_config_names_the_key(overrides, key):
  with pytest.raises(ValueError, match=f"model.{key}"):
    models.get_config("mae_vit_tiny", **overrides)


def test_unknown_override_and_name():
  with pytest.raises(TypeError, match="embed_dimm"):
    models.get_config("mae_vit_tiny", embed_dimm=3)
  with pytest.raises(KeyError, match="mae_vit_gigantic"):
    models.build("mae_vit_gigantic")


def test_wrong_input_shape_is_explained():
  with pytest.raises(ValueError, match="num_frames=12"):
    models.build("mae_vit_tiny")(jnp.ones((1, 16, 16, 10)), mask_ratio=0.75)


def test_chunked_attention_equals_plain():
  from spectralgpt_jax.models.layers import attention
  q, k, v = (jax.random.normal(jax.random.key(i), (2, 512, 4, 8)) for i in range(3))
  np.testing.assert_allclose(attention(q, k, v, impl="chunked", chunk=128), attention(q, k, v), atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_loss():
  fp32 = models.build("mae_vit_tiny", seed=4)
  bf16 = models.build("mae_vit_tiny", seed=4, dtype="bfloat16")
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 12))
  noise = jax.random.uniform(jax.random.key(1), (2, 16))
  a, b = fp32(x, mask_ratio=0.75, noise=noise), bf16(x, mask_ratio=0.75, noise=noise)
  assert b["loss"].dtype == jnp.float32 and b["pred"].dtype == jnp.float32
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
  np.testing.assert_allclose(b["loss"], a["loss"], rtol=2e-2)
  assert not np.array_equal(np.asarray(b["pred"]), np.asarray(a["pred"]))   # the matmuls really ran in bf16
