"""`assess`: a predicted class map against a reference raster, one confusion matrix over the pixels valid in both."""
import json
import re

import numpy as np
import pytest
import rasterio
import rasterio.warp
from rasterio.transform import from_origin

from spectralgpt_jax import assess, predict
from spectralgpt_jax.inference import assessment

CRS = "EPSG:32618"
X0, Y0 = 500000.0, 4200000.0
NAMES = ["water", "bare", "vegetation"]


def write(path, data, transform=from_origin(X0, Y0, 10, 10), nodata=None, names=NAMES, task="segmentation",
          dtype="uint8", crs=CRS) -> str:
  with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype=dtype,
                     crs=crs, transform=transform, nodata=nodata) as dst:
    dst.write(data.astype(dtype), 1)
    if names:
      dst.update_tags(1, class_names=json.dumps(names))
    if task:
      dst.update_tags(task=task)
  return str(path)


def run(capsys, *args):
  code = assess.main(list(args))
  return code, capsys.readouterr()


def test_confusion_counts_each_pixel_valid_in_both_and_maps_codes(tmp_path, capsys):
  rng = np.random.default_rng(0)
  predicted = rng.integers(0, 3, (40, 60))
  predicted[:5] = 255                                               # nodata rows of the map
  truth = np.where(rng.random((40, 60)) < 0.8, predicted, rng.integers(0, 3, (40, 60)))
  codes = np.array([10, 20, 30])[np.clip(truth, 0, 2)]               # the reference's own scheme
  codes[:, :4] = 0                                                   # unlabelled columns
  prediction = write(tmp_path / "map.tif", predicted, nodata=255)
  reference = write(tmp_path / "ref.tif", codes, names=None, task=None, dtype="uint16")
  code, out = run(capsys, "--prediction", prediction, "--reference", reference, "--output", str(tmp_path / "a"),
                  "--class_map", "10=water,20=1,30=vegetation", "--ignore", "0")
  assert code == 0, out.err
  use = (predicted != 255) & (codes != 0)
  expected = np.zeros((3, 3), np.int64)
  np.add.at(expected, (truth[use], predicted[use]), 1)
  result = json.loads((tmp_path / "a" / "metrics.json").read_text())
  np.testing.assert_array_equal(result["confusion_matrix"], expected)
  assert result["num_pixels"] == use.sum() == 35 * 56
  assert result["oa"] == pytest.approx(np.trace(expected) / use.sum())
  assert result["class_map"] == {"10": 0, "20": 1, "30": 2} and result["ignore"] == [0]
  rows = json.loads((tmp_path / "a" / "per_class.json").read_text())
  assert [r["class"] for r in rows] == NAMES and rows[1]["producers_accuracy"] == pytest.approx(
      expected[1, 1] / expected[1].sum())
  assert (tmp_path / "a" / "confusion_matrix.png").stat().st_size > 0
  assert f"overall accuracy {result['oa']:.4f}, kappa {result['kappa']:.4f}" in out.out


def test_a_coarser_reference_in_another_crs_is_read_by_nearest_neighbour(tmp_path):
  """A 20 m reference in UTM 17N: each 10 m map pixel takes the reference code under its centre."""
  predicted = np.zeros((40, 40), np.uint8)
  prediction = assessment.open_class_map(write(tmp_path / "map.tif", predicted, nodata=255))
  left, top = rasterio.warp.transform(CRS, "EPSG:32617", [X0 - 100], [Y0 + 100])
  coarse = np.random.default_rng(1).integers(0, 3, (30, 30))
  t17 = from_origin(left[0], top[0], 20, 20)
  reference = write(tmp_path / "ref17.tif", coarse, transform=t17, names=None, task=None, crs="EPSG:32617")
  cm = assessment.confusion(prediction, reference)
  prediction.close()
  cols, rows = np.meshgrid(np.arange(40) + 0.5, np.arange(40) + 0.5)
  x17, y17 = rasterio.warp.transform(CRS, "EPSG:32617", (X0 + 10 * cols).ravel(), (Y0 - 10 * rows).ravel())
  c, r = ~t17 * (np.array(x17), np.array(y17))
  under = coarse[np.floor(r).astype(int), np.floor(c).astype(int)]
  np.testing.assert_array_equal(cm[:, 0], np.bincount(under, minlength=3))      # the map says class 0 everywhere
  assert cm[:, 1:].sum() == 0


