"""Acquisition times of scenes, and time series: several inputs on the first one's grid (embed: one table; predict:
one map per input, published together)."""
import datetime
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from scene_fixtures import native_grid, write_band_folder, write_raster, write_safe, write_stac_item
from spectralgpt_jax import embed
from spectralgpt_jax.inference import acquisition, scene_io
from spectralgpt_jax.inference.scene_sources import SceneError

UTC = datetime.timezone.utc
BANDS = ("B02", "B03", "B04", "B08")


def test_times_are_parsed_to_utc():
  assert acquisition.parse("2020-01-01T15:55:11.024Z") == datetime.datetime(2020, 1, 1, 15, 55, 11, 24000, UTC)
  assert acquisition.parse("20200101T155511") == datetime.datetime(2020, 1, 1, 15, 55, 11, tzinfo=UTC)
  assert acquisition.parse("2020-06-01") == datetime.datetime(2020, 6, 1, tzinfo=UTC)
  assert acquisition.parse("2020-06-01T12:00:00+02:00") == datetime.datetime(2020, 6, 1, 10, tzinfo=UTC)
  for bad in ("June 1st", "2020-13-01", ""):
    with pytest.raises(ValueError):
      acquisition.parse(bad)
  assert acquisition.iso(None) == "unknown"


def write_mtd_start_time(safe: str, level: str, when: str) -> None:
  """Product metadata with a PRODUCT_START_TIME, namespaced as ESA's MTD_MSIL1C/2A.xml."""
  xml = (f'<?xml version="1.0" encoding="UTF-8"?><n1:Level-{level[1:]}_User_Product xmlns:n1="https://psd-14.'
         f'sentinel2.eo.esa.int/PSD/User_Product_Level-{level[1:]}.xsd"><n1:General_Info><Product_Info>'
         f'<PRODUCT_START_TIME>{when}</PRODUCT_START_TIME></Product_Info></n1:General_Info>'
         f'</n1:Level-{level[1:]}_User_Product>')
  with open(os.path.join(safe, f"MTD_MSI{level}.xml"), "w", encoding="utf-8") as f:
    f.write(xml)


def acquired(path):
  with scene_io.open_scene(path, harmonize="off") as scene:
    return scene.acquired, scene.acquired_from


def test_where_each_input_form_declares_its_time(tmp_path):
  safe = write_safe(tmp_path / "safe", "L1C")
  assert acquired(safe) == (datetime.datetime(2020, 1, 1, 15, 55, 11, tzinfo=UTC), "product name")
  write_mtd_start_time(safe, "L1C", "2020-01-01T15:55:11.024Z")
  assert acquired(safe) == (datetime.datetime(2020, 1, 1, 15, 55, 11, 24000, UTC), "MTD_MSIL1C.xml PRODUCT_START_TIME")
  granule_bands = os.path.join(safe, "GRANULE", os.listdir(os.path.join(safe, "GRANULE"))[0], "IMG_DATA")
  assert acquired(granule_bands)[1] == "MTD_MSIL1C.xml PRODUCT_START_TIME"   # a folder inside the product

  files = write_band_folder(tmp_path / "stac", BANDS, pattern="{band}.tif")
  item = write_stac_item(tmp_path / "stac" / "item.json", files)
  assert acquired(item) == (None, "the STAC item has no datetime")
  doc = json.loads((tmp_path / "stac" / "item.json").read_text())
  doc["properties"]["datetime"] = "2021-07-04T10:20:30Z"
  (tmp_path / "stac" / "item.json").write_text(json.dumps(doc))
  assert acquired(item) == (datetime.datetime(2021, 7, 4, 10, 20, 30, tzinfo=UTC), "STAC datetime")
  doc["properties"]["datetime"] = "yesterday"
  (tmp_path / "stac" / "item.json").write_text(json.dumps(doc))
  with pytest.raises(SceneError, match='item.json: properties.datetime "yesterday" is not an ISO 8601 time'):
    acquired(item)

  folder = write_band_folder(tmp_path / "named", BANDS, pattern="T18SUJ_20220315T154809_{band}.tif")
  assert acquired(os.path.dirname(folder["B02"])) == (datetime.datetime(2022, 3, 15, 15, 48, 9, tzinfo=UTC),
                                                      "file name T18SUJ_20220315T154809_B02.tif")
  stack = np.ones((4, 60, 60), np.uint16)
  day = write_raster(tmp_path / "s2_2023-05-06_stack.tif", stack, native_grid(10)[0], descriptions=BANDS)
  assert acquired(day) == (datetime.datetime(2023, 5, 6, tzinfo=UTC), "file name s2_2023-05-06_stack.tif")
  tagged = write_raster(tmp_path / "tagged.tif", stack, native_grid(10)[0], descriptions=BANDS)
  import rasterio
  with rasterio.open(tagged, "r+") as ds:
    ds.update_tags(ACQUISITION_DATE="2019-08-30T10:00:00Z", TIFFTAG_DATETIME="2026:01:01 00:00:00")
  assert acquired(tagged) == (datetime.datetime(2019, 8, 30, 10, tzinfo=UTC), "GDAL metadata ACQUISITION_DATE")
  written_only = write_raster(tmp_path / "plain.tif", stack, native_grid(10)[0], descriptions=BANDS)
  with rasterio.open(written_only, "r+") as ds:
    ds.update_tags(TIFFTAG_DATETIME="2026:01:01 00:00:00")      # when the file was written: not an acquisition
  assert acquired(written_only) == (None, "nothing declares it")


