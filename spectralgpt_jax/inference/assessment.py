"""Accuracy of a class map against a reference raster: one confusion matrix over every pixel both declare valid.

The prediction (a class map or change map that `predict` wrote, or any single-band class raster with its class
names in the band tags) fixes the grid; the reference (any raster over it: another CRS or resolution is fine) is
read onto that grid strip by strip, so memory follows the map's width: by nearest neighbour, or, where a map pixel
covers more than two reference pixels (a classification map: one pixel per tile), as the most frequent valid
reference code under it (GDAL's mode resampling). Reference codes
become class indices as they are, or through `class_map` ({code: index}); codes in `ignore` (and the reference's
nodata) are left out. A code that is neither a class nor mapped nor ignored is an error naming it: a scheme
mismatch would otherwise be scored as confusion. Metrics are those of the fine-tuning evaluation
(`tasks.metrics`): overall accuracy, per-class IoU / F1 / precision (user's accuracy) / recall (producer's
accuracy), mIoU, plus Cohen's kappa; and the change-class metrics for a two-class change map.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import rasterio.warp
from rasterio.enums import Resampling

from spectralgpt_jax.inference import gridded
from spectralgpt_jax.inference.scene_sources import SceneError
from spectralgpt_jax.tasks import metrics

STRIP_ROWS = 512


EXACT_CODES = 2 ** 24   # codes are read as float32, which holds every integer up to this exactly


@dataclasses.dataclass
class ClassMap:
  """The prediction: its grid, class names and task (from the tags `predict` writes), read through `source`
  (validity = its nodata and mask)."""
  path: str
  source: gridded.GridSource
  grid: gridded.Grid
  class_names: list[str]
  task: str | None

  def read(self, row: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    values, valid = self.source.read(["class"], 0, row, self.grid.width, height)
    return np.rint(values[..., 0]).astype(np.int64), valid

  def close(self) -> None:
    self.source.close()


def open_class_map(path: str, class_names: list[str] | None = None) -> ClassMap:
  ds = gridded.open_dataset(path)
  try:
    if ds.count != 1:
      raise SceneError(f"{path}: a class map has one band; this file has {ds.count}")
    if not np.issubdtype(np.dtype(ds.dtypes[0]), np.integer):
      raise SceneError(f"{path}: a class map holds class indices (an integer type); this band is {ds.dtypes[0]}")
    names = class_names or _tagged_names(path, ds)
    grid = gridded.Grid(ds.crs, ds.transform, ds.width, ds.height)
    return ClassMap(path, gridded.source_on(path, ds, {"class": 1}, grid), grid, names, ds.tags().get("task"))
  except BaseException:
    ds.close()
    raise


def _tagged_names(path: str, ds) -> list[str]:
  text = ds.tags(1).get("class_names")
  try:
    names = json.loads(text) if text else None
  except ValueError:
    names = None
  if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
    raise SceneError(f"{path}: has no class_names band tag (a map that predict did not write); pass --class_names")
  return names


def parse_class_map(text: str | None, class_names: list[str]) -> dict[int, int]:
  """'11=0,12=0,21=water' -> {11: 0, 12: 0, 21: <index of water>}; '' -> {}."""
  out = {}
  for part in (p.strip() for p in (text or "").split(",") if p.strip()):
    code, _, target = part.partition("=")
    try:
      code_value = int(code)
      index = class_names.index(target.strip()) if target.strip() in class_names else int(target)
    except ValueError:
      raise ValueError(f"--class_map {text!r}: {part!r} is not CODE=CLASS (a reference code = a class index or "
                       f"name of {', '.join(class_names)})") from None
    if not 0 <= index < len(class_names):
      raise ValueError(f"--class_map {text!r}: class {index} of {part!r} is not one of the map's "
                       f"{len(class_names)} classes")
    out[code_value] = index
  return out


def confusion(prediction: ClassMap, reference_path: str, *, band: int = 1, class_map: dict[int, int] | None = None,
              ignore: tuple[int, ...] = ()) -> np.ndarray:
  """int64 [K, K] pixel counts (rows reference, columns prediction) over the pixels valid in both."""
  return tally(prediction, reference_path, band=band, class_map=class_map, ignore=ignore)[0]


def tally(prediction: ClassMap, reference_path: str, *, band: int = 1, class_map: dict[int, int] | None = None,
          ignore: tuple[int, ...] = (), count_map: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
  """(`confusion`, and with `count_map` the map's valid pixels of each class: the strata of a sample stratified by
  map class, counted in the same pass over the map)."""
  k = len(prediction.class_names)
  ds = gridded.open_dataset(reference_path)
  try:
    if not 1 <= band <= ds.count:
      raise SceneError(f"{reference_path}: has {ds.count} band(s); --reference_band {band} is not one of them")
    gridded.check_overlap(reference_path, ds, prediction.grid, prediction.path)
    coarser = abs(prediction.grid.transform.determinant) > 2 * _pixel_area(ds, prediction.grid.crs)
    nodata = ds.nodatavals[band - 1]
    source = gridded.source_on(reference_path, ds, {"ref": band}, prediction.grid, band_nodata=nodata,
                               resampling=Resampling.mode if coarser else Resampling.nearest)
  except BaseException:
    ds.close()
    raise
  lookup = dict(class_map or {}) or {c: c for c in range(k)}
  keys = np.array(sorted(lookup), np.int64)
  targets = np.array([lookup[c] for c in keys.tolist()], np.int64)
  cm = np.zeros((k, k), np.int64)
  map_counts = np.zeros(k, np.int64) if count_map else None
  unknown: dict[int, int] = {}
  try:
    for row in range(0, prediction.grid.height, STRIP_ROWS):
      height = min(STRIP_ROWS, prediction.grid.height - row)
      predicted, predicted_ok = prediction.read(row, height)
      if count_map:
        map_counts += _class_counts(prediction, predicted[predicted_ok])
      values, reference_ok = source.read(["ref"], 0, row, prediction.grid.width, height)
      values = values[..., 0]
      reference_ok &= np.isfinite(values)
      if nodata is not None:   # a warp's validity covers all of a file's bands: this band's nodata is checked here
        reference_ok &= gridded.not_nodata(values, nodata)
      if np.any(np.abs(values[reference_ok]) >= EXACT_CODES):
        raise SceneError(f"{reference_path}: holds codes of magnitude >= 2**24, which are not read exactly; recode "
                         f"it to smaller integers")
      codes = np.rint(np.where(reference_ok, values, 0)).astype(np.int64)
      use = predicted_ok & reference_ok & ~np.isin(codes, ignore)
      codes, predicted = codes[use], predicted[use].astype(np.int64)
      found, counts = np.unique(codes, return_counts=True)
      for code, count in zip(found.tolist(), counts.tolist()):
        if code not in lookup:
          unknown[code] = unknown.get(code, 0) + count
      if unknown:
        continue
      if predicted.size and (predicted.min() < 0 or predicted.max() >= k):
        bad = int(predicted.min() if predicted.min() < 0 else predicted.max())
        raise SceneError(f"{prediction.path}: holds the value {bad}, not one of its {k} classes (0-{k - 1}); if it "
                         f"marks missing pixels, declare it as the file's nodata")
      truth = targets[np.searchsorted(keys, codes)]
      cm += metrics.confusion_matrix(truth, predicted, k, ignore_index=None)
  finally:
    source.close()
  if unknown:
    listed = ", ".join(f"{code} ({count} px)" for code, count in sorted(unknown.items())[:8])
    listed += f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
    raise SceneError(f"{reference_path}: reference codes {listed} are not classes of {prediction.path} "
                     f"({', '.join(f'{i} {n}' for i, n in enumerate(prediction.class_names))}); map them with "
                     f"--class_map CODE=CLASS or leave them out with --ignore")
  if not cm.sum():
    raise SceneError(f"{reference_path}: no pixel is valid in both it and {prediction.path} (nodata, --ignore, "
                     f"or footprints that meet only outside the map)")
  return cm, map_counts


def _pixel_area(ds, crs) -> float:
  """A reference pixel's area in the map's CRS units (its footprint mapped into that CRS, over its pixel count)."""
  left, bottom, right, top = rasterio.warp.transform_bounds(ds.crs, crs, *ds.bounds, densify_pts=21)
  return (right - left) * (top - bottom) / (ds.width * ds.height)


def kappa(cm: np.ndarray) -> float:
  """Cohen's kappa: (observed - chance agreement) / (1 - chance agreement)."""
  cm = np.asarray(cm, np.float64)
  total = cm.sum()
  observed = np.trace(cm) / total
  chance = float((cm.sum(0) * cm.sum(1)).sum() / total ** 2)
  return float((observed - chance) / (1 - chance)) if chance < 1 else float("nan")


