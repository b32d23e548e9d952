"""`predict` and `embed` end to end on a crop of the real demo scene, with tiny exported models of every task."""
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from affine import Affine
from rio_cogeo.cogeo import cog_validate

from demo_crop import CANONICAL, NODATA_CORNER, write_multiband
from spectralgpt_jax import embed, predict
from spectralgpt_jax.inference import checkpoint as ckpt_lib
from spectralgpt_jax.inference import scene_io
from spectralgpt_jax.inference.writers import OutputError


def run_predict(checkpoint, scene_path, output, *extra):
  return predict.main(["--checkpoint", checkpoint, "--input", str(scene_path), "--output", str(output),
                       "--no_progress", "--batch_size", "8", *extra])


def read(path):
  with rasterio.open(path) as ds:
    return ds.read(), ds.profile, ds.tags(1), ds.descriptions


def assert_on_grid(path, scene, dtype, nodata):
  ok, errors, _ = cog_validate(str(path))
  assert ok, errors
  with rasterio.open(path) as ds:
    assert ds.crs == scene["crs"] and ds.transform.almost_equals(scene["transform"])
    assert (ds.height, ds.width) == scene["data"].shape[:2]
    assert ds.dtypes[0] == dtype
    assert (np.isnan(ds.nodata) if np.isnan(nodata) else ds.nodata == nodata)


def test_segmentation_class_map_and_probabilities(exports, scene, tmp_path):
  out = tmp_path / "seg.tif"
  assert run_predict(exports["segmentation"], scene["path"], out, "--probabilities") == 0
  assert sorted(os.listdir(tmp_path)) == ["seg.png", "seg.tif", "seg_probabilities.tif"]  # no staging left
  assert_on_grid(out, scene, "uint8", 255)
  assert_on_grid(tmp_path / "seg_probabilities.tif", scene, "float32", float("nan"))
  classes, _, tags, descriptions = read(out)
  assert json.loads(tags["class_names"]) == ["water", "wetland", "bare", "sparse veg", "dense veg"]
  assert descriptions == ("class",)
  with rasterio.open(out) as ds:
    assert ds.colormap(1)[255] == (0, 0, 0, 0) and ds.tags()["task"] == "segmentation"
  classes = classes[0]
  assert ((classes == 255) == ~scene["valid"]).all()       # nodata in -> nodata out, everything else predicted
  probs, _, _, names = read(tmp_path / "seg_probabilities.tif")
  assert names == ("water", "wetland", "bare", "sparse veg", "dense veg")
  valid = scene["valid"]
  np.testing.assert_allclose(probs.sum(0)[valid], 1.0, atol=1e-5)
  assert np.isnan(probs[:, ~valid]).all()
  assert (probs.argmax(0)[valid] == classes[valid]).all()


def test_shuffled_named_bands_and_bands_flag_are_bit_identical(exports, scene, tmp_path):
  order = list(np.random.default_rng(0).permutation(len(CANONICAL)))
  aliases = {"B02": "B2", "B08": "B8", "B8A": "B8a", "B03": "green"}   # other spellings, as tools write them
  named = [aliases.get(CANONICAL[i], CANONICAL[i]) for i in order]
  shuffled = write_multiband(tmp_path / "shuffled.tif", scene["data"], scene["transform"], scene["crs"], named,
                             nodata=0, order=order)
  unnamed = write_multiband(tmp_path / "unnamed.tif", scene["data"], scene["transform"], scene["crs"], None,
                            nodata=0, order=order)
  outputs = []
  for name, path, extra in (("canonical", scene["path"], ()), ("shuffled", shuffled, ()),
                            ("unnamed", unnamed, ("--bands", ",".join(CANONICAL[i] for i in order)))):
    assert run_predict(exports["segmentation"], path, tmp_path / f"{name}.tif", "--probabilities", *extra) == 0
    outputs.append([read(tmp_path / f"{name}{suffix}.tif")[0] for suffix in ("", "_probabilities")])
  for other in outputs[1:]:
    for a, b in zip(outputs[0], other):
      np.testing.assert_array_equal(a, b)


