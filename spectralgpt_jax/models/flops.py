"""Analytic FLOP counts of the SpectralGPT models (matmuls, convolutions and attention; 1 multiply-add = 2 FLOPs).

Used for benchmarks and MFU. Elementwise ops, LayerNorm/GroupNorm, softmax, pooling and bilinear resizes are
ignored (<2 % for ViT-B/8 at 1024 tokens).
A training step is counted as 3x the forward pass (backward = 2x forward), the usual convention. With frozen
parameters (`config.optimizer.freeze`) a layer costs 1x forward, plus 1x for the activation gradient when it lies at
or above the lowest trained layer (counted for that layer too, as the 3x convention counts it for the first layer),
plus 1x for the weight gradient when it trains itself.
"""
from __future__ import annotations

from typing import Sequence

from spectralgpt_jax.models.config import DENSE_KINDS, ModelConfig
from spectralgpt_jax.models.mae import num_kept
from spectralgpt_jax.models.neck import NECK_SCALES, PPM_BINS


def block_flops(tokens: int, dim: int, mlp_ratio: float) -> int:
  projections = 4 * 2 * tokens * dim * dim                 # q, k, v, proj
  attention = 2 * 2 * tokens * tokens * dim                # q k^T and weights v
  mlp = 2 * 2 * tokens * dim * int(dim * mlp_ratio)        # fc1 and fc2
  return projections + attention + mlp


def mae_forward_flops(cfg: ModelConfig, mask_ratio: float) -> int:
  """Forward FLOPs for one image: patch embedding on all tokens (as the reference's Conv3d), encoder on the kept
  tokens, decoder on all tokens."""
  length, keep = cfg.num_tokens, num_kept(cfg.num_tokens, mask_ratio)
  flops = 2 * length * cfg.patch_dim * cfg.embed_dim
  flops += cfg.depth * block_flops(keep, cfg.embed_dim, cfg.mlp_ratio)
  flops += 2 * keep * cfg.embed_dim * cfg.decoder_embed_dim
  flops += cfg.decoder_depth * block_flops(length, cfg.decoder_embed_dim, cfg.mlp_ratio)
  flops += 2 * length * cfg.decoder_embed_dim * cfg.patch_dim
  return flops


def vit_forward_flops(cfg: ModelConfig) -> int:
  return encoder_flops(cfg) + 2 * cfg.embed_dim * cfg.num_classes


def encoder_flops(cfg: ModelConfig) -> int:
  """Patch embedding and every block on all tokens, for one image."""
  length = cfg.num_tokens
  return 2 * length * cfg.patch_dim * cfg.embed_dim + cfg.depth * block_flops(length, cfg.embed_dim, cfg.mlp_ratio)


def dense_head_flops(cfg: ModelConfig) -> int:
  """Spectral merge, neck, PPM, FPN and 3x3 classifier of the seg/cd head, for one feature map."""
  t, h, w = cfg.grid
  pixels, dim, f = h * w, cfg.embed_dim, cfg.fpn_channels
  flops = 2 * pixels * dim * t                                             # merge T' -> 1
  for width, out, scale in zip(cfg.neck_channels, cfg.pyramid_channels, NECK_SCALES):
    flops += 2 * pixels * dim * width                                      # 1x1 conv D -> C_i
    if scale > 1:
      flops += 2 * pixels * scale * scale * width * out                    # transposed conv k = s
  c3 = cfg.pyramid_channels[3]
  flops += sum(2 * bins * bins * c3 * f for bins in PPM_BINS)             # PPM 1x1 convs on the pooled maps
  flops += 2 * pixels * (len(PPM_BINS) * f + c3) * f                       # PPM output conv
  flops += 2 * (4 * pixels) * f * f                                        # conv_x1 at 2x
  for level, width in enumerate(cfg.pyramid_channels[2::-1]):              # lateral + smooth at 2x, 4x, 8x
    flops += 2 * pixels * 4 ** (level + 1) * (width * f + f * f)
  full = pixels * 64
  flops += 2 * full * 4 * f * f                                            # fuse_all
  return flops + 2 * full * 9 * f * cfg.num_classes                        # classifier


def dense_forward_flops(cfg: ModelConfig) -> int:
  """Forward FLOPs for one sample: seg = one image; cd = two dates through the encoder and merge, one head."""
  images = 2 if cfg.kind == "cd" else 1
  t, h, w = cfg.grid
  return images * encoder_flops(cfg) + (images - 1) * 2 * h * w * cfg.embed_dim * t + dense_head_flops(cfg)


def forward_flops(cfg: ModelConfig, mask_ratio: float = 0.9) -> int:
  if cfg.kind == "mae":
    return mae_forward_flops(cfg, mask_ratio)
  if cfg.kind in DENSE_KINDS:
    return dense_forward_flops(cfg)
  return vit_forward_flops(cfg)


def layer_forward_flops(cfg: ModelConfig, mask_ratio: float = 0.9) -> list[int]:
  """Forward FLOPs per layer id (as `train.optim.layer_id`): 0 the patch embedding, i + 1 encoder block i, depth + 1
  everything after the encoder (MAE decoder, classifier head, dense neck and head); they sum to forward_flops."""
  images = 2 if cfg.kind == "cd" else 1
  tokens = num_kept(cfg.num_tokens, mask_ratio) if cfg.kind == "mae" else cfg.num_tokens
  embed = images * 2 * cfg.num_tokens * cfg.patch_dim * cfg.embed_dim
  blocks = [images * block_flops(tokens, cfg.embed_dim, cfg.mlp_ratio)] * cfg.depth
  return [embed, *blocks, forward_flops(cfg, mask_ratio) - embed - sum(blocks)]


def train_step_flops(cfg: ModelConfig, mask_ratio: float = 0.9, trained_layers: Sequence[bool] | None = None) -> int:
  """FLOPs of one training step for one example; `trained_layers[i]`: whether layer id i has trained parameters
  (None: all of them, 3x the forward pass)."""
  if trained_layers is None:
    return 3 * forward_flops(cfg, mask_ratio)
  layers = layer_forward_flops(cfg, mask_ratio)
  if len(trained_layers) != len(layers):
    raise ValueError(f"trained_layers has {len(trained_layers)} entries; the model has {len(layers)} layer ids")
  lowest = next((i for i, trained in enumerate(trained_layers) if trained), len(layers))
  return sum(layers) + sum(layers[lowest:]) + sum(f for f, trained in zip(layers, trained_layers) if trained)
