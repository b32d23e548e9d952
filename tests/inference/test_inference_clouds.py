"""Cloud masks in scene inference: the pixels a product's (or a user's) cloud mask flags become invalid."""
import argparse
import glob
import json
import logging
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from scene_fixtures import (X0, Y0, constant, native_grid, pixel_centres, write_band_folder, write_raster, write_safe,
                            write_stac_item)
from spectralgpt_jax import embed, predict
from spectralgpt_jax.inference import cli, clouds, scene_io
from spectralgpt_jax.inference.scene_io import SceneError

WINDOW = Window(0, 0, 60, 60)
BANDS = ("B02", "B03", "B04", "B08")
SCL_DEFAULT = (3, 8, 9, 10)


def classes_pattern(shape, seed=0) -> np.ndarray:
  """Every SCL class 0..11, scattered."""
  return np.random.default_rng(seed).integers(0, 12, size=shape).astype(np.uint8)


def on_10m_grid(mask: np.ndarray, transform) -> np.ndarray:
  """`mask` (on the grid `transform`) at the 10 m grid's pixel centres, as nearest-neighbour resampling sees it;
  -1 outside the mask."""
  x, y = pixel_centres(*native_grid(10))
  cols, rows = ~transform * (x, y)
  cols, rows = np.floor(cols).astype(int), np.floor(rows).astype(int)
  inside = (rows >= 0) & (rows < mask.shape[-2]) & (cols >= 0) & (cols < mask.shape[-1])
  out = np.full((mask.shape[0],) + x.shape if mask.ndim == 3 else x.shape, -1, np.int64)
  out[..., inside] = mask[..., rows[inside], cols[inside]]
  return out


def read(path, **kwargs):
  with scene_io.open_scene(path, harmonize="off", **kwargs) as scene:
    data, valid = scene.read(BANDS, WINDOW)
    return data, valid, scene.describe()


def l2a_with_scl(tmp_path):
  """An L2A .SAFE whose R20m SCL scatters every class and whose R60m SCL is all cloud: reading the wrong one shows."""
  safe = write_safe(tmp_path, "L2A")
  scl20 = classes_pattern((30, 30))
  path20 = glob.glob(os.path.join(safe, "GRANULE", "*", "IMG_DATA", "R20m", "*_SCL_20m.jp2"))[0]
  write_raster(path20, scl20, native_grid(20)[0])
  path60 = glob.glob(os.path.join(safe, "GRANULE", "*", "IMG_DATA", "R60m", "*_SCL_60m.jp2"))[0]
  write_raster(path60, np.full((10, 10), 9, np.uint8), native_grid(60)[0])
  return safe, path20, on_10m_grid(scl20, native_grid(20)[0])


def test_l2a_scl_masks_the_default_cloud_classes_at_10m(tmp_path):
  safe, scl_path, scl = l2a_with_scl(tmp_path)
  data, valid, described = read(safe, cloud_mask="auto")
  cloudy = np.isin(scl, SCL_DEFAULT)
  assert 0 < cloudy.mean() < 0.6
  np.testing.assert_array_equal(valid, ~cloudy)
  assert (data[cloudy] == 0).all()
  np.testing.assert_array_equal(data[~cloudy], np.broadcast_to([constant(b) for b in BANDS], data[~cloudy].shape))
  assert (f"cloud mask: SCL classes 3,8,9,10 (cloud shadows, cloud medium probability, cloud high probability, "
          f"thin cirrus) from {scl_path}") in described
  _, snow_valid, described = read(safe, cloud_mask="auto", cloud_classes=clouds.parse_classes("11"))
  np.testing.assert_array_equal(snow_valid, scl != 11)
  assert "SCL classes 11 (snow or ice)" in described
  # a band folder inside the product finds the same SCL file
  img_data = os.path.dirname(os.path.dirname(scl_path))
  np.testing.assert_array_equal(read(img_data, cloud_mask="auto")[1], ~cloudy)


def test_l1c_msk_classi_masks_opaque_clouds_and_cirrus_not_snow(tmp_path):
  safe = write_safe(tmp_path, "L1C")
  classi = np.zeros((3, 10, 10), np.uint8)
  classi[0, :3] = 1        # opaque clouds: top rows
  classi[1, :, :2] = 1     # cirrus: left columns
  classi[2, 5:, 5:] = 1    # snow and ice: not cloud
  granule = glob.glob(os.path.join(safe, "GRANULE", "*"))[0]
  write_raster(os.path.join(granule, "QI_DATA", "MSK_CLASSI_B00.jp2"), classi, native_grid(60)[0])
  _, valid, described = read(safe, cloud_mask="auto")
  on10 = on_10m_grid(classi, native_grid(60)[0])
  np.testing.assert_array_equal(valid, ~((on10[0] == 1) | (on10[1] == 1)))
  assert valid[-10, -10] and not valid[0, 30] and not valid[40, 0]      # snow stays; clouds and cirrus go
  assert "cloud mask: MSK_CLASSI opaque clouds or cirrus from" in described


