"""numpy-only, picklable grain transforms on element dicts.

Nothing here imports JAX: these objects are pickled into grain worker processes, and a worker that imports and
initialises JAX grabs accelerator memory (google/grain#820).

Each geometric transform acts on the image keys it is given (`image`, or `image1`/`image2`) and on the
label-map keys (`mask`, `change`) with nearest-neighbour logic, so image and labels stay aligned.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import grain
import numpy as np

from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.data import families

STATS_DIR = os.path.join(os.path.dirname(__file__), "stats")
IMAGE_KEYS = ("image", "image1", "image2")
MAP_KEYS = ("mask", "change")
# eps of the reference's per-image min-max, per dataset (util/datasets.py, SegMunich and OSCD scripts).
# OSCD used no eps (NaN on constant bands); we use 1e-12 there instead. BigEarthNet v2.0 as v1.
REFERENCE_MINMAX_EPS = families.with_aliases({
    "fmow_sentinel": 1e-10,
    "bigearthnet": 1e-12,
    "segmunich": 1e-9,
    "oscd": 1e-12,
    "demo": 1e-12,
    "eurosat": 1e-12,
})


def load_stats(name: str, bands: Sequence[str] = bandlib.CANONICAL) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std) float32 arrays for `bands` from stats/<name>.json (keyed by band name, so never misaligned)."""
  with open(os.path.join(STATS_DIR, f"{name}.json"), encoding="utf-8") as f:
    table = json.load(f)["bands"]
  missing = [b for b in bands if b not in table]
  if missing:
    raise KeyError(f"statistics {name!r} have no entry for bands {missing}")
  return (
      np.array([table[b]["mean"] for b in bands], np.float32),
      np.array([table[b]["std"] for b in bands], np.float32),
  )


def _images(ex: dict):
  return [k for k in IMAGE_KEYS if k in ex]


# ----------------------------------------------------------------------------------------------- normalisation
class MinMaxPerImage(grain.transforms.Map):
  """(x - min) / (max - min + eps) per image and band: the reference's pre-training normalisation."""

  def __init__(self, eps: float = 1e-12):
    self.eps = eps

  def map(self, ex):
    out = dict(ex)
    for k in _images(ex):
      x = ex[k].astype(np.float32)
      lo, hi = x.min(axis=(0, 1)), x.max(axis=(0, 1))
      out[k] = (x - lo) / (hi - lo + self.eps)
    return out


class ZScore(grain.transforms.Map):
  """(x - mean) / std per band; mean/std already in the image's band order (use load_stats)."""

  def __init__(self, mean, std):
    self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)

  def map(self, ex):
    return {**ex, **{k: (ex[k].astype(np.float32) - self.mean) / self.std for k in _images(ex)}}


class SatMAE2Sigma(grain.transforms.Map):
  """SatMAE/SeCo `SentinelNormalize`: clip((x - (m - 2s)) / 4s * 255, 0, 255) -> uint8, then /255 (ToTensor).
  The uint8 truncation is reproduced on purpose: it is what the reference's BigEarthNet fine-tuning sees."""

  def __init__(self, mean, std):
    self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)

  def map(self, ex):
    out = dict(ex)
    lo = self.mean - 2 * self.std
    for k in _images(ex):
      x = np.clip((ex[k].astype(np.float32) - lo) / (4 * self.std) * 255.0, 0, 255).astype(np.uint8)
      out[k] = x.astype(np.float32) / 255.0
    return out


class FillMissingBands(grain.transforms.Map):
  """Bring an image with bands `src` to `wanted` (default the 12 canonical) with a missing-band policy."""

  def __init__(self, src, wanted=bandlib.CANONICAL, policy="band_mean", append_missing=False):
    self.src, self.wanted, self.policy, self.append = tuple(src), tuple(wanted), policy, append_missing

  def map(self, ex):
    return {
        **ex,
        **{k: bandlib.fill_missing(ex[k], self.src, self.wanted, self.policy, self.append) for k in _images(ex)},
    }