def run_embed(exports, out, *inputs, extra=()):
  args = ["--checkpoint", exports["pretrain"], "--output", str(out), "--no_progress", *extra]
  for path in inputs:
    args += ["--input", path]
  return embed.main(args)


def test_an_embedding_time_series_shares_the_first_inputs_grid(exports, scene, band_folder, tmp_path):
  single, series = tmp_path / "one.parquet", tmp_path / "series.parquet"
  assert run_embed(exports, single, scene["path"]) == 0
  one = pq.read_table(single).to_pandas()
  assert one.datetime.isna().all() and (one.input_index == 0).all()        # a GeoTIFF without a date
  assert run_embed(exports, series, scene["path"], band_folder,
                   extra=["--datetime", "2020-05-01", "--datetime", "2020-06-01T10:30:00Z"]) == 0
  table = pq.read_table(series).to_pandas()
  first, second = table[table.input_index == 0], table[table.input_index == 1]
  assert len(first) == len(one) and len(first) + len(second) == len(table)
  np.testing.assert_array_equal(np.stack(first.embedding), np.stack(one.embedding))
  np.testing.assert_array_equal(first.tile_id, one.tile_id)
  assert (first.datetime == datetime.datetime(2020, 5, 1, tzinfo=UTC)).all()
  assert (second.datetime == datetime.datetime(2020, 6, 1, 10, 30, tzinfo=UTC)).all()
  # the band folder has no nodata corner: every tile of the grid is a row, on the same tile ids and footprints
  h, w = scene["data"].shape[:2]
  assert len(second) == -(-h // 16) * -(-w // 16)
  assert set(first.tile_id) < set(second.tile_id)
  by_id = second.set_index("tile_id")
  assert all(by_id.loc[t, "geometry"] == g for t, g in zip(first.tile_id, first.geometry))
  # same pixels (the GeoTIFF was made from the band folder): the same embeddings where both are fully valid
  full = first[first.valid_fraction == 1.0]
  np.testing.assert_allclose(np.stack(full.embedding), np.stack(by_id.loc[full.tile_id, "embedding"]), atol=1e-4)
  meta = json.loads(pq.read_metadata(series).metadata[b"spectralgpt"])
  assert [i["path"] for i in meta["inputs"]] == [scene["path"], band_folder]
  assert [i["datetime"] for i in meta["inputs"]] == ["2020-05-01T00:00:00Z", "2020-06-01T10:30:00Z"]
  assert {i["acquired_from"] for i in meta["inputs"]} == {"--datetime"}
  assert meta["acquired"] == "input: unknown; input2: unknown"   # what the inputs themselves declare
  assert meta["datetime"] == "input: 2020-05-01T00:00:00Z; input2: 2020-06-01T10:30:00Z"   # the times used


@pytest.mark.parametrize("extra, needle", [
    (["--datetime", "2020-05-01"], "--datetime is given 1 time for 2 input scenes"),
    (["--datetime", "2020-05-01", "--datetime", "May"], "--datetime: Invalid isoformat string: 'May'"),
    (["--per_patch", "p.tif"], "--per_patch writes one scene's patch grid; it takes one --input, not 2"),
    (["--cloud_mask", "m.tif"], "--cloud_mask m.tif is one scene's mask file; with 2 --input scenes"),
])
def test_time_series_flags_are_checked_first(exports, scene, tmp_path, capsys, extra, needle):
  out = tmp_path / "out"
  out.mkdir()
  assert run_embed(exports, out / "e.parquet", scene["path"], scene["path"], extra=extra) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and needle in err[0], err
  assert not os.listdir(out)


def test_an_input_elsewhere_is_one_line(exports, scene, tmp_path, capsys):
  far = tmp_path / "far"
  write_band_folder(far, ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"),
                    pattern="{band}.tif", x0=100000.0, y0=1000000.0)
  (tmp_path / "out").mkdir()
  assert run_embed(exports, tmp_path / "out" / "e.parquet", scene["path"], str(far)) == 1
  err = capsys.readouterr().err.strip()
  assert "does not overlap" in err and scene["path"] in err and not os.listdir(tmp_path / "out")


def run_predict(checkpoint, out, *inputs, extra=()):
  from spectralgpt_jax import predict
  args = ["--checkpoint", checkpoint, "--output", str(out), "--no_progress", "--batch_size", "8", *extra]
  for path in inputs:
    args += ["--input", str(path)]
  return predict.main(args)


def read_raster(path):
  import rasterio
  with rasterio.open(path) as ds:
    return ds.read(), ds.transform, ds.crs, ds.tags()


def test_a_later_scene_of_another_extent_is_mapped_on_the_first_grid(exports, scene, tmp_path):
  """The second date covers only the east of the first (its own, smaller grid): its map has the first's shape and
  transform, nodata where it has no pixels, and predictions where it has."""
  from affine import Affine

  from demo_crop import CANONICAL, write_multiband
  cut = 40
  east = write_multiband(tmp_path / "east.tif", scene["data"][:, cut:], scene["transform"] @ Affine.translation(cut, 0),
                         scene["crs"], CANONICAL)
  out = tmp_path / "series"
  assert run_predict(exports["segmentation"], out / "map.tif", scene["path"], east) == 0
  first, transform0, crs0, _ = read_raster(out / "map_t0.tif")
  second, transform1, crs1, _ = read_raster(out / "map_t1.tif")
  assert first.shape == second.shape == (1, *scene["data"].shape[:2]) and transform0 == transform1 == scene["transform"]
  assert crs0 == crs1 == scene["crs"]
  assert (second[0, :, :cut] == 255).all() and (second[0, :, cut:] != 255).all()


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_a_prediction_time_series_is_one_map_per_input_on_the_first_grid(exports, scene, band_folder, tmp_path,
                                                                         task):
  single, series = tmp_path / "single", tmp_path / "series"
  assert run_predict(exports[task], single / "map.tif", scene["path"], extra=["--probabilities"]) == 0
  assert run_predict(exports[task], series / "map.tif", scene["path"], band_folder,
                     extra=["--probabilities", "--datetime", "2020-05-01", "--datetime", "2020-06-01T10:30Z"]) == 0
  assert sorted(os.listdir(series)) == ["map_series.json", "map_t0.png", "map_t0.tif", "map_t0_probabilities.tif",
                                        "map_t1.png", "map_t1.tif", "map_t1_probabilities.tif"]
  one, transform, crs, _ = read_raster(single / "map.tif")
  first, transform0, _, tags0 = read_raster(series / "map_t0.tif")
  second, transform1, crs1, tags1 = read_raster(series / "map_t1.tif")
  np.testing.assert_array_equal(first, one)        # the first input alone gives the same map
  np.testing.assert_array_equal(read_raster(series / "map_t0_probabilities.tif")[0],
                                read_raster(single / "map_probabilities.tif")[0])
  assert first.shape == second.shape and transform0 == transform1 == transform and crs1 == crs
  # the band folder is the same pixels without the nodata corner: predicted there, and equal where both are whole
  assert (first == 255).any() and not (second == 255).any()
  assert (first == second).mean() > 0.9
  assert (tags0["input_index"], tags0["datetime"]) == ("0", "2020-05-01T00:00:00Z")
  assert (tags1["input_index"], tags1["datetime"]) == ("1", "2020-06-01T10:30:00Z")
  index = json.loads((series / "map_series.json").read_text())
  assert index["task"] == task and [e["input_index"] for e in index["inputs"]] == [0, 1]
  assert [e["path"] for e in index["inputs"]] == [scene["path"], band_folder]
  assert [e["datetime"] for e in index["inputs"]] == ["2020-05-01T00:00:00Z", "2020-06-01T10:30:00Z"]
  assert {e["acquired_from"] for e in index["inputs"]} == {"--datetime"}
  assert index["inputs"][1]["files"] == ["map_t1.tif", "map_t1_probabilities.tif", "map_t1.png"]   # relative
  assert index["grid_of"] == scene["path"]


def test_series_names_sort_and_stale_files_are_named(tmp_path, caplog):
  from spectralgpt_jax import predict
  assert predict.series_path("out/lc.tif", 3, 12) == "out/lc_t03.tif"
  assert predict.series_path("lc", 0, 2) == "lc_t0.tif"
  assert predict.series_path("lc.tif", 9, 10) == "lc_t9.tif" and predict.series_path("lc.tif", 0, 11) == "lc_t00.tif"
  for name in ("lc_t0.tif", "lc_t1.tif", "lc_t2.tif", "lc_t2_probabilities.tif", "lc_total.tif"):
    (tmp_path / name).write_bytes(b"")
  ours = [str(tmp_path / "lc_t0.tif"), str(tmp_path / "lc_t1.tif")]
  with caplog.at_level("WARNING"):
    predict._warn_of_other_series_files(str(tmp_path / "lc.tif"), ours)
  assert "1 other lc_t* file(s) from an earlier run are not part of this series (e.g. lc_t2.tif)" in caplog.text


def mean_double(tmp_path):
  """A checkpoint whose model returns each pixel's band mean (geometry without a network; see the commands tests)."""
  import jax.numpy as jnp

  from spectralgpt_jax import models
  from spectralgpt_jax.inference import checkpoint as ckpt_lib
  bands = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
  double = ckpt_lib.Checkpoint(str(tmp_path), models.build("mae_vit_tiny", img_size=32),
                               {"task": "pretrain", "bands": bands, "normalization": {"name": "none"}})
  return double, lambda model, x, noise: jnp.broadcast_to(x.mean(-1, keepdims=True), x.shape)


@pytest.mark.parametrize("fail_at", ["reading", "finishing", "quicklook"])
def test_a_failure_at_a_later_date_publishes_nothing(scene, band_folder, tmp_path, monkeypatch, fail_at):
  """Outputs are finished date by date and published together: a failure at the second date (or an interrupt
  while its quicklook is made) leaves no file of the first (and no staging directory) in the output folder."""
  from spectralgpt_jax import predict
  from spectralgpt_jax.inference import cog, products, writers
  double, apply = mean_double(tmp_path / "ckpt")
  out = tmp_path / "out"
  out.mkdir()
  if fail_at == "reading":
    real = products.DenseSink.add

    def add(self, r, batch, outputs):
      if "_t1" in self.writers[0].path:
        raise writers.OutputError("a tile of the second date is unreadable")
      return real(self, r, batch, outputs)
    monkeypatch.setattr(products.DenseSink, "add", add)
  elif fail_at == "quicklook":
    real = writers.quicklook_png

    def quicklook(cog_path, png_path=None, **kwargs):
      if "_t1" in str(png_path or cog_path):
        raise KeyboardInterrupt
      return real(cog_path, png_path, **kwargs)
    monkeypatch.setattr(writers, "quicklook_png", quicklook)
  else:
    real = cog.RasterWriter._finish

    def finish(self):
      if "_t1" in self.path:
        raise writers.OutputError(f"{self.path}: no space left on device")
      return real(self)
    monkeypatch.setattr(cog.RasterWriter, "_finish", finish)
  opened = [scene_io.open_scene(scene["path"])]
  opened.append(scene_io.open_scene(band_folder, grid=opened[0]))
  try:
    with pytest.raises(KeyboardInterrupt if fail_at == "quicklook" else writers.OutputError):
      predict.predict_scenes(double, opened, str(out / "mean.tif"), apply=apply, batch_size=8, progress=False,
                             series=True)
  finally:
    for s in opened:
      s.close()
  assert not os.listdir(out)


def test_change_detection_times_name_each_date(exports, scene, tmp_path):
  import rasterio
  out = tmp_path / "change.tif"
  assert run_predict(exports["change_detection"], out, scene["path"],
                     extra=["--input2", scene["path"], "--datetime", "2020-05-01", "--datetime", "2021-05-01"]) == 0
  with rasterio.open(out) as ds:
    tags = ds.tags()
  assert tags["datetime"] == "input: 2020-05-01T00:00:00Z; input2: 2021-05-01T00:00:00Z"
  assert tags["acquired"] == "input: unknown; input2: unknown" and "input_index" not in tags


@pytest.mark.parametrize("task, extra, needle", [
    ("segmentation", ["--datetime", "2020-05-01"], "--datetime is given 1 time for 2 input scenes; give one"),
    ("segmentation", ["--cloud_mask", "m.tif"], "--cloud_mask m.tif is one scene's mask file; with 2 --input"),
    ("segmentation", ["--pairs", "first"], "--pairs first chooses the pairs of a change-detection series (several "
                                           "--input); "),
    ("segmentation", ["--bands2", "B04,B03"], "--bands2 is for --input2 (the later date of a change-detection "
                                              "pair), and there is no --input2; --bands applies to every --input"),
    ("segmentation", ["--harmonize2", "0"], "--harmonize2 is for --input2"),
    ("change_detection", ["--input2", "b.tif"], "--input2 is the later date of one change-detection pair; it "
                                                "takes one --input, not 2"),
])
def test_prediction_series_flags_are_checked_first(exports, scene, tmp_path, capsys, task, extra, needle):
  out = tmp_path / "out"
  out.mkdir()
  assert run_predict(exports[task], out / "map.tif", scene["path"], scene["path"], extra=extra) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and needle in err[0], err
  assert not os.listdir(out)


def test_change_detection_over_a_series_maps_each_pair(exports, scene, band_folder, tmp_path):
  """Several --input with a change-detection model: one change map per pair of dates, each the map that pair gives
  as --input/--input2 (bit-identical), listed per pair in OUT_series.json."""
  pair, series, first = tmp_path / "pair", tmp_path / "series", tmp_path / "first"
  ckpt = exports["change_detection"]
  assert run_predict(ckpt, pair / "change.tif", scene["path"], extra=["--input2", band_folder]) == 0
  inputs = [scene["path"], band_folder, scene["path"]]
  assert run_predict(ckpt, series / "change.tif", *inputs) == 0
  assert sorted(os.listdir(series)) == ["change_series.json", "change_t0_t1.png", "change_t0_t1.tif",
                                        "change_t1_t2.png", "change_t1_t2.tif"]
  single, transform, _, _ = read_raster(pair / "change.tif")
  mapped, transform01, _, tags = read_raster(series / "change_t0_t1.tif")
  np.testing.assert_array_equal(mapped, single)
  assert transform01 == transform and tags["input_pair"] == "0,1" and "input_index" not in tags
  index = json.loads((series / "change_series.json").read_text())
  assert [e["path"] for e in index["inputs"]] == inputs and "files" not in index["inputs"][0]
  assert index["pairs"] == [{"inputs": [0, 1], "files": ["change_t0_t1.tif", "change_t0_t1.png"]},
                            {"inputs": [1, 2], "files": ["change_t1_t2.tif", "change_t1_t2.png"]}]
  assert run_predict(ckpt, first / "change.tif", *inputs, extra=["--pairs", "first"]) == 0
  assert sorted(os.listdir(first)) == ["change_series.json", "change_t0_t1.png", "change_t0_t1.tif",
                                       "change_t0_t2.png", "change_t0_t2.tif"]
  np.testing.assert_array_equal(read_raster(first / "change_t0_t1.tif")[0], single)
  assert read_raster(first / "change_t0_t2.tif")[3]["input_pair"] == "0,2"


def test_a_bad_later_input_writes_nothing(exports, scene, tmp_path, capsys):
  out = tmp_path / "out"
  out.mkdir()
  broken = tmp_path / "broken.tif"
  broken.write_bytes(b"not a tiff")
  assert run_predict(exports["segmentation"], out / "map.tif", scene["path"], broken) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "broken.tif" in err[0], err
  assert not os.listdir(out)


def test_datetime_counts_every_input_scene():
  import argparse

  from spectralgpt_jax.inference import cli
  pair = argparse.Namespace(datetime=["2020-05-01"], input2="later.tif")
  with pytest.raises(cli.UsageError, match=r"given 1 time for 2 input scenes \(--input, then --input2\); give one"):
    cli.acquisition_times(pair, 2)
  assert cli.acquisition_times(argparse.Namespace(datetime=None), 3) is None
  three = cli.acquisition_times(argparse.Namespace(datetime=["2020-05-01", "2020-06-01", "2020-07-01Z"]), 3)
  assert [t.month for t in three] == [5, 6, 7] and {t.tzinfo for t in three} == {UTC}


def test_commands_raise_the_open_file_limit_to_the_hard_one(monkeypatch):
  """A long series keeps every input's band files open; the commands take the hard limit of open files."""
  import resource

  from spectralgpt_jax.inference import cli
  calls = []
  monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 524288))
  monkeypatch.setattr(resource, "setrlimit", lambda which, limits: calls.append((which, limits)))
  cli._raise_open_file_limit()
  assert calls == [(resource.RLIMIT_NOFILE, (524288, 524288))]
  calls.clear()
  monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, resource.RLIM_INFINITY))
  cli._raise_open_file_limit()
  assert calls == [(resource.RLIMIT_NOFILE, (1 << 20, resource.RLIM_INFINITY))]

  def refuse(which, limits):
    raise ValueError("not allowed")
  monkeypatch.setattr(resource, "setrlimit", refuse)
  cli._raise_open_file_limit()                  # a refusal keeps the limit there is, silently


