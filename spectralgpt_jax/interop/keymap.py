"""Names and layouts: reference PyTorch state-dict keys <-> our NNX parameter paths (spec §8).

Linear `weight [out, in]` is our `kernel [in, out]`; LayerNorm `weight` is `scale`; the Conv3d patch embedding
`weight [D, 1, t, p, p]` is our Dense `kernel [t*p*p, D]` (same pixel-vector order); position embeddings keep their
shape. The mapping is derived from the model's own parameter paths, so every parameter has exactly one key.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from flax import nnx

_ENCODER_POS = {"spatial": "pos_embed_spatial", "spectral": "pos_embed_temporal", "embedding": "pos_embed"}
_DECODER_POS = {"spatial": "decoder_pos_embed_spatial", "spectral": "decoder_pos_embed_temporal"}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def torch_key(path: tuple) -> str:
  """Our parameter path (e.g. ('encoder', 'blocks', 3, 'attn', 'q', 'kernel')) -> reference key."""
  path = tuple(str(p) for p in path)
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
  raise KeyError(f"no reference key for parameter {'/'.join(path)}")


def is_linear_kernel(path: tuple) -> bool:
  return str(path[-1]) == "kernel" and not (str(path[0]) == "encoder" and str(path[1]) == "patch_embed")


def is_patch_kernel(path: tuple) -> bool:
  return str(path[0]) == "encoder" and str(path[1]) == "patch_embed" and str(path[-1]) == "kernel"


def torch_shape(path: tuple, shape: tuple, cfg) -> tuple:
  """The reference tensor shape of our parameter."""
  if is_patch_kernel(path):
    return (cfg.embed_dim, 1, cfg.t_patch_size, cfg.patch_size, cfg.patch_size)
  if is_linear_kernel(path):
    return tuple(reversed(shape))
  return tuple(shape)


def from_torch(path: tuple, value: np.ndarray) -> np.ndarray:
  """Reference tensor -> our layout (float32)."""
  value = np.asarray(value, np.float32)
  if is_patch_kernel(path):
    return value.reshape(value.shape[0], -1).T
  if is_linear_kernel(path):
    return value.T
  return value


def to_torch(path: tuple, value: np.ndarray, cfg) -> np.ndarray:
  """Our layout -> reference tensor (used to export state dicts and in round-trip tests)."""
  value = np.asarray(value)
  if is_patch_kernel(path):
    return value.T.reshape(torch_shape(path, value.shape, cfg))
  if is_linear_kernel(path):
    return value.T
  return value


def param_paths(model: nnx.Module) -> Iterator[tuple[tuple, nnx.Param]]:
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    yield tuple(path), variable


def export_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """The model's parameters as a reference-layout state dict (numpy)."""
  return {torch_key(p): to_torch(p, np.asarray(v[...]), model.cfg) for p, v in param_paths(model)}