def test_auto_without_a_mask_is_one_line_naming_the_input(tmp_path):
  safe = write_safe(tmp_path / "old", "L1C")
  with pytest.raises(SceneError, match=r"\.SAFE: --cloud_mask auto found no SCL file and no QI_DATA/MSK_CLASSI_B00 "
                                       r"raster or MSK_CLOUDS_B00 GML; pass --cloud_mask MASK.tif or off"):
    read(safe, cloud_mask="auto")
  granule = glob.glob(os.path.join(safe, "GRANULE", "*"))[0]
  os.makedirs(os.path.join(granule, "QI_DATA"))
  open(os.path.join(granule, "QI_DATA", "MSK_CLOUDS_B00.gml"), "w").close()      # found, and unreadable: says so
  with pytest.raises(SceneError, match="MSK_CLOUDS_B00.gml: not a readable GML cloud mask"):
    read(safe, cloud_mask="auto")
  plain = write_raster(tmp_path / "plain.tif", np.ones((4, 60, 60), np.uint16), native_grid(10)[0],
                       descriptions=BANDS)
  with pytest.raises(SceneError, match="plain.tif: --cloud_mask auto found no band described SCL or QA60"):
    read(plain, cloud_mask="auto")
  files = write_band_folder(tmp_path / "stac", BANDS, pattern="{band}.tif")
  item = write_stac_item(tmp_path / "stac" / "item.json", files)
  with pytest.raises(SceneError, match="item.json: --cloud_mask auto found no 'scl' asset"):
    read(item, cloud_mask="auto")


@pytest.mark.parametrize("layer", ["SCL", "QA60"])
def test_a_geotiff_band_described_scl_or_qa60_is_its_mask(tmp_path, layer):
  transform = native_grid(10)[0]
  if layer == "SCL":
    mask = classes_pattern((60, 60), seed=1).astype(np.uint16)
    cloudy = np.isin(mask, SCL_DEFAULT)
  else:  # Earth Engine's QA60: bit 10 opaque clouds, bit 11 cirrus; other bits are not cloud
    mask = np.zeros((60, 60), np.uint16)
    mask[:10] = 1 << 10
    mask[:, :7] |= 1 << 11
    mask[30:40] |= 1 << 3
    cloudy = (np.arange(60)[:, None] < 10) | (np.arange(60)[None, :] < 7)
  stack = np.concatenate([np.stack([np.full((60, 60), constant(b), np.uint16) for b in BANDS]), mask[None]])
  path = write_raster(tmp_path / "stack.tif", stack, transform, descriptions=[*BANDS, layer])
  with scene_io.open_scene(path) as scene:
    assert scene.bands == BANDS                       # the mask band is not a data band
  _, valid, described = read(path, cloud_mask="auto")
  np.testing.assert_array_equal(valid, ~cloudy)
  assert f"cloud mask: {'SCL classes 3,8,9,10' if layer == 'SCL' else 'QA60 bits 10'}" in described


def test_stac_scl_asset(tmp_path):
  files = write_band_folder(tmp_path / "item", BANDS, pattern="{band}.tif")
  scl = classes_pattern((30, 30), seed=2)
  scl_path = write_raster(tmp_path / "item" / "SCL.tif", scl, native_grid(20)[0])
  item = write_stac_item(tmp_path / "item" / "item.json", files, extra_assets={"scl": {"href": "SCL.tif"}})
  _, valid, described = read(item, cloud_mask="auto")
  np.testing.assert_array_equal(valid, ~np.isin(on_10m_grid(scl, native_grid(20)[0]), SCL_DEFAULT))
  assert f"from {scl_path}" in described


def test_a_mask_file_on_another_grid_with_values_or_ranges(tmp_path):
  folder = os.path.dirname(write_band_folder(tmp_path / "f", BANDS, pattern="{band}.tif")["B02"])
  transform = from_origin(X0 + 95.0, Y0 - 35.0, 30.0, 30.0)   # 30 m, offset, covering part of the scene only
  probability = (np.arange(12 * 12).reshape(12, 12) % 101).astype(np.uint8)
  mask = write_raster(tmp_path / "cloud_probability.tif", probability, transform)
  on10 = on_10m_grid(probability, transform)
  _, valid, described = read(folder, cloud_mask=mask, cloud_classes=clouds.parse_classes("40-100"))
  np.testing.assert_array_equal(valid, ~(on10 >= 40))
  assert (on10 == -1).any() and valid[on10 == -1].all()          # outside the mask's footprint: not cloud
  assert f"cloud mask: values 40-100 from {mask}" in described
  _, valid, _ = read(folder, cloud_mask=mask, cloud_classes=clouds.parse_classes("0,7,55-56"))
  np.testing.assert_array_equal(valid, ~np.isin(on10, (0, 7, 55, 56)))