def test_which_scenes_make_each_output():
  from spectralgpt_jax import predict
  from spectralgpt_jax.inference import cli
  groups = predict._input_groups
  assert groups("segmentation", 3, True, None, "consecutive") == [[0], [1], [2]]
  assert groups("change_detection", 4, True, None, "consecutive") == [[0, 1], [1, 2], [2, 3]]
  assert groups("change_detection", 4, True, None, "first") == [[0, 1], [0, 2], [0, 3]]
  assert groups("change_detection", 2, False, None, "consecutive") == [[0, 1]]
  assert predict.series_path("a/change.tif", 3, 11, 10) == "a/change_t03_t10.tif"
  for args, needle in [(("segmentation", 2, False, None, "consecutive"), "takes 1 scene, got 2"),
                       (("change_detection", 3, False, None, "consecutive"), "takes 2 scenes, got 3"),
                       (("change_detection", 1, True, None, "first"), "needs at least 2 scenes, got 1"),
                       (("segmentation", 2, True, ["2020-01-01"], "consecutive"), "1 acquisition times for 2"),
                       (("change_detection", 3, True, ["2020-01-01"], "first"), "1 acquisition times for 3"),
                       (("change_detection", 3, True, None, "all"), "--pairs 'all': must be one of")]:
    with pytest.raises(cli.UsageError, match=needle.replace("(", "\\(").replace(")", "\\)")):
      groups(*args)


