"""Load official SpectralGPT `.pth` checkpoints into our NNX models, strictly and with a readable report.

Cases (spec §4.3, §6.1, §8): MAE -> MAE; MAE -> classifier (encoder only; decoder and mask token are set aside);
classifier -> classifier (a joint `pos_embed` key switches on the reference pooling/pos-embed behaviour so the logits
are reproduced); a 96 px checkpoint into a 128 px model (spatial position embeddings re-initialised as the
reference's `--resume_different_size`, or bicubic-interpolated with `pos_embed_resize='interpolate'`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from spectralgpt_jax import models
from spectralgpt_jax.interop import keymap
from spectralgpt_jax.interop.torch_pickle import CheckpointError, load_pth, state_dict_of
from spectralgpt_jax.models.patch_embed import resize_spatial_pos_embed


class CheckpointMismatchError(CheckpointError):
  """Missing, unexpected or mis-shaped keys under strict loading; `.report` has the details."""

  def __init__(self, message: str, report: "LoadReport"):
    super().__init__(message)
    self.report = report


@dataclasses.dataclass
class LoadReport:
  source: str
  arch: str
  config: models.ModelConfig
  loaded: list[str] = dataclasses.field(default_factory=list)
  missing: list[str] = dataclasses.field(default_factory=list)        # model keys the checkpoint lacks (error)
  unexpected: list[str] = dataclasses.field(default_factory=list)     # checkpoint keys the model lacks (error)
  mismatched: list[str] = dataclasses.field(default_factory=list)     # "key: checkpoint (..) vs model (..)" (error)
  initialised: list[str] = dataclasses.field(default_factory=list)    # expected fresh: head, reinitialised pos-embeds
  interpolated: list[str] = dataclasses.field(default_factory=list)
  ignored: list[str] = dataclasses.field(default_factory=list)        # expected unused: decoder when fine-tuning
  checkpoint_args: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def ok(self) -> bool:
    return not (self.missing or self.unexpected or self.mismatched)

  def summary(self) -> str:
    parts = [f"{self.source} -> {self.arch}: {len(self.loaded)} tensors loaded"]
    for name in ("missing", "unexpected", "mismatched", "initialised", "interpolated", "ignored"):
      keys = getattr(self, name)
      if keys:
        parts.append(f"{name} ({len(keys)}): " + ", ".join(keys[:12]) + (f" ... ({len(keys) - 12} more in .report)" if len(keys) > 12 else ""))
    return "\n  ".join(parts)


def _checkpoint_kind(sd: dict) -> str:
  if "decoder_pred.weight" in sd:
    return "mae"
  if "head.weight" in sd:
    return "vit"
  if "patch_embed.proj.weight" in sd:
    return "encoder"
  raise CheckpointError("state dict has neither decoder_pred.weight (MAE) nor head.weight (classifier) nor "
                        f"patch_embed.proj.weight; first keys: {list(sd)[:8]}")


def _dims_from_state_dict(sd: dict) -> dict[str, int]:
  """Architecture fields readable from tensor shapes."""
  w = sd["patch_embed.proj.weight"]
  dims = dict(embed_dim=w.shape[0], t_patch_size=w.shape[2], patch_size=w.shape[3])
  dims["depth"] = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
  if "pos_embed_temporal" in sd:
    spectral, spatial = sd["pos_embed_temporal"].shape[1], sd["pos_embed_spatial"].shape[1]
    dims["num_frames"] = spectral * dims["t_patch_size"]
    dims["img_size"] = int(round(spatial ** 0.5)) * dims["patch_size"]
  if "head.weight" in sd:
    dims["num_classes"] = sd["head.weight"].shape[0]
  return dims


def infer_arch(sd: dict, target_kind: str | None, args: dict) -> str:
  """Pick the named variant whose kind, width, depth, patching and image size match the checkpoint."""
  kind = target_kind or ("vit" if _checkpoint_kind(sd) == "vit" else "mae")
  named = args.get("model")
  if isinstance(named, str) and named in models.VARIANTS and models.VARIANTS[named]["kind"] == kind:
    return named
  dims = _dims_from_state_dict(sd)
  keys = ("embed_dim", "depth", "t_patch_size", "img_size")
  candidates = [name for name, v in sorted(models.VARIANTS.items())
                if v["kind"] == kind and all(getattr(models.get_config(name), k) == dims[k]
                                             for k in keys if k in dims)]
  if not candidates:
    raise CheckpointError(f"cannot infer the architecture of a {kind} with {dims}; pass arch= (one of "
                          f"{', '.join(models.names())}) and overrides such as num_heads=")
  return candidates[0]


def load_reference_checkpoint(path: str | Path, arch: str | None = None, *, strict: bool = True, seed: int = 0,
                              **overrides):
  """Build the model `arch` (inferred when omitted) and fill it from an official `.pth` file.

  Returns `(model, LoadReport)`. Strict (default): any missing, unexpected or mis-shaped key raises
  `CheckpointMismatchError` naming each one. Expected differences are not errors and are listed in the report:
  the classifier head (fresh), decoder/mask token when fine-tuning from an MAE (ignored), and spatial position
  embeddings at another image size (re-initialised, or interpolated when `pos_embed_resize='interpolate'`).
  """
  checkpoint = load_pth(path)
  sd = state_dict_of(checkpoint, str(path))
  args = vars(checkpoint["args"]) if isinstance(checkpoint, dict) and hasattr(checkpoint.get("args"), "__dict__") \
      else {}
  source_kind = _checkpoint_kind(sd)
  target_kind = models.VARIANTS[arch]["kind"] if arch in models.VARIANTS else None
  if arch is None:
    arch = infer_arch(sd, None, args)
    target_kind = models.VARIANTS[arch]["kind"]
  elif arch not in models.VARIANTS:
    raise KeyError(f"unknown arch {arch!r}; known: {', '.join(models.names())}")

  # Band count and patching come from the checkpoint unless overridden; image size stays the arch's (that is how
  # a 96 px checkpoint is loaded into a 128 px model).
  dims = _dims_from_state_dict(sd)
  derived = {k: dims[k] for k in ("num_frames", "t_patch_size", "patch_size") if k in dims}
  if target_kind == "vit" and "pos_embed" in sd:
    derived.update(reference_pos_embed=True, reference_pooling=True)   # a reference fine-tuned classifier
  if target_kind == "vit" and source_kind == "vit":
    derived["num_classes"] = dims["num_classes"]
  cfg = models.get_config(arch, **{**derived, **overrides})
  model = models.build_from_config(cfg, seed=seed)
  report = LoadReport(source=str(path), arch=arch, config=cfg, checkpoint_args=args)

  state = nnx.state(model, nnx.Param)
  pure = nnx.to_pure_dict(state)
  used: set[str] = set()
  for p, variable in keymap.param_paths(model):
    key = keymap.torch_key(p)
    model_shape = tuple(variable.shape)
    expected = keymap.torch_shape(p, model_shape, cfg)
    if key not in sd:
      if key.startswith("head.") and source_kind != "vit":
        report.initialised.append(key)
      elif key == "pos_embed" and source_kind != "vit":
        report.initialised.append(key)      # the reference's zero-initialised joint pos_embed
      else:
        report.missing.append(key)
      continue
    used.add(key)
    value = sd[key]
    if tuple(value.shape) != expected:
      if "pos_embed" in key and key.endswith("spatial") and value.shape[2:] == expected[2:]:
        if cfg.pos_embed_resize == "interpolate":
          value = resize_spatial_pos_embed(value, int(round(expected[1] ** 0.5)))
          report.interpolated.append(f"{key}: {tuple(sd[key].shape)} -> {expected}")
        else:
          report.initialised.append(f"{key}: {tuple(sd[key].shape)} != {expected}, re-initialised as the reference")
          continue
      else:
        report.mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {expected}")
        continue
    _set(pure, p, jnp.asarray(keymap.from_torch(p, value)))
    report.loaded.append(key)

  for key in sorted(set(sd) - used):
    expected_unused = target_kind == "vit" and source_kind == "mae" and (
        key.startswith("decoder") or key == "mask_token" or key.startswith("pos_embed_"))
    expected_unused |= target_kind == "vit" and key.startswith("pos_embed_") and cfg.reference_pos_embed
    (report.ignored if expected_unused else report.unexpected).append(key)

  if strict and not report.ok:
    raise CheckpointMismatchError(f"checkpoint does not fit {arch}:\n  {report.summary()}", report)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)
  return model, report


def _set(tree: dict, path: tuple, value) -> None:
  for p in path[:-1]:
    tree = tree[p]
  tree[path[-1]] = value
