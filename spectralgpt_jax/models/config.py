"""Model configuration: one frozen dataclass for every SpectralGPT model, and the named variants.

Field names follow the reference constructors (`img_size`, `patch_size`, `num_frames`, `t_patch_size`, `embed_dim`,
`depth`, `num_heads`, `decoder_*`, `mlp_ratio`, `num_classes`) so that overrides read like the PyTorch factories.
Every shape in the models is derived from these fields; nothing is hard-coded (reference bug §10.1).
"""
from __future__ import annotations

import dataclasses
from typing import Any

KINDS = ("mae", "vit")
ATTENTION_IMPLS = ("xla", "cudnn", "chunked")
POS_EMBED_RESIZE = ("reinit", "interpolate")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  kind: str = "mae"                      # "mae" (masked autoencoder) or "vit" (classifier)
  img_size: int = 128
  patch_size: int = 8
  num_frames: int = 12                   # number of input bands (the depth axis of the 3D patch embedding)
  t_patch_size: int = 3                  # bands per spectral group
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  decoder_embed_dim: int = 512
  decoder_depth: int = 4
  decoder_num_heads: int = 16
  num_classes: int = 0                   # classifier only
  drop_path_rate: float = 0.0            # linspace(0, rate, depth) over encoder blocks
  dropout: float = 0.0                   # classifier: dropout before the head
  norm_pix_loss: bool = False            # per-patch normalised target for the masked term only (as the reference)
  masked_loss_weight: float = 1.0
  spectral_loss_weight: float = 1.0
  reference_pooling: bool = False        # classifier: pool tokens[:, 1:] as the reference (bug §10.7)
  reference_pos_embed: bool = False      # classifier: joint zero-init `pos_embed` as the reference (bug §10.8)
  pos_embed_resize: str = "reinit"       # loading at another image size: re-init spatial pos-embeds, or interpolate
  dtype: str = "float32"                 # compute dtype of matmuls (params stay float32)
  attention_impl: str = "xla"            # see layers.attention
  attention_chunk: int = 256             # query chunk for attention_impl="chunked"

  def __post_init__(self):
    def fail(key, why):
      raise ValueError(f"model.{key}={getattr(self, key)!r}: {why}")
    if self.kind not in KINDS:
      fail("kind", f"must be one of {KINDS}")
    if self.img_size % self.patch_size:
      fail("img_size", f"must be divisible by patch_size={self.patch_size}")
    if self.num_frames % self.t_patch_size:
      fail("num_frames", f"(band count) must be divisible by t_patch_size={self.t_patch_size}")
    if self.embed_dim % self.num_heads:
      fail("embed_dim", f"must be divisible by num_heads={self.num_heads}")
    if self.kind == "mae" and self.decoder_embed_dim % self.decoder_num_heads:
      fail("decoder_embed_dim", f"must be divisible by decoder_num_heads={self.decoder_num_heads}")
    if self.kind == "vit" and self.num_classes <= 0:
      fail("num_classes", "a classifier needs num_classes > 0")
    if self.attention_impl not in ATTENTION_IMPLS:
      fail("attention_impl", f"must be one of {ATTENTION_IMPLS}")
    if self.pos_embed_resize not in POS_EMBED_RESIZE:
      fail("pos_embed_resize", f"must be one of {POS_EMBED_RESIZE}")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      fail("dtype", "must be float32, bfloat16 or float16")
    if not 0.0 <= self.drop_path_rate < 1.0:
      fail("drop_path_rate", "must be in [0, 1)")

  @property
  def grid(self) -> tuple[int, int, int]:
    """Token grid (spectral groups T', patch rows, patch columns)."""
    side = self.img_size // self.patch_size
    return (self.num_frames // self.t_patch_size, side, side)

  @property
  def num_tokens(self) -> int:
    t, h, w = self.grid
    return t * h * w

  @property
  def patch_dim(self) -> int:
    """Length of one token's pixel vector, ordered (band-in-group, row, column)."""
    return self.t_patch_size * self.patch_size ** 2

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


_SIZES = {  # (embed_dim, depth, num_heads)
    "tiny": (32, 2, 2),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}
# Tiny test variants match the parity fixtures (../shared/fixtures/reference/README.md).
_TINY_MAE = dict(img_size=16, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
_TINY_VIT = dict(img_size=16, num_classes=10)


def _variants() -> dict[str, dict[str, Any]]:
  v: dict[str, dict[str, Any]] = {}
  for size in ("base", "large", "huge"):
    d, depth, heads = _SIZES[size]
    for img in (96, 128):
      v[f"mae_vit_{size}_patch8_{img}"] = dict(kind="mae", img_size=img, embed_dim=d, depth=depth, num_heads=heads)
  v["mae_vit_base_patch8_2tensor_128"] = dict(v["mae_vit_base_patch8_128"], t_patch_size=2)
  d, depth, heads = _SIZES["tiny"]
  v["mae_vit_tiny"] = dict(kind="mae", embed_dim=d, depth=depth, num_heads=heads, **_TINY_MAE)
  v["mae_vit_tiny_2tensor"] = dict(v["mae_vit_tiny"], t_patch_size=2)

  # Classifier factories of models_vit_tensor.py that are consistent with the released MAE checkpoints
  # (t_patch 3, patch 8). The reference's t_patch-12 `vit_huge_patch8_128` cannot load the huge MAE (§10.10):
  # ours uses t_patch 3 so it can.
  for size in ("base", "large", "huge"):
    d, depth, heads = _SIZES[size]
    v[f"vit_{size}_patch8_128"] = dict(kind="vit", img_size=128, embed_dim=d, depth=depth, num_heads=heads,
                                       drop_path_rate=0.2, num_classes=10)
  v["vit_base_patch8"] = dict(v["vit_base_patch8_128"], img_size=96)
  v["vit_base_patch8_2tensor_128"] = dict(v["vit_base_patch8_128"], t_patch_size=2)
  d, depth, heads = _SIZES["tiny"]
  v["vit_tiny"] = dict(kind="vit", embed_dim=d, depth=depth, num_heads=heads, **_TINY_VIT)
  return v


VARIANTS: dict[str, dict[str, Any]] = _variants()


def names() -> list[str]:
  return sorted(VARIANTS)


def get_config(name: str, **overrides) -> ModelConfig:
  """The config of a named variant with reference-style overrides (e.g. `img_size=96, num_classes=19`)."""
  if name not in VARIANTS:
    raise KeyError(f"unknown model {name!r}; known: {', '.join(names())}")
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise TypeError(f"unknown model override(s) {unknown} for {name!r}; valid: {sorted(fields)}")
  return ModelConfig(**{**VARIANTS[name], **overrides})