def test_native_resolution_band_folder(exports, scene, band_folder, tmp_path):
  out = tmp_path / "folder.tif"
  assert run_predict(exports["segmentation"], band_folder, out) == 0
  with rasterio.open(out) as ds:
    assert ds.transform.almost_equals(scene["transform"]) and ds.shape == scene["data"].shape[:2]
    from_folder = ds.read(1)
  assert (from_folder != 255).all()          # no nodata: the coarse bands cover the 10 m crop
  assert run_predict(exports["segmentation"], scene["path"], tmp_path / "tif.tif") == 0
  with rasterio.open(tmp_path / "tif.tif") as ds:
    from_tif = ds.read(1)
  # Same pixels -> same classes, wherever no tile touched the GeoTIFF's nodata corner (32 px tiles, stride 16).
  rows, cols = np.indices(from_tif.shape)
  untouched = (rows >= NODATA_CORNER + 24) | (cols >= NODATA_CORNER + 24)
  np.testing.assert_array_equal(from_folder[untouched], from_tif[untouched])


def test_position_consistency_under_a_shift_by_the_stride(exports, scene, tmp_path):
  stride = 16  # 32 px tiles, 50 % overlap
  shifted = write_multiband(tmp_path / "shifted.tif", scene["data"][stride:, stride:],
                            scene["transform"] @ Affine.translation(stride, stride), scene["crs"], CANONICAL, nodata=0)
  for name, path in (("a", scene["path"]), ("b", shifted)):
    assert run_predict(exports["segmentation"], path, tmp_path / f"{name}.tif", "--probabilities") == 0
  a, b = (read(tmp_path / f"{n}_probabilities.tif")[0] for n in "ab")
  # The first stride of the shifted scene is covered by fewer tiles; everything after it by the same tiles.
  np.testing.assert_allclose(b[:, stride:, stride:], a[:, 2 * stride:, 2 * stride:], atol=1e-6)


def test_change_detection_resamples_the_later_date_onto_the_first(exports, scene, tmp_path):
  later = write_multiband(tmp_path / "later.tif", scene["data"][5:, 7:],  # another extent (and grid origin)
                          scene["transform"] @ Affine.translation(7, 5), scene["crs"], CANONICAL, nodata=0)
  out = tmp_path / "change.tif"
  assert run_predict(exports["change_detection"], scene["path"], out, "--input2", later, "--probabilities") == 0
  assert_on_grid(out, scene, "uint8", 255)
  change = read(out)[0][0]
  valid = scene["valid"].copy()
  valid[:5] = valid[:, :7] = False                       # not covered by the later date
  assert ((change == 255) == ~valid).all() and set(np.unique(change[valid])) <= {0, 1}
  assert json.loads(read(out)[2]["class_names"]) == ["no change", "change"]


