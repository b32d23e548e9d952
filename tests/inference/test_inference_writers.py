"""Output side of scene inference: streamed COGs, GeoParquet embeddings, PNG quicklooks, and their failure rules."""
import json
import os
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import Affine
from rio_cogeo.cogeo import cog_validate

from spectralgpt_jax.inference import geoparquet
from spectralgpt_jax.inference.writers import (GeoParquetWriter, OutputError, RasterWriter, class_band_tags,
                                               class_colormap, quicklook_png)

UTM33 = CRS.from_epsg(32633)
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)
NAMES = ["water", "forest", "urban", "crop", "bare"]


def _class_writer(path, width=1024, height=1024, **kw):
  args = dict(crs=UTM33, transform=TRANSFORM, width=width, height=height, count=1, dtype="uint8", nodata=255,
              band_descriptions=["class"], colormap=class_colormap(len(NAMES), NAMES),
              tags={"checkpoint": "/ckpt/seg", "task": "segmentation", "command": "predict", "tile": 128},
              band_tags=[class_band_tags(NAMES)], kind="classes")
  args.update(kw)
  return RasterWriter(path, **args)


def _finished_class_writer(path):
  """A 400 x 300 class map written and finished (translated and validated in staging), ready to publish."""
  writer = _class_writer(path, width=400, height=300)
  writer.write(_class_scene(300, 400), 0)
  writer.finish()
  return writer


