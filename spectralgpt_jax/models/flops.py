"""Analytic FLOP counts of the SpectralGPT models (matmuls and attention only; 1 multiply-add = 2 FLOPs).

Used for benchmarks and MFU. Elementwise ops, LayerNorm and softmax are ignored (<2 % for ViT-B/8 at 1024 tokens).
A training step is counted as 3x the forward pass (backward = 2x forward), the usual convention.
"""
from __future__ import annotations

from spectralgpt_jax.models.config import ModelConfig
from spectralgpt_jax.models.mae import num_kept


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
  length = cfg.num_tokens
  return (2 * length * cfg.patch_dim * cfg.embed_dim + cfg.depth * block_flops(length, cfg.embed_dim, cfg.mlp_ratio)
          + 2 * cfg.embed_dim * cfg.num_classes)


def train_step_flops(cfg: ModelConfig, mask_ratio: float = 0.9) -> int:
  forward = mae_forward_flops(cfg, mask_ratio) if cfg.kind == "mae" else vit_forward_flops(cfg)
  return 3 * forward