def test_classification_is_one_pixel_per_tile(exports, scene, tmp_path):
  out = tmp_path / "labels.tif"
  assert run_predict(exports["classification"], scene["path"], out, "--probabilities") == 0
  h, w = scene["data"].shape[:2]
  with rasterio.open(out) as ds:
    assert (ds.height, ds.width) == (-(-h // 16), -(-w // 16))
    assert ds.transform.almost_equals(scene["transform"] @ Affine.scale(16)) and ds.crs == scene["crs"]
    labels = ds.read(1)
  assert cog_validate(str(out))[0]
  corner = NODATA_CORNER // 16
  assert (labels[:corner, :corner] == 255).all() and (labels[corner:] < 10).all()
  probs = read(tmp_path / "labels_probabilities.tif")[0]
  np.testing.assert_allclose(probs[:, corner:].sum(0), 1.0, atol=1e-5)   # EuroSAT: softmax


def test_mae_reconstruction_is_seeded_and_in_input_units(exports, scene, tmp_path):
  for name in ("a", "b"):
    assert run_predict(exports["pretrain"], scene["path"], tmp_path / f"{name}.tif", "--seed", "3") == 0
  a, profile, _, descriptions = read(tmp_path / "a.tif")
  np.testing.assert_array_equal(a, read(tmp_path / "b.tif")[0])
  assert descriptions == tuple(CANONICAL) and profile["count"] == 12
  assert_on_grid(tmp_path / "a.tif", scene, "float32", float("nan"))
  valid = scene["valid"]
  assert np.isnan(a[:, ~valid]).all() and np.isfinite(a[:, valid]).all()
  lo, hi = scene["data"][valid].min(), scene["data"][valid].max()
  assert a[:, valid].min() > lo - (hi - lo) and a[:, valid].max() < hi + (hi - lo)  # de-normalised per tile


def test_band_mean_double_reproduces_the_scene(scene, tmp_path):
  """Geometry end to end: a model returning each pixel's band mean must give back the scene's band mean through
  tiling (padded edges), 50 % overlap blending, nodata and the COG writer."""
  import jax.numpy as jnp

  from spectralgpt_jax import models
  model = models.build("mae_vit_tiny", img_size=32)
  double = ckpt_lib.Checkpoint(str(tmp_path), model, {"task": "pretrain", "bands": list(CANONICAL),
                                                      "normalization": {"name": "none"}})
  apply = lambda model, x, noise: jnp.broadcast_to(x.mean(-1, keepdims=True), x.shape)  # noqa: E731
  with scene_io.open_scene(scene["path"]) as opened:
    written = predict.predict_scenes(double, [opened], str(tmp_path / "mean.tif"), apply=apply, batch_size=8,
                                     progress=False)
  assert [os.path.basename(p) for p in written] == ["mean.tif", "mean.png"]
  out = read(written[0])[0]
  expected = scene["data"].mean(-1)
  valid = scene["valid"]
  for band in out:
    np.testing.assert_allclose(band[valid], expected[valid], rtol=1e-5)
    assert np.isnan(band[~valid]).all()


def test_embed_geoparquet_and_patch_grid(exports, scene, tmp_path):
  gpd = pytest.importorskip("geopandas")
  out, patches = tmp_path / "emb.parquet", tmp_path / "patches.tif"
  assert embed.main(["--checkpoint", exports["pretrain"], "--input", scene["path"], "--output", str(out),
                     "--per_patch", str(patches), "--no_progress"]) == 0
  h, w = scene["data"].shape[:2]
  rows, cols = -(-h // 16), -(-w // 16)
  corner = NODATA_CORNER // 16
  table = gpd.read_parquet(out)
  assert len(table) == rows * cols - corner * corner          # wholly nodata tiles are skipped
  assert table.crs == scene["crs"]
  geo = json.loads(pq.read_metadata(out).metadata[b"geo"])
  assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
  assert geo["columns"]["geometry"]["encoding"] == "WKB"
  first = table.sort_values("tile_id").iloc[0]
  x0, y0 = scene["transform"] @ (first.x_px, first.y_px)
  assert first.geometry.bounds == pytest.approx((x0, y0 - 160, x0 + 160, y0))   # 16 px at 10 m
  assert (table.tile_id == table.row * cols + table.col).all()
  emb = np.stack(table.embedding.to_numpy())
  assert emb.shape == (len(table), 32) and emb.dtype == np.float32 and np.isfinite(emb).all()
  with rasterio.open(patches) as ds:
    assert (ds.height, ds.width, ds.count) == (-(-h // 8), -(-w // 8), 32)
    assert ds.transform.almost_equals(scene["transform"] @ Affine.scale(8))
    grid = ds.read(1)
  assert np.isnan(grid[:NODATA_CORNER // 8, :NODATA_CORNER // 8]).all() and np.isfinite(grid[-1, -1])


# ------------------------------------------------------------------------------------------------- bad input
def _expect_error(capsys, tmp_path, code, *needles):
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and len(err) == 1 and err[0].startswith("error: "), err
  for needle in needles:
    assert needle in err[0], err[0]
  assert not [f for f in os.listdir(tmp_path / "out")], "nothing may be written"


@pytest.fixture
def out_dir(tmp_path):
  (tmp_path / "out").mkdir()
  return tmp_path / "out"


def test_missing_bands_are_named(exports, scene, tmp_path, out_dir, capsys):
  few = write_multiband(tmp_path / "rgb.tif", scene["data"][..., [3, 2, 1]], scene["transform"], scene["crs"],
                        ["B04", "B03", "B02"])
  code = run_predict(exports["pretrain"], few, out_dir / "o.tif")
  _expect_error(capsys, tmp_path, code, "rgb.tif", "B01", "B12")


def test_unnamed_bands_without_the_flag(exports, scene, tmp_path, out_dir, capsys):
  unnamed = write_multiband(tmp_path / "unnamed.tif", scene["data"], scene["transform"], scene["crs"])
  code = run_predict(exports["segmentation"], unnamed, out_dir / "o.tif")
  _expect_error(capsys, tmp_path, code, "unnamed.tif", "--bands")


def test_unreadable_file(exports, tmp_path, out_dir, capsys):
  broken = tmp_path / "broken.tif"
  broken.write_bytes(b"II*\x00" + os.urandom(200))
  _expect_error(capsys, tmp_path, run_predict(exports["segmentation"], broken, out_dir / "o.tif"), "broken.tif")


@pytest.mark.parametrize("extra, needle", [
    (["--batch_size", "0"], "--batch_size=0: must be a positive multiple of the"),
    (["--mesh", "1,1,1000"], "--mesh 1,1,1000: cannot be formed from the"),
])
def test_an_impossible_batch_or_mesh_is_one_line(exports, scene, tmp_path, out_dir, capsys, extra, needle):
  _expect_error(capsys, tmp_path, run_predict(exports["segmentation"], scene["path"], out_dir / "o.tif", *extra),
                needle)


def test_dates_that_do_not_overlap(exports, scene, tmp_path, out_dir, capsys):
  far = write_multiband(tmp_path / "far.tif", scene["data"], scene["transform"] @ Affine.translation(10_000, 0),
                        scene["crs"], CANONICAL)
  code = run_predict(exports["change_detection"], scene["path"], out_dir / "o.tif", "--input2", far)
  _expect_error(capsys, tmp_path, code, "far.tif", "overlap")


@pytest.mark.parametrize("task,extra,needle", [("change_detection", (), "pass --input2 (the later date), or "
                                                                        "several --input for a change map per pair"),
                                                ("change_detection", ("--pairs", "first"), "there is one --input"),
                                                ("segmentation", ("--input2", "SCENE"), "--input2"),
                                                (None, (), "neither an export")])
def test_checkpoint_of_another_task(exports, scene, tmp_path, out_dir, capsys, task, extra, needle):
  checkpoint = exports[task] if task else str(tmp_path)
  extra = [scene["path"] if e == "SCENE" else e for e in extra]
  code = run_predict(checkpoint, scene["path"], out_dir / "o.tif", *extra)
  _expect_error(capsys, tmp_path, code, needle, checkpoint)


def test_scene_smaller_than_a_tile_is_padded_with_a_warning(exports, scene, tmp_path, caplog):
  small = write_multiband(tmp_path / "small.tif", scene["data"][-20:, -24:],
                          scene["transform"] @ Affine.translation(173 - 24, 150 - 20), scene["crs"], CANONICAL)
  assert run_predict(exports["segmentation"], small, tmp_path / "small_out.tif") == 0
  assert "smaller than a tile" in caplog.text and "small.tif" in caplog.text
  with rasterio.open(tmp_path / "small_out.tif") as ds:
    assert ds.shape == (20, 24) and (ds.read(1) != 255).all()


def test_official_pth_file_points_to_convert(scene, tmp_path, out_dir, capsys):
  pth = tmp_path / "SpectralGPT+.pth"
  pth.write_bytes(b"PK\x03\x04")
  code = run_predict(str(pth), scene["path"], out_dir / "o.tif")
  _expect_error(capsys, tmp_path, code, "SpectralGPT+.pth", "spectralgpt_jax.interop.convert")


def test_embed_publishes_neither_file_when_the_patch_grid_fails(exports, scene, tmp_path, out_dir, capsys,
                                                                monkeypatch):
  """The table and the per-patch COG are both finished before either is published."""
  from spectralgpt_jax.inference import cog, writers

  def finish(self):
    raise writers.OutputError(f"{self.path}: no space left on device")
  monkeypatch.setattr(cog.RasterWriter, "_finish", finish)
  code = embed.main(["--checkpoint", exports["pretrain"], "--input", scene["path"], "--output",
                     str(out_dir / "emb.parquet"), "--per_patch", str(out_dir / "patches.tif"), "--no_progress"])
  _expect_error(capsys, tmp_path, code, "patches.tif: no space left on device")


def test_an_output_that_cannot_be_created_leaves_no_staging(exports, scene, tmp_path, out_dir, capsys):
  """The class map's writer is made before the probabilities' one fails: its staging directory goes at once."""
  (out_dir / "o_probabilities.tif").mkdir()
  code = run_predict(exports["segmentation"], scene["path"], out_dir / "o.tif", "--probabilities")
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and len(err) == 1 and "o_probabilities.tif: is a directory" in err[0], err
  assert os.listdir(out_dir) == ["o_probabilities.tif"]
  args = predict.parse_args(["--checkpoint", exports["segmentation"], "--input", str(scene["path"]), "--output",
                             str(out_dir / "o.tif"), "--probabilities", "--no_progress"])
  with pytest.raises(OutputError, match="is a directory") as failure:  # keeps the frames (and writers) alive
    predict.run(args)
  assert failure.value and os.listdir(out_dir) == ["o_probabilities.tif"]   # not left to the garbage collector