def normalizer(name: str, dataset: str = "demo", stats: str | None = None, bands=bandlib.CANONICAL):
  """The named normalisation: minmax_per_image | zscore | satmae_2sigma | none."""
  if name == "minmax_per_image":
    return MinMaxPerImage(REFERENCE_MINMAX_EPS.get(dataset, 1e-12))
  if name in ("zscore", "satmae_2sigma"):
    if stats is None:
      raise ValueError(f"normalization {name!r} needs a statistics table name (data.stats)")
    cls = ZScore if name == "zscore" else SatMAE2Sigma
    return cls(*load_stats(stats, bands))
  if name == "none":
    return ToFloat()
  raise ValueError(f"unknown normalization {name!r}")


class ToFloat(grain.transforms.Map):

  def map(self, ex):
    return {**ex, **{k: ex[k].astype(np.float32) for k in _images(ex)}}


# ----------------------------------------------------------------------------------------------- resampling
def cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys cubic convolution weights for taps at offsets -1, 0, 1, 2 (a=-0.75 as torch's bicubic)."""
  t = t[:, None]
  d = np.abs(np.array([-1.0, 0.0, 1.0, 2.0])[None, :] - t)
  w = np.where(d <= 1, ((a + 2) * d - (a + 3)) * d * d + 1, ((a * d - 5 * a) * d + 8 * a) * d - 4 * a)
  return np.where(d < 2, w, 0.0)


def resize_matrix(
    in_size: int, out_size: int, start: float = 0, length: float | None = None, method: str = "bicubic"
) -> np.ndarray:
  """[out, in] matrix resampling the window [start, start+length) of an axis to out_size samples.

  Same arithmetic as torch `interpolate(..., align_corners=False, antialias=False)` after cropping the window
  (torchvision's resized_crop on tensors, which the reference uses): taps outside the window are clamped to
  its border.
  """
  length = in_size - start if length is None else length
  lo, hi = int(start), int(start + length) - 1
  src = start + (np.arange(out_size) + 0.5) * (length / out_size) - 0.5
  m = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  if method == "bicubic":
    base = np.floor(src)
    w = cubic_weights(src - base)
    for tap in range(4):
      np.add.at(m, (rows, np.clip(base.astype(int) - 1 + tap, lo, hi)), w[:, tap])
  elif method == "bilinear":
    base = np.floor(np.clip(src, lo, hi))
    frac = np.clip(src, lo, hi) - base
    np.add.at(m, (rows, base.astype(int)), 1 - frac)
    np.add.at(m, (rows, np.minimum(base.astype(int) + 1, hi)), frac)
  elif method == "nearest":  # torch 'nearest': floor(out_index * scale)
    idx = np.floor(start + np.arange(out_size) * (length / out_size)).astype(int)
    m[rows, np.clip(idx, lo, hi)] = 1
  else:
    raise ValueError(f"unknown resize method {method!r}")
  return m.astype(np.float32)


def resize_crop(img: np.ndarray, box, size: tuple[int, int], method: str = "bicubic") -> np.ndarray:
  """Resample the crop box=(top, left, height, width) of an HW or HWC image to size=(h, w)."""
  top, left, h, w = box
  my = resize_matrix(img.shape[0], size[0], top, h, method)
  mx = resize_matrix(img.shape[1], size[1], left, w, method)
  if method == "nearest":  # keep integer label dtypes exact
    return img[my.argmax(1)][:, mx.argmax(1)]
  x = img.astype(np.float32)
  return _apply_taps(_apply_taps(x, *_taps(my), axis=0), *_taps(mx), axis=1)


def _taps(m: np.ndarray, k: int = 4):
  """(indices, weights) [out, k] of the <= 4 non-zero entries per row of a resize matrix."""
  idx = np.argsort(-np.abs(m), axis=1, kind="stable")[:, :k]
  return idx, np.take_along_axis(m, idx, axis=1)


def _apply_taps(x: np.ndarray, idx: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
  # Gather-and-sum instead of a dense matmul: no BLAS threads, which oversubscribe the cores when many grain
  # workers / read threads run at once (measured 3-10x slower on a loaded 2-core machine).
  shape = [1] * x.ndim
  shape[axis] = idx.shape[0]
  out = np.zeros(x.shape[:axis] + (idx.shape[0],) + x.shape[axis + 1 :], np.float32)
  for t in range(idx.shape[1]):
    out += np.take(x, idx[:, t], axis=axis) * w[:, t].reshape(shape)
  return out


def rrc_box(h: int, w: int, rng: np.random.Generator, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision RandomResizedCrop.get_params: 10 tries, then a centre crop clamped to the ratio range."""
  area = h * w
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
  in_ratio = w / h
  if in_ratio < ratio[0]:
    cw, ch = w, int(round(w / ratio[0]))
  elif in_ratio > ratio[1]:
    ch, cw = h, int(round(h * ratio[1]))
  else:
    cw, ch = w, h
  return (h - ch) // 2, (w - cw) // 2, ch, cw


# ----------------------------------------------------------------------------------------------- geometry
class RandomResizedCrop(grain.transforms.RandomMap):
  """Random crop of scale/ratio, resized to `size` (bicubic for images, nearest for label maps)."""

  def __init__(self, size: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), method: str = "bicubic"):
    self.size, self.scale, self.ratio, self.method = size, tuple(scale), tuple(ratio), method

  def random_map(self, ex, rng):
    key = _images(ex)[0]
    box = rrc_box(*ex[key].shape[:2], rng, self.scale, self.ratio)
    out = dict(ex)
    for k in _images(ex):
      out[k] = resize_crop(ex[k], box, (self.size, self.size), self.method)
    for k in MAP_KEYS:
      if k in ex:
        out[k] = resize_crop(ex[k], box, (self.size, self.size), "nearest")
    return out


class ResizeCenterCrop(grain.transforms.Map):
  """Eval transform: resize the shorter side to `resize` (bicubic), then centre crop `size` (torchvision
  Resize(int) + CenterCrop). The reference uses resize = int(size / 0.875), i.e. 146 for 128 and 109 for 96."""

  def __init__(self, size: int, resize: int | None = None, method: str = "bicubic"):
    self.size, self.resize, self.method = size, resize or int(size / 0.875), method

  def map(self, ex):
    key = _images(ex)[0]
    h, w = ex[key].shape[:2]
    if h <= w:
      rh, rw = self.resize, int(self.resize * w / h)
    else:
      rh, rw = int(self.resize * h / w), self.resize
    top, left = int(round((rh - self.size) / 2)), int(round((rw - self.size) / 2))
    out = dict(ex)
    for k in _images(ex) + [k for k in MAP_KEYS if k in ex]:
      method = self.method if k in IMAGE_KEYS else "nearest"
      full = resize_crop(ex[k], (0, 0, h, w), (rh, rw), method) if (rh, rw) != (h, w) else ex[k]
      out[k] = np.ascontiguousarray(full[top : top + self.size, left : left + self.size])
    return out


class RandomFlipRot(grain.transforms.RandomMap):
  """Horizontal / vertical flips with probability p each, and a random k*90 degree rotation if rot90."""

  def __init__(self, hflip: float = 0.5, vflip: float = 0.0, rot90: bool = False):
    self.hflip, self.vflip, self.rot90 = hflip, vflip, rot90

  def random_map(self, ex, rng):
    do_h, do_v = rng.random() < self.hflip, rng.random() < self.vflip
    k = int(rng.integers(0, 4)) if self.rot90 else 0
    out = dict(ex)
    for key in _images(ex) + [m for m in MAP_KEYS if m in ex]:
      x = ex[key]
      x = x[:, ::-1] if do_h else x
      x = x[::-1] if do_v else x
      out[key] = np.ascontiguousarray(np.rot90(x, k, axes=(0, 1)))
    return out


def window_starts(length: int, window: int, overlap: float) -> list[int]:
  """Start offsets of windows of `window` px with fractional `overlap`, covering [0, length) completely:
  the last window is shifted back to end at the border rather than dropping the tail (or padding)."""
  if length < window:
    raise ValueError(f"image side {length} is smaller than the window {window}")
  stride = max(1, int(round(window * (1 - overlap))))
  starts = list(range(0, length - window + 1, stride))
  if starts[-1] != length - window:
    starts.append(length - window)
  return starts


def sliding_windows(h: int, w: int, window: int = 128, overlap: float = 0.5) -> list[tuple[int, int]]:
  return [(y, x) for y in window_starts(h, window, overlap) for x in window_starts(w, window, overlap)]


# ----------------------------------------------------------------------------------------------- batch mixing
class MixupCutmix(grain.transforms.RandomMap):
  """timm-style batch Mixup / CutMix with label smoothing, on a batched element dict.

  Integer `label` (single-label) becomes a smoothed one-hot `[B, num_classes]`; multi-hot `labels` are smoothed
  the same way (off = eps/C, on = 1 - eps + eps/C). Each batch either mixes (p = mix_prob) or not; when it mixes it
  picks CutMix with `switch_prob` when both are on. The batch is mixed with its reverse, as timm's batch mode.
  """

  def __init__(
      self, num_classes: int, mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=1.0, switch_prob=0.5, label_smoothing=0.1
  ):
    self.c, self.mixup, self.cutmix = num_classes, mixup_alpha, cutmix_alpha
    self.mix_prob, self.switch_prob, self.smoothing = mix_prob, switch_prob, label_smoothing

  def _targets(self, batch):
    if "labels" in batch:
      y = batch["labels"].astype(np.float32)
    else:
      y = np.eye(self.c, dtype=np.float32)[np.asarray(batch["label"])]
    off = self.smoothing / self.c
    return y * (1 - self.smoothing) + off

  def random_map(self, batch, rng):
    x = batch["image"].astype(np.float32)
    y = self._targets(batch)
    lam, box = 1.0, None
    if rng.random() < self.mix_prob and (self.mixup > 0 or self.cutmix > 0):
      use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or rng.random() < self.switch_prob)
      lam = float(rng.beta(self.cutmix, self.cutmix) if use_cutmix else rng.beta(self.mixup, self.mixup))
      if use_cutmix:
        h, w = x.shape[1:3]
        cut = math.sqrt(1 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
        y0, y1 = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch // 2, 0, h)
        x0, x1 = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw // 2, 0, w)
        box = (y0, y1, x0, x1)
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # correct lam for the clipped box, as timm
    flipped = x[::-1]
    if box is not None:
      y0, y1, x0, x1 = box
      x = x.copy()
      x[:, y0:y1, x0:x1] = flipped[:, y0:y1, x0:x1]
    elif lam < 1.0:
      x = x * lam + flipped * (1 - lam)
    out = {k: v for k, v in batch.items() if k not in ("label", "labels")}
    out["image"] = x
    out["targets"] = (y * lam + y[::-1] * (1 - lam)).astype(np.float32)
    return out


class SelectKeys(grain.transforms.Map):
  """Keep only the keys a batch needs; labels become int32. An `id` (tfds gives bytes) becomes a str, which the
  pipeline keeps on the host (strings cannot become device arrays)."""

  def __init__(self, keys):
    self.keys = tuple(keys)

  def map(self, ex):
    missing = [k for k in self.keys if k not in ex]
    if missing:
      raise KeyError(f"element lacks keys {missing}; it has {sorted(ex)}")
    out = {k: ex[k] for k in self.keys}
    if "label" in out:
      out["label"] = np.int32(out["label"])
    if "id" in out:
      out["id"] = out["id"].decode("utf-8") if isinstance(out["id"], bytes) else str(out["id"])
    return out