def test_a_buffer_grows_clouds_by_a_disk_and_strips_agree_at_their_seams(tmp_path):
  folder = os.path.dirname(write_band_folder(tmp_path / "f", BANDS, pattern="{band}.tif")["B02"])
  binary = np.zeros((60, 60), np.uint8)
  binary[29, 40] = 1                                       # one cloudy pixel, next to the seam of two strips
  binary[0, 0] = 1                                         # and one at the corner: the buffer reads past the edge
  mask = write_raster(tmp_path / "binary.tif", binary, native_grid(10)[0])
  rows, cols = np.mgrid[0:60, 0:60]
  grown = (((rows - 29) ** 2 + (cols - 40) ** 2) <= 9) | ((rows ** 2 + cols ** 2) <= 9)
  with scene_io.open_scene(folder, harmonize="off", cloud_mask=mask, cloud_classes=((1.0, 1.0),),
                           cloud_buffer=3) as scene:
    _, valid = scene.read(BANDS, WINDOW)
    top, bottom = scene.read(BANDS, Window(0, 0, 60, 30))[1], scene.read(BANDS, Window(0, 30, 60, 30))[1]
    described = scene.describe()
  np.testing.assert_array_equal(valid, ~grown)
  np.testing.assert_array_equal(np.concatenate([top, bottom]), valid)
  assert f"cloud mask: values 1 from {mask}, buffered by 3 px" in described
  with pytest.raises(ValueError, match="cloud buffer -1: must be a whole number of pixels >= 0"):
    read(folder, cloud_mask=mask, cloud_classes=((1.0, 1.0),), cloud_buffer=-1)


def test_a_mask_in_another_crs_is_reprojected(tmp_path):
  """A lon/lat mask of a cloud block over the left half: the block's interior is masked, pixels well away are not."""
  from rasterio.enums import Resampling
  from rasterio.warp import calculate_default_transform, reproject
  folder = os.path.dirname(write_band_folder(tmp_path / "f", BANDS, pattern="{band}.tif")["B02"])
  utm = np.zeros((60, 60), np.uint8)
  utm[:, :30] = 1
  src_transform = native_grid(10)[0]
  transform, w, h = calculate_default_transform("EPSG:32618", "EPSG:4326", 60, 60, left=X0, bottom=Y0 - 600,
                                                right=X0 + 600, top=Y0, resolution=2e-5)   # about 2 m
  lonlat = np.zeros((h, w), np.uint8)
  reproject(utm, lonlat, src_transform=src_transform, src_crs="EPSG:32618", dst_transform=transform,
            dst_crs="EPSG:4326", resampling=Resampling.nearest)
  mask = write_raster(tmp_path / "lonlat.tif", lonlat, transform, crs="EPSG:4326")
  _, valid, _ = read(folder, cloud_mask=mask, cloud_classes=((1.0, 1.0),))
  assert not valid[5:55, 3:27].any() and valid[5:55, 33:57].all()


def test_bad_mask_files_are_one_line_naming_the_file(tmp_path):
  folder = os.path.dirname(write_band_folder(tmp_path / "f", BANDS, pattern="{band}.tif")["B02"])
  transform = native_grid(20)[0]
  binary = write_raster(tmp_path / "binary.tif", np.zeros((30, 30), np.uint8), transform)
  with pytest.raises(SceneError, match="binary.tif: not an SCL, MSK_CLASSI or QA60 mask by its name; pass "
                                       "--cloud_classes"):
    read(folder, cloud_mask=binary)
  with pytest.raises(SceneError, match="missing.tif: no such cloud mask file"):
    read(folder, cloud_mask=str(tmp_path / "missing.tif"))
  far = write_raster(tmp_path / "far_SCL.tif", np.zeros((30, 30), np.uint8), from_origin(X0 + 1e5, Y0, 20, 20))
  with pytest.raises(SceneError, match="far_SCL.tif: its footprint does not overlap"):
    read(folder, cloud_mask=far)
  two = write_raster(tmp_path / "two.tif", np.zeros((2, 30, 30), np.uint8), transform)
  with pytest.raises(SceneError, match="two.tif: a cloud mask must have one band .* this one has 2"):
    read(folder, cloud_mask=two, cloud_classes=((1.0, 1.0),))
  qa60 = write_raster(tmp_path / "QA60.tif", np.zeros((30, 30), np.uint16), transform)
  with pytest.raises(SceneError, match="QA60.tif: is a QA60 bit mask; --cloud_classes applies to class-coded"):
    read(folder, cloud_mask=qa60, cloud_classes=((1.0, 1.0),))
  garbage = tmp_path / "garbage_SCL.tif"
  garbage.write_bytes(b"not a raster")
  with pytest.raises(SceneError, match="garbage_SCL.tif: not a readable raster"):
    read(folder, cloud_mask=str(garbage))


