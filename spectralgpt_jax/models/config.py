"""Model configuration: one frozen dataclass for every SpectralGPT model, and the named variants.

Field names follow the reference constructors (`img_size`, `patch_size`, `num_frames`, `t_patch_size`, `embed_dim`,
`depth`, `num_heads`, `decoder_*`, `mlp_ratio`, `num_classes`) so that overrides read like the PyTorch factories.
Every shape in the models is derived from these fields; nothing is hard-coded (the reference hard-codes 192 and 4
groups in its loss).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

KINDS = ("mae", "vit", "seg", "cd")
DENSE_KINDS = ("seg", "cd")             # per-pixel models: encoder + spectral merge + neck + FPN head
ATTENTION_IMPLS = ("auto", "xla", "explicit_vjp", "cudnn", "pallas", "chunked")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
GRAD_FENCES = ("auto", "on", "off")
POS_EMBED_RESIZE = ("reinit", "interpolate")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  kind: str = "mae"                      # "mae" (masked autoencoder), "vit" (classifier), "seg" (segmentation),
                                         # "cd" (siamese change detection)
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
  num_classes: int = 0                   # classifier / seg / cd (the seg and cd variants set 13 and 2)
  drop_path_rate: float = 0.0            # linspace(0, rate, depth) over encoder blocks
  dropout: float = 0.0                   # classifier: dropout before the head
  norm_pix_loss: bool = False            # per-patch normalised target for the masked term only (as the reference)
  masked_loss_weight: float = 1.0
  spectral_loss_weight: float = 1.0
  reference_pooling: bool = False        # classifier: pool tokens[:, 1:] as the reference (a bug, docs/deviations.md)
  reference_pos_embed: bool = False      # classifier: joint zero-init `pos_embed` as the reference (docs/deviations.md)
  pos_embed_resize: str = "reinit"       # loading at another image size: re-init spatial pos-embeds, or interpolate
  # seg / cd head. neck_channels: widths of the four 1x1 branch convs (+ GroupNorm(32)) on the merged
  # [N, h, w, D] map; the branches then upsample by 8, 4, 2, 1 to the FPN inputs of widths C/8, C/4, C/2, C with
  # C = neck_channels[3] (the reference's FPNHEAD(channels=2048) derives its input widths the same way).
  neck_channels: tuple[int, ...] = (512, 512, 1024, 2048)
  fpn_channels: int = 256                # FPN width (GroupNorm(16) on it)
  neck_dropout: float = 0.5              # SegMunich-only dropouts: after each branch and after the PPM (cd: 0)
  fuse_dropout: float = 0.5              # dropout of the FPN fuse layers (Conv_fuse*, fuse_all), in both tasks
  dtype: str = "float32"                 # compute dtype of matmuls (params stay float32)
  # How the blocks are computed (never what: each switch is tested equal to the plain path; none of them changes
  # the parameters, so checkpoints are interchangeable across them):
  attention_impl: str = "auto"           # see models/attention.py; auto = the fastest for the platform
  attention_chunk: int = 256             # query chunk for attention_impl="chunked"
  remat: str = "none"                    # recompute each block in the backward pass: none | full | dots (keep
                                         # matmul outputs) | dots_no_batch (keep weight matmuls, not attention's)
  scan_blocks: bool = False              # run the blocks under lax.scan: one compiled block (compile time of L/H)
  grad_fence: str = "auto"               # materialise the residual stream's gradient between blocks (layers.py):
                                         # auto = on for CPU, where XLA otherwise recomputes it per consumer

  def __post_init__(self):
    def fail(key, why):
      raise ValueError(f"model.{key}={getattr(self, key)!r}: {why}")
    # JSON (export metadata.json) turns tuples into lists; keep the config hashable and equal to the original.
    object.__setattr__(self, "neck_channels", tuple(self.neck_channels))
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
    if self.remat not in REMAT_POLICIES:
      fail("remat", f"must be one of {REMAT_POLICIES}")
    if self.grad_fence not in GRAD_FENCES:
      fail("grad_fence", f"must be one of {GRAD_FENCES}")
    if self.pos_embed_resize not in POS_EMBED_RESIZE:
      fail("pos_embed_resize", f"must be one of {POS_EMBED_RESIZE}")
    if self.dtype not in ("float32", "bfloat16", "float16"):
      fail("dtype", "must be float32, bfloat16 or float16")
    if not 0.0 <= self.drop_path_rate < 1.0:
      fail("drop_path_rate", "must be in [0, 1)")
    if self.kind in DENSE_KINDS:
      self._check_dense(fail)

  def _check_dense(self, fail):
    if self.num_classes <= 0:
      fail("num_classes", f"a {self.kind} model needs num_classes > 0 (SegMunich 13, OSCD 2)")
    if self.reference_pos_embed:
      fail("reference_pos_embed", "only the reference classifier has a joint pos_embed; seg/cd use separable ones")
    if self.patch_size != 8:
      fail("patch_size", "the seg/cd neck upsamples the patch grid by 8, so the logits match the input only for "
           "patch_size=8")
    channels = self.neck_channels
    if len(channels) != 4 or any(not isinstance(c, int) or c <= 0 or c % min(c, 32) for c in channels):
      fail("neck_channels", "needs four positive widths, multiples of 32 from 32 up (each branch has "
           "GroupNorm(32); narrower test widths use one group per channel)")
    if channels[3] % 8:
      fail("neck_channels", "the last width C must be divisible by 8 (the branch outputs are C/8, C/4, C/2, C)")
    if self.fpn_channels <= 0 or self.fpn_channels % min(self.fpn_channels, 16):
      fail("fpn_channels", "must be positive and a multiple of 16 from 16 up (the FPN layers have GroupNorm(16))")
    for key in ("neck_dropout", "fuse_dropout"):
      if not 0.0 <= getattr(self, key) < 1.0:
        fail(key, "must be in [0, 1)")

  @property
  def grid(self) -> tuple[int, int, int]:
    """Token grid (spectral groups T', patch rows, patch columns)."""
    side = self.img_size // self.patch_size
    return (self.num_frames // self.t_patch_size, side, side)

  @property
  def pyramid_channels(self) -> tuple[int, int, int, int]:
    """Widths of the seg/cd neck outputs m0..m3 (at 8x, 4x, 2x, 1x the patch grid) that feed the FPN."""
    c = self.neck_channels[3]
    return (c // 8, c // 4, c // 2, c)

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
# Tiny test variants match the parity fixtures (tests/data/reference/README.md).
_TINY_MAE = dict(img_size=16, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
_TINY_VIT = dict(img_size=16, num_classes=10)
# Tiny seg/cd: the downstream head fixture's widths (its token dim is 48; the tiny encoder keeps 32). 32 px gives a
# 4x4 grid, so the PPM's 3- and 6-bin pools have overlapping bins as at full size.
_TINY_DENSE = dict(img_size=32, neck_channels=(32, 32, 64, 128), fpn_channels=16)
# Reference seg/cd (SegMunich / OSCD copies of models_vit_tensor_CD): drop path 0.5, 13 or 2 classes; OSCD has no
# branch / PPM dropouts.
_DENSE_TASKS = {"seg": dict(num_classes=13, neck_dropout=0.5), "cd": dict(num_classes=2, neck_dropout=0.0)}


def resolve_attention(impl: str, platform: str, dtype=None) -> str:
  """The attention implementation `impl` means on `platform` ("cpu" | "gpu" | "cuda" | "rocm" | "tpu"): "auto" ->
  explicit_vjp on CPU (measured faster there, docs/benchmarks.md), pallas on TPU, cudnn on GPU for 16-bit
  `dtype` (cuDNN's fused kernel has no float32 path; xla otherwise); any other value is returned as is."""
  if impl != "auto":
    return impl
  if platform == "tpu":
    return "pallas"
  if platform in ("gpu", "cuda", "rocm"):
    sixteen_bit = dtype is not None and np.dtype(dtype).name in ("bfloat16", "float16")
    return "cudnn" if sixteen_bit and platform != "rocm" else "xla"
  return "explicit_vjp"


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
  # (t_patch 3, patch 8). The reference's t_patch-12 `vit_huge_patch8_128` cannot load the huge MAE:
  # ours uses t_patch 3 so it can.
  for size in ("base", "large", "huge"):
    d, depth, heads = _SIZES[size]
    v[f"vit_{size}_patch8_128"] = dict(kind="vit", img_size=128, embed_dim=d, depth=depth, num_heads=heads,
                                       drop_path_rate=0.2, num_classes=10)
  v["vit_base_patch8"] = dict(v["vit_base_patch8_128"], img_size=96)
  v["vit_base_patch8_2tensor_128"] = dict(v["vit_base_patch8_128"], t_patch_size=2)
  d, depth, heads = _SIZES["tiny"]
  v["vit_tiny"] = dict(kind="vit", embed_dim=d, depth=depth, num_heads=heads, **_TINY_VIT)

  for kind, task in _DENSE_TASKS.items():
    for size in ("base", "large"):
      d, depth, heads = _SIZES[size]
      v[f"{kind}_vit_{size}_patch8_128"] = dict(kind=kind, img_size=128, embed_dim=d, depth=depth, num_heads=heads,
                                                drop_path_rate=0.5, **task)
    d, depth, heads = _SIZES["tiny"]
    v[f"{kind}_vit_tiny"] = dict(kind=kind, embed_dim=d, depth=depth, num_heads=heads, drop_path_rate=0.5,
                                 **task, **_TINY_DENSE)
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
