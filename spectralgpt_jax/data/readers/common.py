"""Shared reader pieces: validated tif reading, the skip report, exact-grid resampling.

Policy for bad input: every check raises `DataError` naming the file. Readers that are given a `Report`
(prepare --on_error=skip) catch DataError per example, record (file, reason) and go on; nothing is ever
zero-filled or clipped silently.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
from typing import Callable, Iterator, Sequence

import numpy as np
import tifffile


class DataError(ValueError):
  """Bad or missing input data. The message always names the offending file."""


class MissingSplitError(DataError, KeyError):
  """A dataset has no such split (a KeyError for lookups, a DataError for the one-line CLI report)."""

  def __str__(self) -> str:    # KeyError's str() would quote the message
    return str(self.args[0]) if self.args else ""


@dataclasses.dataclass
class Report:
  """What a reader skipped (on_error='skip') or excluded by design (cloud/snow lists, unlabelled...)."""

  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  excluded: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  read: int = 0
  details: dict = dataclasses.field(default_factory=dict)   # how the splits were chosen (e.g. EuroSAT's scheme)

  def skip(self, where: str, reason: str) -> None:
    self.skipped.append((where, reason))

  def summary(self) -> dict:
    return {
        "read": self.read,
        "skipped": len(self.skipped),
        "excluded": dict(self.excluded),
        "details": self.details,
        "skipped_examples": [{"file": f, "reason": r} for f, r in self.skipped],
    }

  def write(self, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
      json.dump(self.summary(), f, indent=1)


ON_ERROR = ("raise", "skip")


def guarded(items: Sequence, read_one: Callable, on_error: str, report: Report | None, name_of=str) -> Iterator:
  """Yield read_one(item) for each item; on DataError raise, or (on_error='skip') record it and continue."""
  if on_error not in ON_ERROR:
    raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
  for item in items:
    try:
      out = read_one(item)
    except DataError as e:
      if on_error == "raise":
        raise
      if report is not None:
        report.skip(name_of(item), str(e))
      continue
    if report is not None:
      report.read += 1
    yield out


def read_tif(path_or_bytes, name: str | None = None, ndim: int | None = None, shape=None, bands: int | None = None):
  """Read a GeoTIFF (path or bytes) into a validated uint16 array (HW or HWC).

  Checks: readable and complete (truncated files raise), expected rank / spatial size / band count, no NaN,
  no negative values, nothing above uint16. Float data with integral values is accepted and cast.
  """
  name = name or str(path_or_bytes)
  src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
  if not isinstance(src, io.BytesIO) and not os.path.exists(src):
    raise DataError(f"{name}: file not found")
  try:
    arr = tifffile.imread(src)
  except Exception as e:  # tifffile raises several types for truncated / corrupt files
    raise DataError(f"{name}: unreadable or truncated TIFF ({type(e).__name__}: {e})") from e
  return validate_pixels(arr, name, ndim=ndim, shape=shape, bands=bands)


def validate_pixels(arr: np.ndarray, name: str, ndim=None, shape=None, bands=None) -> np.ndarray:
  if ndim is not None and arr.ndim != ndim:
    raise DataError(f"{name}: expected a {ndim}-d array, got shape {arr.shape}")
  if shape is not None and tuple(arr.shape[:2]) != tuple(shape):
    raise DataError(f"{name}: expected spatial size {tuple(shape)}, got {arr.shape[:2]}")
  if bands is not None and (arr.ndim != 3 or arr.shape[-1] != bands):
    raise DataError(f"{name}: expected {bands} bands (H, W, {bands}), got shape {arr.shape}")
  if arr.size == 0:
    raise DataError(f"{name}: empty image {arr.shape}")
  if np.issubdtype(arr.dtype, np.floating):
    if not np.isfinite(arr).all():
      raise DataError(f"{name}: contains {int((~np.isfinite(arr)).sum())} NaN/inf pixels")
    if (arr != np.round(arr)).any():
      raise DataError(f"{name}: float pixels with fractional values; expected integer digital numbers")
  elif not np.issubdtype(arr.dtype, np.integer):
    raise DataError(f"{name}: unsupported pixel dtype {arr.dtype}")
  if arr.dtype != np.uint16:
    if arr.min() < 0:
      raise DataError(f"{name}: contains {int((arr < 0).sum())} negative pixels")
    if arr.max() > np.iinfo(np.uint16).max:
      raise DataError(f"{name}: values up to {arr.max()} do not fit uint16")
    arr = arr.astype(np.uint16)
  return arr


def linear_taps(positions: np.ndarray, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """2-tap linear interpolation at fractional source pixel `positions` (pixel centres at integers), edges clamped."""
  pos = np.clip(positions, 0, in_size - 1)
  i0 = np.floor(pos).astype(np.int64)
  i1 = np.minimum(i0 + 1, in_size - 1)
  return i0, i1, (pos - i0).astype(np.float32)


def resample_bilinear(band: np.ndarray, out_shape, row_pos=None, col_pos=None) -> np.ndarray:
  """Bilinear resampling of a 2-d band onto `out_shape`; float32 result.

  By default the output grid covers the same area as the input (pixel-area alignment, i.e. torch
  `align_corners=False`): output pixel centre i maps to source position (i + 0.5) * in/out - 0.5. For grids that
  are offset (the demo scene's bands have different origins), pass `row_pos`/`col_pos` source positions directly.
  """
  h, w = band.shape
  oh, ow = out_shape
  if row_pos is None:
    row_pos = (np.arange(oh) + 0.5) * (h / oh) - 0.5
  if col_pos is None:
    col_pos = (np.arange(ow) + 0.5) * (w / ow) - 0.5
  r0, r1, rw = linear_taps(np.asarray(row_pos, np.float64), h)
  c0, c1, cw = linear_taps(np.asarray(col_pos, np.float64), w)
  b = band.astype(np.float32)
  rows = b[r0] * (1 - rw)[:, None] + b[r1] * rw[:, None]
  return rows[:, c0] * (1 - cw)[None, :] + rows[:, c1] * cw[None, :]


def to_uint16(x: np.ndarray) -> np.ndarray:
  """Round a float array of (interpolated) digital numbers back to uint16. Bilinear never leaves the input
  range, so the clip only guards against float rounding at the ends."""
  return np.clip(np.rint(x), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def read_name_list(path: str) -> list[str]:
  """One name per line (CRLF tolerated, blank lines ignored); .bz2 transparently."""
  import bz2

  opener = bz2.open if path.endswith(".bz2") else open
  with opener(path, "rt", encoding="utf-8") as f:
    return [line.strip().split(",")[0] for line in f if line.strip()]


def require_dir(path: str, what: str) -> None:
  if not os.path.isdir(path):
    raise DataError(f"{path}: {what} directory not found")
  if not os.listdir(path):
    raise DataError(f"{path}: {what} directory is empty")