def test_a_rerun_retracts_the_earlier_series_index_before_its_first_rename(scene, band_folder, tmp_path,
                                                                          monkeypatch):
  """Re-running a series over an earlier one removes the earlier OUT_series.json before any map is renamed, so a
  crash between two renames (simulated: the second date's rename fails) leaves no index over the mixed files."""
  from spectralgpt_jax import predict
  from spectralgpt_jax.inference import writers
  double, apply = mean_double(tmp_path / "ckpt")
  out = tmp_path / "out"
  out.mkdir()
  index = out / "mean_series.json"

  def run():
    opened = [scene_io.open_scene(scene["path"])]
    opened.append(scene_io.open_scene(band_folder, grid=opened[0]))
    try:
      predict.predict_scenes(double, opened, str(out / "mean.tif"), apply=apply, batch_size=8, progress=False,
                             series=True)
    finally:
      for s in opened:
        s.close()
  run()
  assert index.exists()
  real, renamed = writers.Staging.publish, []

  def crash_at_second_date(self, tmp, companions=()):
    renamed.append((os.path.basename(self.path), index.exists()))
    if "_t1" in self.path:
      raise OSError(5, "Input/output error")
    return real(self, tmp, companions)
  monkeypatch.setattr(writers.Staging, "publish", crash_at_second_date)
  with pytest.raises(writers.OutputError, match=r"mean_t1.tif: .*Input/output error.*; already in place: .*mean_t0.*; "
                                                r"removed before publishing: .*/out/mean_series.json$"):
    run()
  assert renamed and renamed[0] == ("mean_t0.tif", False)
  assert not index.exists()            # the earlier index is gone: it no longer describes the files
  assert sorted(os.listdir(out)) == ["mean_t0.png", "mean_t0.tif", "mean_t1.png", "mean_t1.tif"]
