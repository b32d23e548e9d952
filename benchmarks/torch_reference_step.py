r"""The PyTorch side of the CPU speed comparison: the reference's train step re-stated in plain PyTorch (same layers,
shapes and optimizer as the official SpectralGPT code: Conv3d 3x8x8 patch embedding, separable position
embeddings, timm-style pre-norm blocks with separate q/k/v projections and exact GELU, AdamW), written from the
published architecture; the reference's own code is GPL-3.0 and not part of this project. Prints one JSON line.

  python benchmarks/torch_reference_step.py --task mae --batch 4 --steps 3              # MAE ViT-B/8, 128 px
  python benchmarks/torch_reference_step.py --task classification --batch 4 --steps 3   # ViT-B/8 fine-tuning
  python benchmarks/torch_reference_step.py --task mae --dtype bfloat16                  # CPU autocast to bf16

Needs torch (the `torch` extra, or any CPU build). Run it beside `benchmarks/pretrain_step.py --batch 4` and
`benchmarks/finetune_step.py --task eurosat --batch 4` on the same machine, interleaved, and compare medians
(docs/benchmarks.md). Fields: task, dtype, batch, steps, step_s_median, step_s_min, img_per_s, threads, cpu, torch.
`--dtype bfloat16` runs forward and loss under `torch.autocast("cpu", torch.bfloat16)` (fp32 master weights), the
counterpart of our `compute_dtype=bfloat16`; the reference's own fp16 autocast is CUDA-only and does nothing on a CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from spectralgpt_jax import runtime  # noqa: E402  (the light top-level package: no JAX import)

DIM, DEPTH, HEADS, DEC_DIM, DEC_DEPTH, DEC_HEADS = 768, 12, 12, 512, 4, 16
IMG, PATCH, BANDS, T_PATCH = 128, 8, 12, 3
GROUPS, SIDE = BANDS // T_PATCH, IMG // PATCH
TOKENS = GROUPS * SIDE * SIDE


class Attention(nn.Module):
  def __init__(self, dim, heads):
    super().__init__()
    self.heads = heads
    self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

  def forward(self, x):
    n, length, dim = x.shape
    split = lambda t: t.reshape(n, length, self.heads, dim // self.heads).transpose(1, 2)
    q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
    weights = ((q * (dim // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    return self.proj((weights @ v).transpose(1, 2).reshape(n, length, dim))


class Block(nn.Module):
  def __init__(self, dim, heads, drop_path=0.0):
    super().__init__()
    self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, heads)
    self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
    self.drop_path = drop_path

  def _drop(self, x):
    if not self.training or self.drop_path == 0.0:
      return x
    keep = 1.0 - self.drop_path
    return x / keep * torch.floor(keep + torch.rand(x.shape[0], 1, 1))

  def forward(self, x):
    x = x + self._drop(self.attn(self.norm1(x)))
    return x + self._drop(self.mlp(self.norm2(x)))


class Embed(nn.Module):
  """Conv3d patch embedding + separable (spatial + spectral) position embeddings -> [N, T'*h*w, D]."""

  def __init__(self, dim):
    super().__init__()
    self.conv = nn.Conv3d(1, dim, kernel_size=(T_PATCH, PATCH, PATCH), stride=(T_PATCH, PATCH, PATCH))
    self.spatial = nn.Parameter(torch.zeros(1, SIDE * SIDE, dim))
    self.spectral = nn.Parameter(torch.zeros(1, GROUPS, dim))

  def forward(self, x):                                   # x [N, 1, bands, H, W]
    tokens = self.conv(x).flatten(3).permute(0, 2, 3, 1)   # [N, T', h*w, D]
    pos = self.spatial.unsqueeze(1) + self.spectral.unsqueeze(2)
    return (tokens + pos).flatten(1, 2)


class MAE(nn.Module):
  def __init__(self):
    super().__init__()
    self.embed = Embed(DIM)
    self.blocks = nn.ModuleList(Block(DIM, HEADS) for _ in range(DEPTH))
    self.norm = nn.LayerNorm(DIM, eps=1e-6)
    self.decoder_embed = nn.Linear(DIM, DEC_DIM)
    self.mask_token = nn.Parameter(torch.zeros(1, 1, DEC_DIM))
    self.decoder_pos = nn.Parameter(torch.zeros(1, TOKENS, DEC_DIM))
    self.decoder_blocks = nn.ModuleList(Block(DEC_DIM, DEC_HEADS) for _ in range(DEC_DEPTH))
    self.decoder_norm = nn.LayerNorm(DEC_DIM, eps=1e-6)
    self.pred = nn.Linear(DEC_DIM, T_PATCH * PATCH * PATCH)

  def forward(self, x, mask_ratio=0.9):
    tokens = self.embed(x)
    n, length, dim = tokens.shape
    keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(torch.rand(n, length), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    kept = torch.gather(tokens, 1, ids_shuffle[:, :keep, None].expand(-1, -1, dim))
    for block in self.blocks:
      kept = block(kept)
    y = self.decoder_embed(self.norm(kept))
    y = torch.cat([y, self.mask_token.expand(n, length - keep, -1)], dim=1)
    y = torch.gather(y, 1, ids_restore[:, :, None].expand(-1, -1, DEC_DIM)) + self.decoder_pos
    for block in self.decoder_blocks:
      y = block(y)
    pred = self.pred(self.decoder_norm(y))
    target = x.reshape(n, GROUPS, T_PATCH, SIDE, PATCH, SIDE, PATCH).permute(0, 1, 3, 5, 2, 4, 6)
    target = target.reshape(n, length, -1)
    mask = torch.ones(n, length)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    masked = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    group_sum = lambda v: v.reshape(n, GROUPS, SIDE * SIDE, -1).sum(1)
    return masked + ((group_sum(pred) - group_sum(target)) ** 2).mean()


class Classifier(nn.Module):
  def __init__(self, num_classes=10, drop_path=0.2):
    super().__init__()
    self.embed = Embed(DIM)
    self.blocks = nn.ModuleList(Block(DIM, HEADS, drop_path * i / (DEPTH - 1)) for i in range(DEPTH))
    self.norm = nn.LayerNorm(DIM, eps=1e-6)
    self.head = nn.Linear(DIM, num_classes)

  def forward(self, x, targets):
    tokens = self.embed(x)
    for block in self.blocks:
      tokens = block(tokens)
    logits = self.head(self.norm(tokens.mean(1)))
    return torch.sum(-targets * logits.log_softmax(-1), dim=-1).mean()   # soft targets (mixup / cutmix)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", required=True, choices=["mae", "classification"])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  args = parser.parse_args()
  torch.manual_seed(0)
  torch.set_num_threads(args.threads)
  model = MAE() if args.task == "mae" else Classifier()
  model.train()
  betas = (0.9, 0.95) if args.task == "mae" else (0.9, 0.999)
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=betas, weight_decay=0.05)
  x = torch.rand(args.batch, 1, BANDS, IMG, IMG)
  targets = torch.softmax(torch.rand(args.batch, 10), -1)

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
      loss = model(x) if args.task == "mae" else model(x, targets)
    loss.backward()
    opt.step()
    return float(loss.detach())

  step()
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  assert math.isfinite(loss)
  print(json.dumps({"task": args.task, "impl": "pytorch", "dtype": args.dtype, "batch": args.batch, "steps": args.steps,
                    "step_s_median": round(median, 4), "step_s_min": round(min(times), 4),
                    "img_per_s": round(args.batch / median, 3), "threads": torch.get_num_threads(),
                    "cpu": runtime.cpu_summary(), "torch": torch.__version__}))


if __name__ == "__main__":
  main()