def test_a_tile_map_takes_the_majority_reference_code_and_band_nodata_counts(tmp_path):
  """A classification map (one 1280 m pixel per tile) against a 10 m reference: each tile is scored against the
  most frequent reference code under it, not the one sample at its centre; the chosen band's own nodata is left
  out even when another band is valid there."""
  tiles = write(tmp_path / "tiles.tif", np.ones((2, 2)), transform=from_origin(X0, Y0, 1280, 1280), nodata=255)
  codes = np.ones((2, 256, 256), np.uint8)
  for r in (64, 192):
    for c in (64, 192):
      codes[1, r - 4:r + 4, c - 4:c + 4] = 2                  # a small other class at each tile's centre
  codes[1, :, :128] = 9                                       # band 2 has nodata on the left half
  reference = tmp_path / "bands.tif"
  with rasterio.open(reference, "w", driver="GTiff", width=256, height=256, count=2, dtype="uint8", crs=CRS,
                     transform=from_origin(X0, Y0, 10, 10), nodata=9) as ds:
    ds.write(codes)
  prediction = assessment.open_class_map(tiles)
  try:
    np.testing.assert_array_equal(assessment.confusion(prediction, str(reference), band=1),
                                  [[0, 0, 0], [0, 4, 0], [0, 0, 0]])
    # band 2: the left tiles' 10 m pixels are all nodata (no valid code to take), the right ones are mostly 1
    np.testing.assert_array_equal(assessment.confusion(prediction, str(reference), band=2),
                                  [[0, 0, 0], [0, 2, 0], [0, 0, 0]])
  finally:
    prediction.close()


def test_kappa_and_change_metrics():
  cm = np.array([[20, 5], [10, 15]])
  assert assessment.kappa(cm) == pytest.approx((0.7 - 0.5) / 0.5)
  assert np.isnan(assessment.kappa(np.array([[10, 0], [0, 0]])))        # chance agreement 1: undefined
  scored = assessment.scores(cm, "change_detection")
  assert scored["change"]["f1"] == pytest.approx(30 / 45) and "change" not in assessment.scores(cm, "segmentation")


def test_predict_output_assessed_against_itself_and_a_perturbed_copy(exports, scene, tmp_path, capsys):
  out = tmp_path / "landcover.tif"
  assert predict.main(["--checkpoint", exports["segmentation"], "--input", str(scene["path"]), "--output", str(out),
                       "--no_progress"]) == 0
  with rasterio.open(out) as ds:
    predicted, profile = ds.read(1), ds.profile
  perturbed = predicted.copy()
  flip = (np.arange(predicted.size).reshape(predicted.shape) % 7 == 0) & (predicted != 255)
  perturbed[flip] = (perturbed[flip] + 1) % 5
  profile.update(driver="GTiff")
  with rasterio.open(tmp_path / "reference.tif", "w", **{k: v for k, v in profile.items() if k != "tiled"}) as ds:
    ds.write(perturbed, 1)
  code, captured = run(capsys, "--prediction", str(out), "--reference", str(out), "--output", str(tmp_path / "self"))
  assert code == 0, captured.err
  same = json.loads((tmp_path / "self" / "metrics.json").read_text())
  assert same["oa"] == 1.0 and same["num_pixels"] == int((predicted != 255).sum()) and same["class_names"] == [
      "water", "wetland", "bare", "sparse veg", "dense veg"]
  code, captured = run(capsys, "--prediction", str(out), "--reference", str(tmp_path / "reference.tif"), "--output",
                       str(tmp_path / "perturbed"))
  assert code == 0, captured.err
  result = json.loads((tmp_path / "perturbed" / "metrics.json").read_text())
  assert result["oa"] == pytest.approx(1 - flip.sum() / (predicted != 255).sum())


def test_bad_input_is_one_line_naming_the_file_or_flag(tmp_path, capsys):
  prediction = write(tmp_path / "map.tif", np.zeros((20, 20)), nodata=255)
  unknown = write(tmp_path / "codes.tif", np.full((20, 20), 7), names=None, task=None)
  far = write(tmp_path / "far.tif", np.zeros((20, 20)), transform=from_origin(X0 + 1e5, Y0, 10, 10), names=None)
  empty = write(tmp_path / "empty.tif", np.full((20, 20), 9), nodata=9, names=None)
  untagged = write(tmp_path / "untagged.tif", np.zeros((20, 20)), names=None)
  cases = [
      ((prediction, unknown), (), r"codes.tif: reference codes 7 \(400 px\) are not classes of .*map.tif \(0 water, "
                                  r"1 bare, 2 vegetation\); map them with --class_map"),
      ((prediction, far), (), "far.tif: its footprint does not overlap"),
      ((prediction, empty), (), "empty.tif: no pixel is valid in both"),
      ((prediction, prediction), ("--ignore", "0"), "no pixel is valid in both"),
      ((untagged, prediction), (), "untagged.tif: has no class_names band tag .* pass --class_names"),
      ((prediction, unknown), ("--class_map", "7=forest"), "--class_map '7=forest': '7=forest' is not CODE=CLASS"),
      ((prediction, unknown), ("--class_map", "7=3"), "class 3 of '7=3' is not one of the map's 3 classes"),
      ((prediction, unknown), ("--ignore", "x"), "--ignore 'x': must be integer codes"),
      ((prediction, unknown), ("--reference_band", "2"), "codes.tif: has 1 band.s.; --reference_band 2"),
      ((str(tmp_path / "missing.tif"), unknown), (), "missing.tif: not a readable raster"),
      ((write(tmp_path / "big.tif", np.full((20, 20), 2 ** 24 + 1), names=None, dtype="int32"), prediction), (),
       "big.tif: has no class_names"),
      ((prediction, write(tmp_path / "big_ref.tif", np.full((20, 20), 2 ** 24 + 1), names=None, dtype="int32")), (),
       r"big_ref.tif: holds codes of magnitude >= 2\*\*24"),
      ((write(tmp_path / "minus.tif", np.full((20, 20), -1), dtype="int16"), prediction), (),
       "minus.tif: holds the value -1, not one of its 3 classes .0-2.; if it marks missing pixels, declare it"),
      ((prediction, unknown), ("--output", prediction), "--output .*map.tif: exists and is not a directory"),
  ]
  for (pred, ref), extra, message in cases:
    code, captured = run(capsys, "--prediction", pred, "--reference", ref, "--output", str(tmp_path / "o"), *extra)
    assert code == 1, (message, captured)
    line = captured.err.strip().splitlines()[-1]
    assert line.startswith("error: ") and re.search(message, line), (message, line)
  assert not (tmp_path / "o").exists()                                   # nothing written after an error
  code, captured = run(capsys, "--prediction", untagged, "--reference", prediction, "--output", str(tmp_path / "n"),
                       "--class_names", "a,b,c")
  assert code == 0 and "overall accuracy 1.0000" in captured.out


