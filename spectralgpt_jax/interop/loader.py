"""Load official SpectralGPT `.pth` checkpoints into our NNX models, strictly and with a readable report.

Cases: MAE -> MAE; MAE -> classifier / seg / cd (encoder only; decoder and mask token are
set aside, the task head starts fresh); classifier -> classifier (a joint `pos_embed` key switches on the reference
pooling/pos-embed behaviour so the logits are reproduced); SegMunich / OSCD models -> seg / cd; a 96 px checkpoint
into a 128 px model (spatial position embeddings re-initialised as the reference's `--resume_different_size`, or
bicubic-interpolated with `pos_embed_resize='interpolate'`). The decisions are `interop.transfer`'s rule table; this
module reads the file, names the architecture and reports in reference key names.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from spectralgpt_jax import models
from spectralgpt_jax.interop import keymap
from spectralgpt_jax.models.config import DENSE_KINDS
from spectralgpt_jax.interop.torch_pickle import CheckpointError, load_pth, state_dict_of
from spectralgpt_jax.interop.transfer import (UNMAPPED, CheckpointMismatchError, TransferReport, infer_kind,
                                              transfer)

LoadReport = TransferReport   # the name of the report before the rule table existed
__all__ = ["CheckpointMismatchError", "LoadReport", "infer_arch", "load_reference_checkpoint",
           "read_reference_params"]


def _checkpoint_args(checkpoint: Any) -> dict[str, Any]:
  args = checkpoint.get("args") if isinstance(checkpoint, dict) else None
  return dict(vars(args)) if hasattr(args, "__dict__") else {}


def _data_parallel(checkpoint: Any) -> bool:
  """Whether the state dict is a raw `module.`-prefixed DataParallel one (how the OSCD script saves)."""
  inner = checkpoint
  if isinstance(checkpoint, dict):
    inner = next((checkpoint[k] for k in ("model", "state_dict") if isinstance(checkpoint.get(k), dict)), checkpoint)
  return isinstance(inner, dict) and bool(inner) and all(str(k).startswith(keymap.DATA_PARALLEL_PREFIX)
                                                         for k in inner)


def _source_params(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Our flat names -> arrays (our layout); keys with no counterpart stay under `transfer.UNMAPPED`."""
  params, unmapped = keymap.from_reference(sd)
  return {**params, **{UNMAPPED + key: np.asarray(sd[key]) for key in unmapped}}