def test_off_applies_nothing_and_says_a_mask_is_there(tmp_path, caplog):
  safe, _, _ = l2a_with_scl(tmp_path)
  with caplog.at_level(logging.INFO):
    _, valid, described = read(safe)
  assert valid.all() and "; no cloud mask;" in described
  assert "_SCL_20m.jp2) that is not applied; --cloud_mask auto masks its clouds" in caplog.text


def test_class_parsing():
  assert clouds.parse_classes("3, 8,9,10") == ((3, 3), (8, 8), (9, 9), (10, 10))
  assert clouds.parse_classes("40-100") == ((40, 100),)
  assert clouds.parse_classes("") is None and clouds.parse_classes(None) is None
  for bad, needle in (("cloud", "'cloud' is not a value or a range"), ("9-3", "the range '9-3' is empty"),
                      ("3,,9", "'' is not a value"), ("nan", "'nan' is not a value")):
    with pytest.raises(ValueError, match=needle):
      clouds.parse_classes(bad)


def test_which_mask_each_input_gets():
  def masks(count, **kw):
    args = argparse.Namespace(**{"cloud_mask": "off", "cloud_classes": None, "cloud_mask2": None,
                                 "input2": "later.tif" if count == 2 else None, **kw})
    return cli.cloud_masks(args, count)
  assert masks(2) == ["off", "off"] and masks(2, cloud_mask="auto") == ["auto", "auto"]
  assert masks(2, cloud_mask="a.tif", cloud_mask2="b.tif") == ["a.tif", "b.tif"]
  assert masks(2, cloud_mask="auto", cloud_mask2="off") == ["auto", "off"]
  with pytest.raises(cli.UsageError, match="--cloud_mask a.tif is the mask of --input; pass --cloud_mask2"):
    masks(2, cloud_mask="a.tif")
  with pytest.raises(cli.UsageError, match="--cloud_classes says which mask values are cloud: it needs"):
    masks(1, cloud_classes=((1.0, 1.0),))
  with pytest.raises(cli.UsageError, match="--cloud_buffer grows the clouds of a mask: it needs --cloud_mask"):
    masks(1, cloud_buffer=2)
  with pytest.raises(cli.UsageError, match="--cloud_buffer -2: must be >= 0 pixels"):
    masks(1, cloud_mask="auto", cloud_buffer=-2)
  assert masks(1, cloud_mask="auto", cloud_buffer=2) == ["auto"]
  with pytest.raises(cli.UsageError, match="--cloud_mask2 is the mask of --input2, and there is no --input2"):
    masks(1, cloud_mask2="auto")
  embed_args = argparse.Namespace(cloud_mask="a.tif", cloud_classes=None)     # embed has no --cloud_mask2
  assert cli.cloud_masks(embed_args, 1) == ["a.tif"]
  assert cli.cloud_masks(argparse.Namespace(cloud_mask="auto", cloud_classes=None), 3) == ["auto"] * 3
  assert masks(3, cloud_mask="auto") == ["auto"] * 3                          # a predict time series
  with pytest.raises(cli.UsageError, match="--cloud_mask a.tif is one scene's mask file; with 2 --input scenes"):
    masks(2, cloud_mask="a.tif", input2=None)
  with pytest.raises(cli.UsageError, match="--cloud_mask a.tif is one scene's mask file; with 3 --input scenes"):
    cli.cloud_masks(embed_args, 3)


