"""Reconstruction previews: one PNG per call, a row per example, columns

  RGB input | RGB masked input | RGB reconstruction | SWIR input | SWIR masked input | SWIR reconstruction

RGB is the true-colour composite of B04/B03/B02, SWIR is one short-wave infrared band (B11, else B12) in grey.
Each example is contrast-stretched with the 2nd/98th percentiles of its *input*, and the same stretch is applied to
the masked input and the reconstruction, so brightness differences are the model's, not the display's.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

RGB_BANDS = ("B04", "B03", "B02")
SWIR_CHOICES = ("B11", "B12")
MIN_PANEL_PX = 96       # tiny test images (16 px) are upscaled (nearest) so that the patches stay visible
GAP_PX = 2


def _band_index(bands: Sequence[str], wanted: Sequence[str]) -> list[int]:
  missing = [b for b in wanted if b not in bands]
  if missing:
    raise ValueError(f"preview needs bands {list(wanted)}; the model's bands are {list(bands)}")
  return [list(bands).index(b) for b in wanted]


def _stretch(reference: np.ndarray, *images: np.ndarray) -> list[np.ndarray]:
  low, high = np.percentile(reference, [2, 98])
  scale = max(high - low, 1e-6)
  return [np.clip((im - low) / scale, 0, 1) for im in images]


def _to_uint8(panel: np.ndarray, size: int) -> np.ndarray:
  if panel.ndim == 2:
    panel = np.repeat(panel[..., None], 3, axis=-1)
  repeat = max(1, -(-size // panel.shape[0]))
  panel = panel.repeat(repeat, axis=0).repeat(repeat, axis=1)
  return (panel * 255 + 0.5).astype(np.uint8)


def preview_grid(images: dict[str, np.ndarray], bands: Sequence[str]) -> np.ndarray:
  """uint8 [rows, cols, 3] grid from {"input", "masked", "reconstruction"} arrays [n, H, W, bands]."""
  rgb = _band_index(bands, RGB_BANDS)
  swir_band = next((b for b in SWIR_CHOICES if b in bands), None)
  if swir_band is None:
    raise ValueError(f"preview needs one of {SWIR_CHOICES}; the model's bands are {list(bands)}")
  swir = _band_index(bands, (swir_band,))[0]
  kinds = ("input", "masked", "reconstruction")
  n, height = images["input"].shape[:2]
  size = max(height, MIN_PANEL_PX)
  rows = []
  for i in range(n):
    # One stretch per channel for RGB keeps colours comparable between input and reconstruction.
    rgb_panels = _stretch_channels(images["input"][i][..., rgb], [images[k][i][..., rgb] for k in kinds])
    swir_panels = _stretch(images["input"][i][..., swir], *[images[k][i][..., swir] for k in kinds])
    panels = [_to_uint8(p, size) for p in rgb_panels + swir_panels]
    gap = np.full((panels[0].shape[0], GAP_PX, 3), 255, np.uint8)
    row = np.concatenate([x for p in panels for x in (p, gap)][:-1], axis=1)
    rows.extend([row, np.full((GAP_PX, row.shape[1], 3), 255, np.uint8)])
  return np.concatenate(rows[:-1], axis=0)


def _stretch_channels(reference: np.ndarray, images: list[np.ndarray]) -> list[np.ndarray]:
  out = [np.empty_like(im, dtype=np.float32) for im in images]
  for c in range(reference.shape[-1]):
    stretched = _stretch(reference[..., c], *[im[..., c] for im in images])
    for o, s in zip(out, stretched):
      o[..., c] = s
  return out


def save_preview(workdir: str, step: int, images: dict[str, np.ndarray], bands: Sequence[str]) -> str:
  """Write DIR/images/recon_<step>.png and return its path."""
  directory = os.path.join(workdir, "images")
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, f"recon_{step:07d}.png")
  Image.fromarray(preview_grid({k: np.asarray(v, np.float32) for k, v in images.items()}, bands)).save(path)
  return path