def _class_scene(height=1024, width=1024):
  rows, cols = np.mgrid[:height, :width]
  labels = ((rows // 37 + cols // 53) % len(NAMES)).astype(np.uint8)
  labels[:20, :40] = 255  # a nodata corner
  return labels


def _write_strips(writer, data, cuts):
  edges = [0, *cuts, data.shape[0]]
  for top, bottom in zip(edges[:-1], edges[1:]):
    writer.write(data[top:bottom], top)


# ----------------------------------------------------------------------------------------------- RasterWriter
def test_class_map_in_three_strips_round_trips(tmp_path):
  path = tmp_path / "classes.tif"
  labels = _class_scene()
  with _class_writer(path) as w:
    _write_strips(w, labels[..., None], [300, 700])  # strip edges off the 256-row staging tiles
    assert not path.exists()  # nothing appears before commit
    assert w.commit() == str(path)
  assert os.listdir(tmp_path) == ["classes.tif"]  # staging directory gone
  valid, errors, warns = cog_validate(str(path), quiet=True)
  assert valid and not errors and not warns
  with rasterio.open(path) as src:
    assert (src.crs, src.transform, src.width, src.height, src.count) == (UTM33, TRANSFORM, 1024, 1024, 1)
    assert src.dtypes[0] == "uint8" and src.nodata == 255
    assert src.block_shapes[0] == (512, 512) and src.compression.name == "deflate"
    assert src.overviews(1) == [2]
    np.testing.assert_array_equal(src.read(1), labels)  # strip boundaries at rows 300 / 700 included
    cmap = src.colormap(1)
    for i, colour in class_colormap(len(NAMES), NAMES).items():
      assert cmap[i] == colour
    assert cmap[255] == (0, 0, 0, 0)
    assert src.descriptions == ("class",)
    band = src.tags(1)
    assert json.loads(band["class_names"]) == NAMES and band["class_2"] == "urban"
    tags = src.tags()
    assert tags["checkpoint"] == "/ckpt/seg" and tags["task"] == "segmentation" and tags["tile"] == "128"
    assert tags["OVERVIEW_RESAMPLING"] == "NEAREST"
    # nearest overviews keep class values (no averaged "in-between" classes)
    assert set(np.unique(src.read(1, out_shape=(512, 512)))) <= set(range(len(NAMES))) | {255}


def test_continuous_float32_with_nan_nodata(tmp_path):
  path = tmp_path / "probs.tif"
  rng = np.random.default_rng(0)
  probs = rng.random((600, 700, 3), dtype=np.float32)
  probs[:5] = np.nan
  with RasterWriter(path, crs=UTM33, transform=TRANSFORM, width=700, height=600, count=3, dtype="float32",
                    nodata=float("nan"), band_descriptions=["water", "forest", "urban"], kind="continuous") as w:
    _write_strips(w, probs.astype(np.float64), [256, 333])  # float64 input is cast
    w.commit()
  assert cog_validate(str(path), quiet=True)[0]
  with rasterio.open(path) as src:
    assert src.dtypes == ("float32",) * 3 and np.isnan(src.nodata)
    assert src.descriptions == ("water", "forest", "urban")
    assert src.tags()["OVERVIEW_RESAMPLING"] == "AVERAGE" and src.overviews(1) == [2]
    np.testing.assert_array_equal(np.moveaxis(src.read(), 0, -1), probs)
    overview = src.read(1, out_shape=(300, 350))
    assert np.isnan(overview[:2]).all() and np.isfinite(overview[3:]).all()  # NaN stays nodata when averaged


def test_small_single_band_accepts_2d_strips_and_default_colour_table(tmp_path):
  path = tmp_path / "tiles.tif"
  labels = _class_scene(40, 30)
  with _class_writer(path, width=30, height=40, colormap=None, band_descriptions=None) as w:
    _write_strips(w, labels.astype(np.int64), [17])  # [h, w] int64 argmax output
    w.commit()
  assert cog_validate(str(path), quiet=True)[0]
  with rasterio.open(path) as src:
    np.testing.assert_array_equal(src.read(1), labels)
    assert src.descriptions == ("class",) and src.block_shapes[0] == (256, 256)
    assert src.colormap(1)[0] == class_colormap(len(NAMES), NAMES)[0] and src.colormap(1)[255][3] == 0


def test_uint16_class_map_for_many_classes(tmp_path):
  names = [f"c{i}" for i in range(300)]
  cmap = class_colormap(300, names)
  assert 65535 in cmap and len({c for k, c in cmap.items() if k < 300}) == 300
  labels = (np.arange(64 * 64).reshape(64, 64) % 300).astype(np.uint16)
  with _class_writer(tmp_path / "many.tif", width=64, height=64, dtype="uint16", nodata=65535, colormap=cmap,
                     band_tags=[class_band_tags(names)]) as w:
    w.write(labels, 0)
    w.commit()
  with rasterio.open(tmp_path / "many.tif") as src:
    np.testing.assert_array_equal(src.read(1), labels)
    assert src.colormap(1)[299] == cmap[299]


def test_class_colormap_named_colours_and_checks():
  cmap = class_colormap(6, ["Permanent water bodies", "Tree cover", "Built-up", "no change", "change", "thing"])
  assert cmap[0][:3] == (0, 100, 200) and cmap[1][:3] == (0, 100, 0) and cmap[2][:3] == (250, 0, 0)
  assert cmap[3] != cmap[4] and cmap[255] == (0, 0, 0, 0)
  assert len({cmap[i] for i in range(6)}) == 6
  twin = class_colormap(2, ["Coniferous forest", "Broad-leaved forest"])
  assert twin[0] != twin[1]
  assert len({class_colormap(40)[i] for i in range(40)}) == 40
  with pytest.raises(ValueError, match="3 names for 2 classes"):
    class_colormap(2, ["a", "b", "c"])
  with pytest.raises(ValueError, match="nodata"):
    class_colormap(300, nodata=255)


def test_exception_inside_with_leaves_nothing(tmp_path):
  path = tmp_path / "out.tif"
  with pytest.raises(RuntimeError, match="engine crashed"):
    with _class_writer(path) as w:
      w.write(np.zeros((300, 1024, 1), np.uint8), 0)
      raise RuntimeError("engine crashed")
  assert os.listdir(tmp_path) == []


def test_finished_but_unpublished_is_dropped_on_error(tmp_path):
  """finish() does the COG work in staging; only publish() puts the file in place (a time series publishes its
  dates together): an error between the two leaves nothing, and the steps must come in order."""
  data = _class_scene(300, 400)
  with pytest.raises(RuntimeError, match="a later date failed"):
    with _class_writer(tmp_path / "a.tif", width=400, height=300) as w:
      w.write(data, 0)
      w.finish()
      assert os.listdir(tmp_path) == [os.path.basename(w._staging.dir)]     # the COG, still hidden
      assert os.listdir(w._staging.dir) == ["cog.tif"]                     # the stage file's disk is freed
      raise RuntimeError("a later date failed")
  assert os.listdir(tmp_path) == []
  with _class_writer(tmp_path / "b.tif", width=400, height=300) as w:
    with pytest.raises(OutputError, match="publish\\(\\) of a writer that is open, not finished"):
      w.publish()
    w.write(data, 0)
    w.finish()
    with pytest.raises(OutputError, match="finish\\(\\) after the writer was finished"):
      w.finish()
    assert w.publish() == str(tmp_path / "b.tif")
  with rasterio.open(tmp_path / "b.tif") as ds:
    np.testing.assert_array_equal(ds.read(1), data)
  assert os.listdir(tmp_path) == ["b.tif"]


def test_companions_are_published_with_the_file_and_dropped_with_it(tmp_path):
  """A file derived from the finished one (the quicklook) is staged beside it and appears only when it does."""
  from spectralgpt_jax.inference import writers
  data = _class_scene(300, 400)
  with _class_writer(tmp_path / "a.tif", width=400, height=300) as w:
    w.write(data, 0)
    with pytest.raises(OutputError, match="stage_companion\(\) of a writer that is open"):
      w.stage_companion(tmp_path / "a.png")
    w.finish()
    png = writers.quicklook_png(w.finished_path, w.stage_companion(tmp_path / "a.png"))
    assert os.path.dirname(png) == w._staging.dir and os.listdir(tmp_path) == [os.path.basename(w._staging.dir)]
    assert w.publish() == str(tmp_path / "a.tif") and w.companion_paths() == [str(tmp_path / "a.png")]
  assert sorted(os.listdir(tmp_path)) == ["a.png", "a.tif"]
  with pytest.raises(KeyboardInterrupt):                          # interrupted after its quicklook: neither file
    with _class_writer(tmp_path / "b.tif", width=400, height=300) as w:
      w.write(data, 0)
      w.finish()
      writers.quicklook_png(w.finished_path, w.stage_companion(tmp_path / "b.png"))
      raise KeyboardInterrupt
  with _class_writer(tmp_path / "c.tif", width=400, height=300) as w:  # staged, never written: nothing published
    w.write(data, 0)
    w.finish()
    w.stage_companion(tmp_path / "c.png")
    with pytest.raises(OutputError, match="c.tif: a companion file was staged but never written \(companion0_c"):
      w.publish()
  assert sorted(os.listdir(tmp_path)) == ["a.png", "a.tif"]


def test_failed_run_keeps_existing_file(tmp_path):
  path = tmp_path / "out.tif"
  path.write_bytes(b"previous result")
  with pytest.raises(KeyboardInterrupt):
    with _class_writer(path) as w:
      w.write(np.zeros((10, 1024, 1), np.uint8), 0)
      raise KeyboardInterrupt
  with pytest.raises(OutputError, match="never written"):
    with _class_writer(path) as w:
      w.write(np.zeros((10, 1024, 1), np.uint8), 0)
      w.commit()
  assert path.read_bytes() == b"previous result" and os.listdir(tmp_path) == ["out.tif"]


def test_missing_rows_are_named_at_commit(tmp_path):
  path = tmp_path / "out.tif"
  w = _class_writer(path, height=1000)
  w.write(np.zeros((100, 1024, 1), np.uint8), 0)
  w.write(np.zeros((100, 1024, 1), np.uint8), 300)  # rows 100..299 skipped
  with pytest.raises(OutputError, match=r"out\.tif: rows 100\.\.299, 400\.\.999 were never written \(of 1000\)"):
    w.commit()
  assert os.listdir(tmp_path) == []
  with pytest.raises(OutputError, match="after the writer was aborted"):
    w.write(np.zeros((1, 1024, 1), np.uint8), 400)


def test_overlapping_out_of_range_and_bad_strips(tmp_path):
  w = _class_writer(tmp_path / "out.tif", height=100, width=8)
  w.write(np.zeros((50, 8, 1), np.uint8), 0)
  with pytest.raises(OutputError, match=r"rows 40\.\.49 were already written"):
    w.write(np.zeros((20, 8, 1), np.uint8), 40)
  with pytest.raises(OutputError, match="outside the raster"):
    w.write(np.zeros((60, 8, 1), np.uint8), 50)
  with pytest.raises(OutputError, match=r"shape \(10, 9, 1\)"):
    w.write(np.zeros((10, 9, 1), np.uint8), 50)
  with pytest.raises(OutputError, match="outside uint8"):
    w.write(np.full((10, 8, 1), 300), 50)
  with pytest.raises(OutputError, match="float"):
    w.write(np.zeros((10, 8, 1), np.float32), 50)
  w.write(np.ones((50, 8, 1), np.uint8), 50)  # rejected strips changed nothing
  w.commit()
  with rasterio.open(tmp_path / "out.tif") as src:
    assert src.read(1)[:50].max() == 0 and src.read(1)[50:].min() == 1


def test_bad_layouts_fail_before_creating_anything(tmp_path):
  with pytest.raises(OutputError, match="one uint8 / uint16 band"):
    _class_writer(tmp_path / "a.tif", dtype="float32")
  with pytest.raises(OutputError, match="kind must be one of"):
    _class_writer(tmp_path / "a.tif", kind="labels")
  with pytest.raises(OutputError, match="band_descriptions has 2 entries for 1 bands"):
    _class_writer(tmp_path / "a.tif", band_descriptions=["a", "b"])
  assert os.listdir(tmp_path) == []


def test_closing_without_commit_warns_and_leaves_nothing(tmp_path):
  with pytest.warns(RuntimeWarning, match="without commit"):
    with _class_writer(tmp_path / "out.tif", height=4, width=4) as w:
      w.write(np.zeros((4, 4, 1), np.uint8), 0)
  assert os.listdir(tmp_path) == []
  w = _class_writer(tmp_path / "dropped.tif", height=4, width=4)
  del w  # never committed, never closed: the finalizer removes the staging directory
  assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------- quicklook
def test_quicklook_of_class_map(tmp_path):
  path = tmp_path / "classes.tif"
  labels = _class_scene()
  with _class_writer(path) as w:
    _write_strips(w, labels[..., None], [512])
    w.commit()
  png = quicklook_png(str(path), max_size=256)
  assert png == str(tmp_path / "classes.png")
  img = np.asarray(Image.open(png))
  assert img.shape == (256, 256, 4)
  assert (img[:4, :9, 3] == 0).all() and (img[10:, 20:, 3] == 255).all()  # nodata corner transparent
  colours = {tuple(c) for c in img[10:, 20:].reshape(-1, 4)}
  assert colours <= {class_colormap(len(NAMES), NAMES)[i] for i in range(len(NAMES))}
  assert sorted(os.listdir(tmp_path)) == ["classes.png", "classes.tif"]


def test_quicklook_reads_overviews_not_full_resolution(tmp_path):
  """Overviews deliberately disagree with the full-resolution data: the preview must show the overview."""
  path = tmp_path / "big.tif"
  profile = dict(driver="GTiff", width=2048, height=2048, count=1, dtype="uint8", nodata=255, crs=UTM33,
                 transform=TRANSFORM, tiled=True, blockxsize=512, blockysize=512, compress="DEFLATE")
  with rasterio.open(path, "w", **profile) as dst:
    dst.write_colormap(1, {1: (255, 0, 0, 255), 2: (0, 0, 255, 255)})
    dst.write(np.ones((1, 2048, 2048), np.uint8))
    dst.build_overviews([2, 4, 8], rasterio.enums.Resampling.nearest)
  with rasterio.open(path, "r+") as dst:
    dst.write(np.full((1, 2048, 2048), 2, np.uint8))  # full resolution now blue, overviews still red
  img = np.asarray(Image.open(quicklook_png(str(path), str(tmp_path / "q.png"), max_size=512)))
  assert img.shape == (512, 512, 4) and (img[..., :3] == (255, 0, 0)).all()


def test_quicklook_continuous_and_rgb(tmp_path):
  path = tmp_path / "recon.tif"
  h, w = 300, 400
  rows, cols = np.mgrid[:h, :w].astype(np.float32)
  data = np.stack([rows, cols, rows + cols], axis=-1)
  data[:10, :10] = np.nan
  with RasterWriter(path, crs=UTM33, transform=TRANSFORM, width=w, height=h, count=3, dtype="float32",
                    nodata=float("nan"), band_descriptions=["B4", "B3", "B2"], kind="continuous") as wr:
    wr.write(data, 0)
    wr.commit()
  ramp = np.asarray(Image.open(quicklook_png(str(path), max_size=100)))
  assert ramp.shape == (75, 100, 4) and (ramp[:2, :2, 3] == 0).all() and (ramp[5:, 5:, 3] == 255).all()
  assert tuple(ramp[-1, 50, :3]) == (253, 231, 37) and tuple(ramp[0, 50, :3]) == (68, 1, 84)  # viridis ends
  rgb = np.asarray(Image.open(quicklook_png(str(path), str(tmp_path / "rgb.png"), rgb_bands=(3, 2, 1))))
  assert rgb.shape == (h, w, 4) and (rgb[:10, :10, 3] == 0).all()
  assert rgb[-1, -1, 0] == 255 and rgb[20, 20, 0] == 0  # band 3 stretched 2-98 %
  with pytest.raises(OutputError, match="rgb_bands"):
    quicklook_png(str(path), rgb_bands=(1, 2, 4))


# ----------------------------------------------------------------------------------------------- GeoParquet
def _tiles(start, n, dim, size=1280.0):
  ids = np.arange(start, start + n)
  rows, cols = ids // 7, ids % 7
  geoms = [shapely.box(500000 + c * size, 4990000 - (r + 1) * size, 500000 + (c + 1) * size, 4990000 - r * size)
           for r, c in zip(rows, cols)]
  emb = np.random.default_rng(start).standard_normal((n, dim)).astype(np.float32)
  return dict(tile_id=ids, row=rows, col=cols, geometry=geoms, embedding=emb)


def _embed_writer(path, dim=16):
  return GeoParquetWriter(path, crs=UTM33, embedding_dim=dim,
                          extra_columns={"valid_fraction": pa.float32(), "scene": pa.string()},
                          metadata={"checkpoint": "/ckpt/mae", "bands": ["B2", "B3"], "tile": 128})


def _extra(n):
  return dict(valid_fraction=np.linspace(0, 1, n, dtype=np.float32), scene=["S2A_T33"] * n)


def test_geoparquet_metadata_and_round_trip(tmp_path):
  path = tmp_path / "emb.parquet"
  batches = [_tiles(0, 5, 16), _tiles(5, 3, 16), _tiles(8, 9, 16)]
  with _embed_writer(path) as w:
    for b in batches:
      w.add(**b, **_extra(len(b["tile_id"])))
    assert not path.exists()
    assert w.commit() == str(path)
  assert os.listdir(tmp_path) == ["emb.parquet"]
  footer = pq.read_metadata(path).metadata
  geo = json.loads(footer[b"geo"])
  assert pq.read_schema(path).metadata[b"geo"] == footer[b"geo"]  # Arrow readers see the same `geo`
  assert set(geo) == {"version", "primary_column", "columns"}
  assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry" and list(geo["columns"]) == ["geometry"]
  column = geo["columns"]["geometry"]
  assert column["encoding"] == "WKB" and column["geometry_types"] == ["Polygon"]
  assert column["crs"]["id"] == {"authority": "EPSG", "code": 32633}
  assert column["crs"]["type"] == "ProjectedCRS" and "projjson" in column["crs"]["$schema"]
  pyproj = pytest.importorskip("pyproj")
  assert pyproj.CRS.from_json_dict(column["crs"]).to_epsg() == 32633
  geoms = [g for b in batches for g in b["geometry"]]
  assert column["bbox"] == list(shapely.union_all(geoms).bounds)
  assert json.loads(footer[b"spectralgpt"]) == {"checkpoint": "/ckpt/mae", "bands": ["B2", "B3"], "tile": 128}

  table = pq.read_table(path)
  assert table.schema.field("embedding").type == pa.list_(pa.float32(), 16)
  assert [table.schema.field(c).type for c in ("tile_id", "row", "col", "geometry")] == \
      [pa.int64(), pa.int32(), pa.int32(), pa.binary()]
  emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
  np.testing.assert_array_equal(emb, np.concatenate([b["embedding"] for b in batches]))
  assert emb.dtype == np.float32 and table.column("tile_id").to_pylist() == list(range(17))

  gpd = pytest.importorskip("geopandas")
  frame = gpd.read_parquet(path)
  assert frame.crs.to_epsg() == 32633 and len(frame) == 17
  assert all(shapely.equals(a, b) for a, b in zip(frame.geometry, geoms))
  assert frame["scene"].tolist() == ["S2A_T33"] * 17 and frame["valid_fraction"].dtype == np.float32


def test_geoparquet_streams_row_groups(tmp_path):
  path = tmp_path / "emb.parquet"
  with _embed_writer(path, dim=4) as w:
    w._row_group_rows = 6  # normally ~64 MiB of rows; small here to see the flushes
    for start in (0, 4, 8, 12):
      w.add(**_tiles(start, 4, 4), **_extra(4))
      assert w._pending_rows < 6
    w.commit()
  meta = pq.read_metadata(path)
  assert meta.num_rows == 16 and [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [8, 8]
  assert len(_tile_ids(path)) == 16


def _tile_ids(path):
  return pq.read_table(path, columns=["tile_id"]).column("tile_id").to_pylist()


def test_geoparquet_rejects_bad_rows_and_stays_usable(tmp_path):
  path = tmp_path / "emb.parquet"
  good = _tiles(0, 3, 16)
  with _embed_writer(path) as w:
    with pytest.raises(OutputError, match=r"embedding must be numbers \[3, 16\]"):
      w.add(**{**good, "embedding": np.zeros((3, 8), np.float32)}, **_extra(3))
    with pytest.raises(OutputError, match="not a non-empty 2-D Polygon"):
      w.add(**{**good, "geometry": [shapely.Point(0, 0)] * 3}, **_extra(3))
    with pytest.raises(OutputError, match=r"missing \['scene'\]"):
      w.add(**good, valid_fraction=np.zeros(3, np.float32))
    with pytest.raises(OutputError, match="do not fit int32"):
      w.add(**{**good, "row": np.array([0, 1, 2**40])}, **_extra(3))
    w.add(**good, **_extra(3))
    w.commit()
  assert _tile_ids(path) == [0, 1, 2]
  with pytest.raises(OutputError, match="clash"):
    GeoParquetWriter(tmp_path / "x.parquet", crs=UTM33, embedding_dim=4, extra_columns={"row": pa.int32()})


def test_geoparquet_failure_leaves_nothing_and_keeps_existing(tmp_path):
  path = tmp_path / "emb.parquet"
  with pytest.raises(RuntimeError):
    with _embed_writer(path) as w:
      w.add(**_tiles(0, 3, 16), **_extra(3))
      raise RuntimeError("model failed")
  assert os.listdir(tmp_path) == []
  path.write_bytes(b"old embeddings")
  with pytest.raises(RuntimeError):
    with _embed_writer(path) as w:
      w.add(**_tiles(0, 3, 16), **_extra(3))
      raise RuntimeError("model failed")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    with _embed_writer(path) as w:
      w.add(**_tiles(0, 3, 16), **_extra(3))  # no commit
  assert path.read_bytes() == b"old embeddings" and os.listdir(tmp_path) == ["emb.parquet"]


def test_projjson_without_epsg_code():
  crs = CRS.from_proj4("+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000 +ellps=GRS80 +units=m")
  doc = geoparquet.projjson(crs)
  assert doc["type"] == "ProjectedCRS" and geoparquet.projjson(None) is None


def test_publish_together_holds_interrupts_and_names_what_is_in_place(tmp_path, monkeypatch):
  """Several finished files are published as one step: an interrupt during it waits for the last rename, and a
  failed rename drops the files not yet published and says which are already in place."""
  import signal

  from spectralgpt_jax.inference import writers

  def finished(name):
    return _finished_class_writer(tmp_path / name)
  first, second = finished("a.tif"), finished("b.tif")
  real = writers.Staging.publish

  def publish_then_signal(self, tmp, companions=()):
    path = real(self, tmp, companions)
    if path.endswith("a.tif"):
      signal.raise_signal(signal.SIGINT)            # Ctrl-C between the two renames
    return path
  monkeypatch.setattr(writers.Staging, "publish", publish_then_signal)
  with pytest.raises(KeyboardInterrupt):
    writers.publish_together([first, second])
  assert sorted(os.listdir(tmp_path)) == ["a.tif", "b.tif"]     # both, or (without the hold) only a.tif
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

  third, fourth, fifth = finished("c.tif"), finished("d.tif"), finished("e.tif")

  def full_disk(self, tmp, companions=()):
    if self.path.endswith("d.tif"):
      raise OSError(28, "No space left on device")
    return real(self, tmp, companions)
  monkeypatch.setattr(writers.Staging, "publish", full_disk)
  with pytest.raises(OutputError, match=r"d.tif: cannot write the COG .*No space left.*; already in place: .*c.tif$"):
    writers.publish_together([third, fourth, fifth])
  assert sorted(os.listdir(tmp_path)) == ["a.tif", "b.tif", "c.tif"]    # e.tif dropped, no staging left


def test_publish_together_retracts_the_earlier_index_before_the_first_rename(tmp_path, monkeypatch):
  """`retract` files are gone before any file is renamed (so a kill between renames cannot leave an old index over
  half-replaced files); a failed rename's error names those removed; one that cannot be removed is a one-line error
  and nothing is published."""
  from spectralgpt_jax.inference import writers

  def finished(name):
    return _finished_class_writer(tmp_path / name)
  index = tmp_path / "map_series.json"
  index.write_text("{}")
  seen = []
  real = writers.Staging.publish

  def publish(self, tmp, companions=()):
    seen.append((os.path.basename(self.path), index.exists()))
    return real(self, tmp, companions)
  monkeypatch.setattr(writers.Staging, "publish", publish)
  writers.publish_together([finished("a.tif"), finished("b.tif")], retract=[str(index), str(tmp_path / "none.json")])
  assert seen == [("a.tif", False), ("b.tif", False)]
  assert sorted(os.listdir(tmp_path)) == ["a.tif", "b.tif"]

  index.write_text("{}")                         # a failed first rename: the error says the index is gone

  def failing(self, tmp, companions=()):
    raise OSError(5, "Input/output error")
  monkeypatch.setattr(writers.Staging, "publish", failing)
  with pytest.raises(OutputError, match=r"c.tif: cannot write .*Input/output error.*\); removed before publishing: "
                                        r"/.*map_series.json$"):
    writers.publish_together([finished("c.tif")], retract=[str(index)])
  assert not index.exists() and sorted(os.listdir(tmp_path)) == ["a.tif", "b.tif"]
  monkeypatch.setattr(writers.Staging, "publish", real)

  (tmp_path / "dir_series.json").mkdir()          # os.remove refuses a directory
  with pytest.raises(OutputError, match=r"dir_series.json: cannot remove the earlier file before publishing"):
    writers.publish_together([finished("c.tif")], retract=[str(tmp_path / "dir_series.json")])
  assert sorted(os.listdir(tmp_path)) == ["a.tif", "b.tif", "dir_series.json"]     # c.tif dropped, no staging