def test_predict_and_embed_leave_clouds_out_and_record_the_mask(scene, exports, tmp_path):
  """Through the commands on the real demo crop: cloud pixels are nodata in the output, the tags say which mask;
  embed drops tiles below --min_valid_fraction."""
  import jax.numpy as jnp

  from spectralgpt_jax import models
  from spectralgpt_jax.inference import checkpoint as ckpt_lib
  h, w = scene["data"].shape[:2]
  scl = np.full((h, w), 4, np.uint8)
  scl[60:100, 80:150] = 9                             # a cloud
  scl[100:110, 80:150] = 3                            # and its shadow
  mask = write_raster(tmp_path / "T32_SCL.tif", scl, scene["transform"], crs=scene["crs"])
  cloudy = np.isin(scl, SCL_DEFAULT)
  bands = list(scene_io.bandlib.CANONICAL)
  double = ckpt_lib.Checkpoint(str(tmp_path), models.build("mae_vit_tiny", img_size=32),
                               {"task": "pretrain", "bands": bands, "normalization": {"name": "none"}})
  apply = lambda model, x, noise: jnp.broadcast_to(x.mean(-1, keepdims=True), x.shape)  # noqa: E731
  with scene_io.open_scene(scene["path"], harmonize="off", cloud_mask=mask) as opened:
    written = predict.predict_scenes(double, [opened], str(tmp_path / "mean.tif"), apply=apply, batch_size=8,
                                     progress=False)
  with rasterio.open(written[0]) as ds:
    out, tags = ds.read(1), ds.tags()
  keep = scene["valid"] & ~cloudy
  np.testing.assert_allclose(out[keep], scene["data"].mean(-1)[keep], rtol=1e-5)
  assert np.isnan(out[cloudy]).all()
  assert tags["cloud_mask"] == f"cloud mask: SCL classes 3,8,9,10 (cloud shadows, cloud medium probability, " \
                               f"cloud high probability, thin cirrus) from {mask}"

  out = tmp_path / "emb.parquet"
  assert embed.main(["--checkpoint", exports["pretrain"], "--input", scene["path"], "--output", str(out),
                     "--cloud_mask", mask, "--min_valid_fraction", "0.75", "--no_progress"]) == 0
  table = pq.read_table(out).to_pandas()
  valid = scene["valid"] & ~cloudy
  expected = 0
  for r in range(-(-h // 16)):
    for c in range(-(-w // 16)):
      tile = np.zeros((16, 16), bool)
      part = valid[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16]
      tile[:part.shape[0], :part.shape[1]] = part
      expected += tile.mean() >= 0.75
  assert len(table) == expected and (table.valid_fraction >= 0.75).all()
  meta = json.loads(pq.read_metadata(out).metadata[b"spectralgpt"])
  assert meta["cloud_mask"] == tags["cloud_mask"] and meta["radiometry"]


def test_predict_skips_tiles_below_the_valid_fraction(exports, scene, tmp_path):
  """A classification label map: a tile whose valid share (nodata corner, cloud) is below the threshold is nodata."""
  h, w = scene["data"].shape[:2]
  binary = np.zeros((h, w), np.uint8)
  binary[:, 100:] = 1                                      # the right part of the scene is cloud
  mask = write_raster(tmp_path / "clouds.tif", binary, scene["transform"], crs=scene["crs"])
  out = tmp_path / "labels.tif"
  assert predict.main(["--checkpoint", exports["classification"], "--input", scene["path"], "--output", str(out),
                       "--cloud_mask", mask, "--cloud_classes", "1", "--min_valid_fraction", "0.6",
                       "--no_progress"]) == 0
  size = json.loads(open(os.path.join(exports["classification"], "metadata.json")).read())["image_size"]
  valid = np.zeros((-(-h // size) * size, -(-w // size) * size), bool)
  valid[:h, :w] = scene["valid"] & (binary == 0)
  share = valid.reshape(valid.shape[0] // size, size, -1, size).mean(axis=(1, 3))
  with rasterio.open(out) as ds:
    labels, tags = ds.read(1), ds.tags()
  assert 0 < (share >= 0.6).sum() < share.size
  np.testing.assert_array_equal(labels != 255, share >= 0.6)
  assert tags["cloud_mask"] == f"cloud mask: values 1 from {mask}"


def test_predict_flags_are_checked_before_any_work(exports, scene, tmp_path, capsys):
  out = tmp_path / "out"
  out.mkdir()
  code = predict.main(["--checkpoint", exports["change_detection"], "--input", scene["path"], "--input2",
                       scene["path"], "--output", str(out / "cd.tif"), "--cloud_mask", scene["path"]])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 1 and len(err) == 1 and "pass --cloud_mask2 for --input2" in err[0]
  for command in (embed, predict):
    code = command.main(["--checkpoint", exports["pretrain"], "--input", scene["path"], "--output",
                         str(out / "e.parquet"), "--min_valid_fraction", "1.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == ["error: --min_valid_fraction 1.5: must be in [0, 1]"]
  assert not os.listdir(out)