def read_reference_params(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """An official `.pth` as (our flat name -> float32 array in our layout, the checkpoint's `args`), no model built.
  Keys that name no parameter of ours appear as `"unmapped/<key>"`, which `transfer` reports as unexpected."""
  checkpoint = load_pth(path)
  return _source_params(state_dict_of(checkpoint, str(path))), _checkpoint_args(checkpoint)


def _dims_from_state_dict(sd: dict) -> dict[str, int]:
  """Architecture fields readable from tensor shapes."""
  w = sd["patch_embed.proj.weight"]
  dims = dict(embed_dim=w.shape[0], t_patch_size=w.shape[2], patch_size=w.shape[3])
  dims["depth"] = 1 + max((int(k.split(".")[1]) for k in sd if k.startswith("blocks.")), default=-1)
  if "pos_embed_temporal" in sd:
    spectral, spatial = sd["pos_embed_temporal"].shape[1], sd["pos_embed_spatial"].shape[1]
    dims["num_frames"] = spectral * dims["t_patch_size"]
    dims["img_size"] = int(round(spatial ** 0.5)) * dims["patch_size"]
  for key in ("head.weight", "cls_seg.0.weight"):
    if key in sd:
      dims["num_classes"] = sd[key].shape[0]
  return dims


def _source_kind(sd: dict, params: dict, path: str) -> str:
  """mae | vit | dense | encoder (see `transfer.infer_kind`); every SpectralGPT model has a patch embedding."""
  if "patch_embed.proj.weight" not in sd:
    raise CheckpointError(f"{path}: no patch_embed.proj.weight, so not a SpectralGPT model's state dict (MAE, "
                          f"classifier, seg or cd); first keys: {list(sd)[:8]}")
  return infer_kind(params)


def infer_arch(sd: dict, target_kind: str | None, args: dict, *, data_parallel: bool = False) -> str:
  """Pick the named variant whose kind, width, depth, patching and image size match the checkpoint. A seg/cd
  state dict (cls_seg) is read as change detection when it has 2 classes and DataParallel `module.` keys (the
  OSCD script's format), else as segmentation."""
  dims = _dims_from_state_dict(sd)
  if target_kind:
    kind = target_kind
  elif "cls_seg.0.weight" in sd:
    kind = "cd" if dims["num_classes"] == 2 and data_parallel else "seg"
  else:
    kind = "vit" if "head.weight" in sd else "mae"
  named = args.get("model")
  if isinstance(named, str) and named in models.VARIANTS and models.VARIANTS[named]["kind"] == kind:
    return named
  keys = ("embed_dim", "depth", "t_patch_size", "img_size")
  candidates = [name for name, v in sorted(models.VARIANTS.items())
                if v["kind"] == kind and all(getattr(models.get_config(name), k) == dims[k]
                                             for k in keys if k in dims)]
  if not candidates:
    raise CheckpointError(f"cannot infer the architecture of a {kind} with {dims}; pass arch= (one of "
                          f"{', '.join(models.names())}) and overrides such as num_heads=")
  return candidates[0]


def _derived_config(sd: dict, source_kind: str, target_kind: str) -> dict[str, Any]:
  """Config fields taken from the checkpoint: band count and patching (image size stays the arch's: that is how a
  96 px checkpoint goes into a 128 px model), the reference classifier's flags, and the class count of a head of
  the same kind."""
  dims = _dims_from_state_dict(sd)
  derived = {k: dims[k] for k in ("num_frames", "t_patch_size", "patch_size") if k in dims}
  if target_kind == "vit" and "pos_embed" in sd:
    derived.update(reference_pos_embed=True, reference_pooling=True)   # a reference fine-tuned classifier
  same_head = (target_kind == "vit" and source_kind == "vit") or (
      target_kind in DENSE_KINDS and source_kind == "dense")
  if same_head:
    derived["num_classes"] = dims["num_classes"]
  return derived


def _in_reference_names(report: TransferReport, sd: dict, cfg: models.ModelConfig) -> TransferReport:
  def name(n: str) -> str:
    return n[len(UNMAPPED):] if n.startswith(UNMAPPED) else keymap.torch_key(n)

  def shape(n: str, side: str, value: tuple) -> tuple:
    if side == "source":
      return tuple(sd[name(n)].shape)     # as stored in the file
    return tuple(keymap.torch_shape(n, value, cfg))
  return report.renamed(name, shape)


def load_reference_checkpoint(path: str | Path, arch: str | None = None, *, strict: bool = True, seed: int = 0,
                              **overrides):
  """Build the model `arch` (inferred when omitted) and fill it from an official `.pth` file.

  Returns `(model, LoadReport)` with reference key names. Strict (default): any missing, unexpected or mis-shaped
  key raises `CheckpointMismatchError` with a one-line message grouping them. Expected differences are not errors
  and are listed in the report (see `interop.transfer`): a fresh task head, the decoder/mask token when fine-tuning
  from an MAE (ignored), spatial position embeddings at another image size (re-initialised or interpolated).
  """
  checkpoint = load_pth(path)
  sd = state_dict_of(checkpoint, str(path))
  args = _checkpoint_args(checkpoint)
  source = _source_params(sd)
  source_kind = _source_kind(sd, source, str(path))
  if arch is None:
    arch = infer_arch(sd, None, args, data_parallel=_data_parallel(checkpoint))
  elif arch not in models.VARIANTS:
    raise KeyError(f"unknown arch {arch!r}; known: {', '.join(models.names())}")
  target_kind = models.VARIANTS[arch]["kind"]
  cfg = models.get_config(arch, **{**_derived_config(sd, source_kind, target_kind), **overrides})
  model = models.build_from_config(cfg, seed=seed)

  values, report = transfer(source, keymap.param_shapes(model), cfg, source_name=str(path), arch=arch,
                            strict=False, checkpoint_args=args)
  report = _in_reference_names(report, sd, cfg)
  if strict and not report.ok:
    raise CheckpointMismatchError(report.error_line(), report)
  assign_params(model, values)
  return model, report


def assign_params(model, values: dict) -> None:
  """Writes {flat param name: array} (the names of `keymap.param_shapes`) into the model's parameters."""
  paths = {"/".join(map(str, p)): p for p, _ in keymap.param_paths(model)}
  state = nnx.state(model, nnx.Param)
  pure = nnx.to_pure_dict(state)
  for name, value in values.items():
    _set(pure, paths[name], jnp.asarray(value))
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)


def _set(tree: dict, path: tuple, value) -> None:
  for p in path[:-1]:
    tree = tree[p]
  tree[path[-1]] = value
