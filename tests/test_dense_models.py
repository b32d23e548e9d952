"""Segmentation and change-detection models: head parity with the reference fixture, an independent NumPy head on
random weights, the reference parameter counts and keys, shapes, train mode and the siamese difference.

Fixtures: tests/data/reference_downstream (outputs of the reference code; see SOURCE.md there).
"""
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from spectralgpt_jax import models, sharding
from spectralgpt_jax.interop import keymap, load_pth
from spectralgpt_jax.interop.torch_pickle import state_dict_of
from spectralgpt_jax.models import flops

# Compile time dominates these tiny models: XLA's cheaper optimisation level (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compiles")

DOWN = Path(__file__).parent / "data" / "reference_downstream"
OUTPUTS = ("merged", "m0", "m1", "m2", "m3", "fpn", "logits")
# The fixture head's widths: token dim 48, neck (32, 32, 64, 128) (PPM input 128), FPN 16, 5 classes, 16x16 grid.
FIXTURE_HEAD = dict(embed_dim=48, img_size=128, num_classes=5, neck_channels=(32, 32, 64, 128), fpn_channels=16)


@nnx.jit(static_argnames=("method", "train", "intermediates"))
def run(model, *inputs, method="__call__", train=False, rngs=None, intermediates=None):
  """A jitted model call (eager execution compiles every op separately: several times slower here)."""
  extra = {} if intermediates is None else {"intermediates": intermediates}
  return getattr(model, method)(*inputs, train=train, rngs=rngs, **extra)


def assign(model, params: dict) -> None:
  """Set parameters from flat names (our layout); every name must exist with the same shape."""
  state = nnx.state(model, nnx.Param)
  flat = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(state)}
  for name, value in params.items():
    assert flat[name].shape == value.shape, name
    flat[name].set_value(jnp.asarray(value))
  nnx.update(model, state)


def fixture_head_params() -> dict:
  sd = state_dict_of(load_pth(DOWN / "head.pth"), "head.pth")
  params, unmapped = keymap.from_reference(sd)
  assert not unmapped and len(params) == len(sd) == 68
  return params


@pytest.fixture(scope="module")
def head_io():
  return dict(np.load(DOWN / "head_io.npz"))


@pytest.mark.parametrize("arch", ["seg_vit_tiny", "cd_vit_tiny"])
def test_head_matches_reference_fixture(arch, head_io):
  """The cd head differs only by its (eval-inactive) branch and PPM dropouts: same eval outputs."""
  model = models.build(arch, **FIXTURE_HEAD)
  assign(model, fixture_head_params())
  out = run(model, jnp.asarray(head_io["tokens"]), method="decode", intermediates=True)
  for key in OUTPUTS:
    assert out[key].shape == head_io[key].shape, key
    np.testing.assert_allclose(out[key], head_io[key], rtol=0, atol=1e-5, err_msg=key)


# --- an independent NumPy (float64) head in the reference layout, written from the spec -------------------------

def np_conv1x1(x, w, b):
  return np.einsum("nhwi,oi->nhwo", x, w[:, :, 0, 0]) + b