def _population(seed=0, size=200):
  """A map with very unequal class areas and class-dependent errors, and the truth it was made from."""
  rng = np.random.default_rng(seed)
  truth = np.zeros((size, size), np.int64)
  truth[:, 150:] = 1                                           # 25 % class 1
  truth[40:60, 20:60] = 2                                      # 2 % class 2
  predicted = truth.copy()
  noise = rng.random(truth.shape)
  predicted[(truth == 0) & (noise < 0.10)] = 2                 # class 0 leaks into class 2: class 2 is over-mapped
  predicted[(truth == 1) & (noise < 0.05)] = 0
  return truth, predicted


def test_area_weighted_estimates_equal_the_census_and_recover_areas_from_a_stratified_sample(tmp_path, capsys):
  truth, predicted = _population()
  prediction = write(tmp_path / "map.tif", predicted, nodata=255)
  census = write(tmp_path / "census.tif", truth, names=None, task=None)
  code, captured = run(capsys, "--prediction", prediction, "--reference", census, "--output", str(tmp_path / "c"),
                       "--area_weighted")
  assert code == 0, captured.err
  full = json.loads((tmp_path / "c" / "metrics.json").read_text())
  weighted = full["area_weighted"]
  # with every pixel as reference, the stratified estimators are the plain proportions, with zero-width intervals
  assert weighted["oa"] == pytest.approx(full["oa"]) and weighted["oa_ci95"] < 0.02
  np.testing.assert_allclose(weighted["users_accuracy"], full["precision"], rtol=1e-12)
  np.testing.assert_allclose(weighted["producers_accuracy"], full["recall"], rtol=1e-12)
  np.testing.assert_allclose(weighted["area_pixels"], np.bincount(truth.ravel(), minlength=3), rtol=1e-12)
  assert weighted["area_km2"] == pytest.approx([a * 1e-4 for a in weighted["area_pixels"]])     # 10 m pixels
  # a stratified sample (600 reference points per map class, nodata elsewhere) estimates the true areas, which the
  # map's own counts and the unweighted sample proportions get wrong
  rng = np.random.default_rng(1)
  sample = np.full(truth.shape, 255, np.int64)
  for c in range(3):
    rows, cols = np.nonzero(predicted == c)
    pick = rng.choice(rows.size, 600, replace=False)
    sample[rows[pick], cols[pick]] = truth[rows[pick], cols[pick]]
  points = write(tmp_path / "points.tif", sample, nodata=255, names=None, task=None)
  code, captured = run(capsys, "--prediction", prediction, "--reference", points, "--output", str(tmp_path / "s"),
                       "--area_weighted")
  assert code == 0, captured.err
  assert "area-weighted overall accuracy" in captured.out
  result = json.loads((tmp_path / "s" / "metrics.json").read_text())
  estimate = result["area_weighted"]
  true_area = np.bincount(truth.ravel(), minlength=3)
  error = np.abs(np.array(estimate["area_pixels"]) - true_area)
  assert (error <= np.maximum(1.5 * np.array(estimate["area_pixels_ci95"]), 1)).all(), (estimate, true_area)
  assert abs(np.bincount(predicted.ravel(), minlength=3)[2] - true_area[2]) > 5 * estimate["area_pixels_ci95"][2]
  assert estimate["samples_per_map_class"] == [600, 600, 600] and result["num_pixels"] == 1800
  assert estimate["oa"] == pytest.approx(np.mean(truth == predicted), abs=2 * estimate["oa_ci95"])
  # too few samples in a mapped class is one line
  sample[predicted == 2] = 255
  sample[np.nonzero(predicted == 2)[0][0], np.nonzero(predicted == 2)[1][0]] = 2
  write(tmp_path / "short.tif", sample, nodata=255, names=None, task=None)
  code, captured = run(capsys, "--prediction", prediction, "--reference", str(tmp_path / "short.tif"), "--output",
                       str(tmp_path / "x"), "--area_weighted")
  assert code == 1 and "need at least two reference samples in every mapped class; too few in: vegetation (1)" in \
      captured.err