def scores(cm: np.ndarray, task: str | None) -> dict:
  out = {**metrics.segmentation_metrics(cm), "kappa": kappa(cm)}
  if task == "change_detection" and cm.shape == (2, 2):
    out["change"] = metrics.change_detection_metrics(cm)
  return out


# ------------------------------------------------------------------- area-weighted estimates (stratified sample)
def _class_counts(prediction: ClassMap, values: np.ndarray) -> np.ndarray:
  """int64 [K] counts of valid map values (all must be classes)."""
  k = len(prediction.class_names)
  if values.size and (values.min() < 0 or values.max() >= k):
    raise SceneError(f"{prediction.path}: holds the value {int(values.max())}, not one of its {k} classes")
  return np.bincount(values, minlength=k)


def area_weighted(cm: np.ndarray, map_counts: np.ndarray, class_names: list[str], pixel_km2: float | None) -> dict:
  """Olofsson et al. (2014, Remote Sensing of Environment 148: 42-57) estimators for a reference sample stratified
  by map class: area-weighted overall, user's and producer's accuracy and each class's area, with 95 % confidence
  half-widths (1.96 standard errors). `cm`: [K, K] sample counts, rows reference, columns map; `map_counts`: each
  map class's pixels over the whole map. A map class with pixels but fewer than two samples is an error: its
  stratum's variance (and, without samples, its estimates) would be undefined."""
  n = np.asarray(cm, np.float64).T                       # n[i, j]: map class i, reference class j
  mapped = np.asarray(map_counts, np.float64)
  per_stratum = n.sum(axis=1)
  short = [f"{class_names[i]} ({int(per_stratum[i])})" for i in np.flatnonzero((mapped > 0) & (per_stratum < 2))]
  if short:
    raise SceneError(f"area-weighted estimates need at least two reference samples in every mapped class; too few "
                     f"in: {', '.join(short)}")
  keep = mapped > 0                                       # classes absent from the map carry no weight
  weights = mapped / mapped.sum()
  safe = np.where(per_stratum > 0, per_stratum, 1.0)
  p = weights[:, None] * n / safe[:, None]               # estimated area proportions of the cells
  users = np.where(keep, np.diag(n) / safe, np.nan)
  reference_share = p.sum(axis=0)
  producers = np.divide(np.diag(p), reference_share, out=np.full(len(p), np.nan), where=reference_share > 0)
  dof = np.where(keep, np.maximum(per_stratum - 1, 1), np.inf)
  oa_var = float(np.sum(np.where(keep, weights ** 2 * users * (1 - users) / dof, 0.0)))
  share_se = np.sqrt(np.sum((weights[:, None] * p - p ** 2) / dof[:, None], axis=0))
  rows_share = n / safe[:, None]                          # n_ij / n_i
  est_ref = (mapped[:, None] * rows_share).sum(axis=0)    # estimated reference pixels of each class
  producers_var = np.full(len(p), np.nan)
  for j in np.flatnonzero(est_ref > 0):
    others = [i for i in np.flatnonzero(keep) if i != j]
    own = mapped[j] ** 2 * (1 - producers[j]) ** 2 * users[j] * (1 - users[j]) / dof[j] if keep[j] else 0.0
    rest = sum(mapped[i] ** 2 * rows_share[i, j] * (1 - rows_share[i, j]) / dof[i] for i in others)
    producers_var[j] = (own + producers[j] ** 2 * rest) / est_ref[j] ** 2
  total = mapped.sum()
  out = {"oa": float(np.trace(p)), "oa_ci95": 1.96 * oa_var ** 0.5,
         "users_accuracy": _listed(users), "users_accuracy_ci95": _listed(1.96 * np.sqrt(users * (1 - users) / dof)),
         "producers_accuracy": _listed(producers), "producers_accuracy_ci95": _listed(1.96 * np.sqrt(producers_var)),
         "area_share": _listed(reference_share), "area_share_ci95": _listed(1.96 * share_se),
         "area_pixels": _listed(reference_share * total), "area_pixels_ci95": _listed(1.96 * share_se * total),
         "map_pixels": [int(v) for v in mapped], "samples_per_map_class": [int(v) for v in per_stratum]}
  if pixel_km2:
    out["area_km2"] = _listed(reference_share * total * pixel_km2)
    out["area_km2_ci95"] = _listed(1.96 * share_se * total * pixel_km2)
  return out


def _listed(values) -> list:
  return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, np.float64)]


def pixel_km2(prediction: ClassMap) -> float | None:
  """A map pixel's area in km² when its CRS is projected in metres (else None: areas stay in pixels)."""
  crs = prediction.grid.crs
  if crs.is_geographic or (crs.linear_units or "").lower() not in ("metre", "meter", "m"):
    return None
  return abs(prediction.grid.transform.determinant) / 1e6