def np_group_norm(x, groups, w, b, eps=1e-5):
  g = x.reshape(*x.shape[:3], groups, x.shape[3] // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * w + b


def np_gelu(x):
  return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def np_conv_transpose(x, w, b):   # w [I, O, k, k], stride k, no padding
  k = w.shape[2]
  out = np.zeros((x.shape[0], x.shape[1] * k, x.shape[2] * k, w.shape[1]))
  for i in range(k):
    for j in range(k):
      out[:, i::k, j::k] = np.einsum("nyxc,co->nyxo", x, w[:, :, i, j])
  return out + b


def np_adaptive_max(x, s):
  size_h, size_w = x.shape[1:3]
  out = np.zeros((x.shape[0], s, s, x.shape[3]))
  for i in range(s):
    for j in range(s):
      rows = slice(i * size_h // s, math.ceil((i + 1) * size_h / s))
      cols = slice(j * size_w // s, math.ceil((j + 1) * size_w / s))
      out[:, i, j] = x[:, rows, cols].max(axis=(1, 2))
  return out


def np_bilinear(x, out_h, out_w):   # align_corners=True, the 2D formula per output pixel
  in_h, in_w = x.shape[1:3]
  out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
  for y in range(out_h):
    sy = y * (in_h - 1) / (out_h - 1) if out_h > 1 else 0.0
    y0 = min(int(sy), in_h - 1)
    y1, fy = min(y0 + 1, in_h - 1), sy - y0
    for xx in range(out_w):
      sx = xx * (in_w - 1) / (out_w - 1) if out_w > 1 else 0.0
      x0 = min(int(sx), in_w - 1)
      x1, fx = min(x0 + 1, in_w - 1), sx - x0
      out[:, y, xx] = ((1 - fy) * ((1 - fx) * x[:, y0, x0] + fx * x[:, y0, x1])
                       + fy * ((1 - fx) * x[:, y1, x0] + fx * x[:, y1, x1]))
  return out


def np_conv3x3(x, w, b):   # w [O, I, 3, 3], padding 1
  h, wd = x.shape[1:3]
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((*x.shape[:3], w.shape[0])) + b
  for i in range(3):
    for j in range(3):
      out += np.einsum("nhwc,oc->nhwo", padded[:, i:i + h, j:j + wd], w[:, :, i, j])
  return out


def np_head(sd, tokens, grid):
  """Reference-layout state dict + tokens [N, L, D] -> the same outputs as `decode(..., intermediates=True)`."""
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  t, h, w = grid
  merged = np.einsum("nthwd,t->nhwd", tokens.astype(np.float64).reshape(tokens.shape[0], t, h, w, -1),
                     sd["fc.0.weight"][0]) + sd["fc.0.bias"][0]

  def cna(x, prefix, groups):
    y = np_conv1x1(x, sd[f"{prefix}.0.weight"], sd[f"{prefix}.0.bias"])
    return np_gelu(np_group_norm(y, groups, sd[f"{prefix}.1.weight"], sd[f"{prefix}.1.bias"]))

  m = [cna(merged, f"conv{i}", 32) for i in range(4)]
  m[:3] = [np_conv_transpose(m[i], sd[f"conv{i}.3.weight"], sd[f"conv{i}.3.bias"]) for i in range(3)]
  pools = [np_bilinear(np_conv1x1(np_adaptive_max(m[3], s), sd[f"decoder.PPMHead.psp_modules.{i}.1.weight"],
                                  sd[f"decoder.PPMHead.psp_modules.{i}.1.bias"]), h, w)
           for i, s in enumerate((1, 2, 3, 6))]
  x1 = cna(np.concatenate(pools + [m[3]], -1), "decoder.PPMHead.final", 16)
  up = lambda x, like: np_bilinear(x, *like.shape[1:3])
  x = np_conv1x1(up(x1, m[2]), sd["decoder.conv_x1.weight"], sd["decoder.conv_x1.bias"])
  x2 = cna(x + cna(m[2], "decoder.Conv_fuse1", 16), "decoder.Conv_fuse1_", 16)
  x3 = cna(up(x2, m[1]) + cna(m[1], "decoder.Conv_fuse2", 16), "decoder.Conv_fuse2_", 16)
  x4 = cna(up(x3, m[0]) + cna(m[0], "decoder.Conv_fuse3", 16), "decoder.Conv_fuse3_", 16)
  fused = cna(np.concatenate([up(x1, x4), up(x2, x4), up(x3, x4), x4], -1), "decoder.fuse_all", 16)
  logits = np_conv3x3(fused, sd["cls_seg.0.weight"], sd["cls_seg.0.bias"])
  return dict(merged=merged, m0=m[0], m1=m[1], m2=m[2], m3=m[3], fpn=fused, logits=logits)


def random_reference_head(model, seed):
  """Random reference-layout weights for the model's head (GroupNorm affine too), as a reference file would hold."""
  rng = np.random.default_rng(seed)
  head = {k: v for k, v in keymap.export_state_dict(model).items()
          if keymap.reference_name(k).split("/")[0] != "encoder"}
  norm_scale = lambda k: keymap.reference_name(k).endswith("/scale")
  return {k: rng.normal(1.0 if norm_scale(k) else 0.0, 0.2, v.shape).astype(np.float32) for k, v in head.items()}


def test_head_matches_independent_numpy_implementation():
  model = models.build("seg_vit_tiny", num_classes=3, img_size=48)   # 6x6 grid: the 3- and 6-bin pools differ
  sd = random_reference_head(model, seed=0)
  params, unmapped = keymap.from_reference(sd)
  assert not unmapped
  assign(model, params)
  tokens = np.random.default_rng(1).normal(size=(2, model.cfg.num_tokens, model.cfg.embed_dim)).astype(np.float32)
  ours = run(model, jnp.asarray(tokens), method="decode", intermediates=True)
  expected = np_head(sd, tokens, model.cfg.grid)
  assert ours["logits"].shape == (2, 48, 48, 3)
  for key in OUTPUTS:
    np.testing.assert_allclose(ours[key], expected[key], rtol=1e-5, atol=2e-5, err_msg=key)


# --- reference sizes and keys ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,keys_file,prefix,count", [
    ("seg_vit_base_patch8_128", "segmunich_base_keys.json", "", 109_244_946),
    ("cd_vit_base_patch8_128", "oscd_base_keys.json", "module.", 109_219_591)])
def test_base_models_have_the_reference_keys_and_parameter_count(arch, keys_file, prefix, count):
  expected = json.loads((DOWN / keys_file).read_text())
  model = nnx.eval_shape(lambda: models.build(arch))
  assert models.count_params(model) == count == expected["num_params"]
  ours = {prefix + keymap.torch_key(p): list(keymap.torch_shape(p, tuple(v.shape), model.cfg))
          for p, v in keymap.param_paths(model)}
  assert ours == expected["keys"]
  for path, _ in keymap.param_paths(model):   # the inverse naming covers every key
    assert keymap.reference_name(prefix + keymap.torch_key(path)) == "/".join(map(str, path))


def test_every_parameter_has_logical_axes_known_to_the_rules():
  model = nnx.eval_shape(lambda: models.build("cd_vit_tiny"))
  names = set()
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names_here = variable.get_metadata()["out_sharding"]
    assert len(names_here) == variable.ndim, path
    names.update(n for n in names_here if n is not None)
  assert {"channels", "channels_in", "spectral", "embed", "classes"} <= names <= set(sharding.RULES)


def test_config_roundtrips_through_json_and_names_bad_fields():
  cfg = models.get_config("seg_vit_base_patch8_128")
  again = models.ModelConfig(**json.loads(json.dumps(cfg.to_dict())))
  assert again == cfg and isinstance(again.neck_channels, tuple) and hash(again) == hash(cfg)
  assert models.get_config("seg_vit_tiny", neck_channels=[16, 16, 32, 64]).pyramid_channels == (8, 16, 32, 64)
  for overrides, key in [(dict(neck_channels=(48, 16, 32, 64)), "neck_channels"), (dict(fpn_channels=24), "fpn_"),
                         (dict(neck_channels=(32, 32, 64, 100)), "neck_channels"),
                         (dict(patch_size=16), "patch_size"), (dict(num_classes=0), "num_classes"),
                         (dict(neck_dropout=1.0), "neck_dropout"), (dict(reference_pos_embed=True), "reference_pos")]:
    with pytest.raises(ValueError, match=f"model.{key}"):
      models.get_config("seg_vit_tiny", **overrides)
  assert models.get_config("cd_vit_base_patch8_128").neck_dropout == 0.0   # OSCD: no branch / PPM dropout
  assert models.get_config("seg_vit_base_patch8_128").drop_path_rate == 0.5


# --- behaviour ------------------------------------------------------------------------------------------------

def images(n, seed, size=32):
  return jax.random.uniform(jax.random.key(seed), (n, size, size, 12))


def test_segmentation_shapes_train_mode_and_dropout():
  seg = models.build("seg_vit_tiny", drop_path_rate=0.0)   # only the neck / fuse dropouts are random
  x = images(2, 0)
  eval_out = run(seg, x)
  assert eval_out.shape == (2, 32, 32, 13) and eval_out.dtype == jnp.float32
  a = run(seg, x, train=True, rngs=nnx.Rngs(dropout=1))
  assert not np.allclose(a, eval_out)
  np.testing.assert_array_equal(a, run(seg, x, train=True, rngs=nnx.Rngs(dropout=1)))
  assert not np.allclose(a, run(seg, x, train=True, rngs=nnx.Rngs(dropout=2)))
  fallback = run(seg, x, train=True)                        # no rngs: the model's own fallback stream
  assert fallback.shape == eval_out.shape and not np.allclose(fallback, run(seg, x, train=True))
  deterministic = models.build("seg_vit_tiny", drop_path_rate=0.0, neck_dropout=0.0, fuse_dropout=0.0)
  np.testing.assert_allclose(run(deterministic, x, train=True, rngs=nnx.Rngs(dropout=0)), run(deterministic, x),
                             atol=1e-6)


def test_train_step_compiles_and_gradients_reach_every_head_parameter():
  seg = models.build("seg_vit_tiny")
  x, labels = images(2, 0), jax.random.randint(jax.random.key(1), (2, 32, 32), 0, 13)

  @nnx.jit
  def grads(model, x, labels, rngs):
    def loss(model, rngs):
      logits = model(x, train=True, rngs=rngs)
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1))
    return nnx.grad(loss)(model, rngs)

  g = grads(seg, x, labels, nnx.Rngs(dropout=3))
  for path, value in nnx.to_flat_state(g):
    assert np.isfinite(value[...]).all(), path
    if path[0] != "encoder" and path[-1] != "bias":
      assert np.abs(value[...]).max() > 0, path


