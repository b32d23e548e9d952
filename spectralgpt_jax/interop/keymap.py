"""Names and layouts: reference PyTorch state-dict keys <-> our NNX parameter paths.

Linear `weight [out, in]` is our `kernel [in, out]`; LayerNorm / GroupNorm `weight` is `scale`; the Conv3d patch
embedding `weight [D, 1, t, p, p]` is our Dense `kernel [t*p*p, D]` (same pixel-vector order); position embeddings
keep their shape. Seg / cd heads: a 1x1 Conv2d `weight [O, I, 1, 1]` is our Dense `kernel [I, O]`, the 3x3
classifier `[O, I, 3, 3]` is a Flax conv kernel `[3, 3, I, O]`, and a ConvTranspose2d `[I, O, k, k]` is our
depth-to-space kernel `[k, k, I, O]`.

`torch_key` maps every path of our models to one key; `reference_name` is its inverse on key names, used by
`from_reference` to read a state dict without building a model. Flat names are "/"-joined paths
("encoder/blocks/0/attn/q/kernel"), as in the training state.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from flax import nnx

from spectralgpt_jax.models.dense import HEAD_ROOTS

_ENCODER_POS = {"spatial": "pos_embed_spatial", "spectral": "pos_embed_temporal", "embedding": "pos_embed"}
_DECODER_POS = {"spatial": "decoder_pos_embed_spatial", "spectral": "decoder_pos_embed_temporal"}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}
DATA_PARALLEL_PREFIX = "module."


def _dense_head_table() -> dict[str, tuple[str, str]]:
  """Our seg/cd head module path -> (reference module prefix, layer type)."""
  table = {"merge": ("fc.0", "linear"), "classifier": ("cls_seg.0", "conv"), "fpn/top": ("decoder.conv_x1", "conv1x1")}
  conv_norm = {"fpn/ppm/out": "decoder.PPMHead.final", "fpn/fuse": "decoder.fuse_all"}
  for i in range(4):
    conv_norm[f"neck/{i}"] = f"conv{i}"
    table[f"neck/{i}/up"] = (f"conv{i}.3", "convT")       # Sequential(conv, GN, GELU, ConvT[, Dropout])
    table[f"fpn/ppm/pools/{i}"] = (f"decoder.PPMHead.psp_modules.{i}.1", "conv1x1")   # (pool, conv)
  for i in range(3):   # top-down step i fuses m2, m1, m0: the reference's Conv_fuse1..3 and Conv_fuse1_..3_
    conv_norm[f"fpn/lateral/{i}"] = f"decoder.Conv_fuse{i + 1}"
    conv_norm[f"fpn/smooth/{i}"] = f"decoder.Conv_fuse{i + 1}_"
  for ours, ref in conv_norm.items():
    table[f"{ours}/conv"] = (f"{ref}.0", "conv1x1")
    table[f"{ours}/norm"] = (f"{ref}.1", "norm")
  return table


_DENSE_HEAD = _dense_head_table()
_DENSE_HEAD_BY_KEY = {ref: ours for ours, (ref, _) in _DENSE_HEAD.items()}
_FIXED = {**{v: f"encoder/pos_embed/{k}" for k, v in _ENCODER_POS.items()},
          **{v: f"decoder/pos_embed/{k}" for k, v in _DECODER_POS.items()},
          "mask_token": "decoder/mask_token", "patch_embed.proj.weight": "encoder/patch_embed/kernel",
          "patch_embed.proj.bias": "encoder/patch_embed/bias", "head.weight": "head/kernel", "head.bias": "head/bias"}


def _strs(path) -> tuple[str, ...]:
  return tuple(path.split("/")) if isinstance(path, str) else tuple(str(p) for p in path)


def torch_key(path) -> str:
  """Our parameter path (e.g. ('encoder', 'blocks', 3, 'attn', 'q', 'kernel') or its "/"-joined name) ->
  reference key."""
  path = _strs(path)
  top, rest = path[0], path[1:]
  if top == "encoder":
    if rest[0] == "pos_embed":
      return _ENCODER_POS[rest[1]]
    if rest[0] == "patch_embed":
      return f"patch_embed.proj.{_LEAF[rest[1]]}"
    return ".".join(rest[:-1] + (_LEAF[rest[-1]],))                 # blocks.i..., norm.*
  if top == "decoder":
    if rest[0] == "pos_embed":
      return _DECODER_POS[rest[1]]
    if rest[0] == "mask_token":
      return "mask_token"
    return "decoder_" + ".".join(rest[:-1] + (_LEAF[rest[-1]],))   # decoder_blocks.j..., decoder_embed/norm/pred
  if top == "head":
    return f"head.{_LEAF[rest[-1]]}"
  module = "/".join(path[:-1])
  if top in HEAD_ROOTS and module in _DENSE_HEAD:
    return f"{_DENSE_HEAD[module][0]}.{_LEAF[path[-1]]}"
  raise KeyError(f"no reference key for parameter {'/'.join(path)}")


def reference_name(key: str) -> str | None:
  """Reference key -> our flat parameter name, or None for a key no model of ours has (a `module.` prefix is
  stripped first)."""
  key = key[len(DATA_PARALLEL_PREFIX):] if key.startswith(DATA_PARALLEL_PREFIX) else key
  if key in _FIXED:
    return _FIXED[key]
  module, _, leaf = key.rpartition(".")
  if leaf not in ("weight", "bias") or not module:
    return None
  if module in _DENSE_HEAD_BY_KEY:
    ours = _DENSE_HEAD_BY_KEY[module]
    kind = _DENSE_HEAD[ours][1]
    return f"{ours}/{'bias' if leaf == 'bias' else 'scale' if kind == 'norm' else 'kernel'}"
  if module.startswith("blocks.") or module == "norm":
    root, parts = "encoder", module.split(".")
  elif module.startswith("decoder_"):
    root, parts = "decoder", module[len("decoder_"):].split(".")
  else:
    return None
  if leaf == "bias":
    return "/".join([root, *parts, "bias"])
  return "/".join([root, *parts, "scale" if parts[-1].startswith("norm") else "kernel"])


def layer_type(path) -> str:
  """How the reference stores this parameter: patch | linear | conv1x1 | conv | convT | param (same layout)."""
  path = _strs(path)
  if path[-1] != "kernel":
    return "param"
  if path[:2] == ("encoder", "patch_embed"):
    return "patch"
  module = "/".join(path[:-1])
  return _DENSE_HEAD[module][1] if path[0] in HEAD_ROOTS and module in _DENSE_HEAD else "linear"


def is_linear_kernel(path) -> bool:
  return layer_type(path) == "linear"


def is_patch_kernel(path) -> bool:
  return layer_type(path) == "patch"


def torch_shape(path, shape: tuple, cfg) -> tuple:
  """The reference tensor shape of our parameter."""
  kind, shape = layer_type(path), tuple(shape)
  if kind == "patch":
    return (cfg.embed_dim, 1, cfg.t_patch_size, cfg.patch_size, cfg.patch_size)
  if kind == "linear":
    return tuple(reversed(shape))
  if kind == "conv1x1":
    return (shape[1], shape[0], 1, 1)
  if kind == "conv":
    return (shape[3], shape[2], shape[0], shape[1])
  if kind == "convT":
    return (shape[2], shape[3], shape[0], shape[1])
  return shape


def from_torch(path, value: np.ndarray) -> np.ndarray:
  """Reference tensor -> our layout (float32). A tensor of unexpected rank is passed through unchanged, so that a
  wrong checkpoint shows up as a shape mismatch rather than an exception here."""
  value, kind = np.asarray(value, np.float32), layer_type(path)
  if kind == "patch" and value.ndim == 5:
    return value.reshape(value.shape[0], -1).T
  if kind == "linear" and value.ndim == 2:
    return value.T
  if kind == "conv1x1" and value.ndim == 4 and value.shape[2:] == (1, 1):
    return value[:, :, 0, 0].T
  if kind in ("conv", "conv1x1") and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if kind == "convT" and value.ndim == 4:
    return value.transpose(2, 3, 0, 1)
  return value


def to_torch(path, value: np.ndarray, cfg) -> np.ndarray:
  """Our layout -> reference tensor (used to export state dicts and in round-trip tests)."""
  value, kind = np.asarray(value), layer_type(path)
  if kind == "patch":
    return value.T.reshape(torch_shape(path, value.shape, cfg))
  if kind == "linear":
    return value.T
  if kind == "conv1x1":
    return value.T[:, :, None, None]
  if kind == "conv":
    return value.transpose(3, 2, 0, 1)
  if kind == "convT":
    return value.transpose(2, 3, 0, 1)
  return value


def from_reference(state_dict: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
  """A reference state dict (any kind: MAE, classifier, seg, cd; `module.` prefixes allowed) -> (our flat name ->
  float32 array in our layout, reference keys that map to no parameter of ours)."""
  params, unmapped = {}, []
  for key, value in state_dict.items():
    name = reference_name(key)
    if name is None:
      unmapped.append(key)
    else:
      params[name] = from_torch(name, value)
  return params, unmapped


def param_paths(model: nnx.Module) -> Iterator[tuple[tuple, nnx.Param]]:
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    yield tuple(path), variable


def param_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
  """Our flat name -> shape of every parameter (the `target` of `interop.transfer.transfer`)."""
  return {"/".join(map(str, p)): tuple(v.shape) for p, v in param_paths(model)}


def export_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """The model's parameters as a reference-layout state dict (numpy)."""
  return {torch_key(p): to_torch(p, np.asarray(v[...]), model.cfg) for p, v in param_paths(model)}