def test_change_detection_is_a_siamese_difference():
  cd = models.build("cd_vit_tiny")
  x1, x2, y = images(2, 0), images(2, 1), images(2, 2)
  diff = run(cd, x1, x2, method="difference")
  assert diff.shape == (2, 4, 4, 32)
  np.testing.assert_allclose(run(cd, x2, x1, method="difference"), -diff, atol=1e-6)   # swapping dates flips sign
  # One 2N encoder pass equals two passes with the shared weights.
  np.testing.assert_allclose(diff, run(cd, x1, method="feature_map") - run(cd, x2, method="feature_map"), atol=1e-5)
  out = run(cd, x1, x2)
  assert out.shape == (2, 32, 32, 2) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, run(cd, diff, method="decode_map"), atol=1e-6)
  # A plain difference (not |f1 - f2|): swapped dates give other logits, identical dates give one image-independent
  # answer (the head applied to a zero map).
  assert not np.allclose(run(cd, x2, x1), out, atol=1e-3)
  np.testing.assert_allclose(run(cd, x1, x1), run(cd, y, y), atol=1e-5)
  assert not np.allclose(run(cd, x1, x2, train=True, rngs=nnx.Rngs(dropout=0)), out)   # drop path + fuse dropout
  with pytest.raises(ValueError, match="two dates"):
    cd.difference(x1, images(2, 1, size=16))


def test_bfloat16_compute_keeps_float32_params_and_logits():
  fp32, bf16 = models.build("seg_vit_tiny", seed=4), models.build("seg_vit_tiny", seed=4, dtype="bfloat16")
  x = images(1, 0)
  a, b = run(fp32, x), run(bf16, x)
  assert b.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
  assert not np.array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(b, a, atol=0.1 * float(np.abs(a).max()))


def test_flops_count_the_encoder_once_per_date():
  seg = models.get_config("seg_vit_base_patch8_128")
  cd = models.get_config("cd_vit_base_patch8_128", num_classes=13)
  t, h, w = seg.grid
  merge = 2 * h * w * seg.embed_dim * t
  assert flops.dense_forward_flops(cd) == flops.dense_forward_flops(seg) + flops.encoder_flops(seg) + merge
  assert flops.train_step_flops(seg) == 3 * flops.dense_forward_flops(seg)
  head = flops.dense_head_flops(seg)
  assert 0.1 * flops.encoder_flops(seg) < head < 0.2 * flops.encoder_flops(seg)   # ~27 GFLOPs vs ~213
