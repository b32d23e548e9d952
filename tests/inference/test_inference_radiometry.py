"""Radiometric harmonisation of scene inputs: stored DN -> reflectance x 10000 as before processing baseline 04.00."""
import json
import logging
import os

import numpy as np
import pytest
from rasterio.windows import Window

from scene_fixtures import (CRS, band_array, constant, constant_values, native_grid, write_band_folder, write_raster,
                            write_safe, write_stac_item)
from spectralgpt_jax import predict
from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.inference import radiometry, scene_io
from spectralgpt_jax.inference.scene_io import SceneError

WINDOW = Window(0, 0, 60, 60)
BANDS = ("B02", "B03", "B04", "B08")


def write_mtd(safe: str, level: str, baseline: str, offsets: dict | None = None, quantification="10000") -> str:
  """Product metadata laid out as ESA's MTD_MSIL1C/2A.xml (namespaced root, the lists the reader needs)."""
  tag, q_tag = (("BOA_ADD_OFFSET", "BOA_QUANTIFICATION_VALUE") if level == "L2A" else
                ("RADIO_ADD_OFFSET", "QUANTIFICATION_VALUE"))
  physical = [b.replace("B0", "B") for b in bandlib.ALL_13]
  spectral = "".join(f'<Spectral_Information bandId="{i}" physicalBand="{p}"/>' for i, p in enumerate(physical))
  values = "".join(f'<{tag} band_id="{bandlib.ALL_13.index(b)}">{v}</{tag}>' for b, v in (offsets or {}).items())
  xml = (f'<?xml version="1.0" encoding="UTF-8"?><n1:Level-{level[1:]}_User_Product xmlns:n1="https://psd-14.'
         f'sentinel2.eo.esa.int/PSD/User_Product_Level-{level[1:]}.xsd"><n1:General_Info><Product_Info>'
         f'<PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE></Product_Info><Product_Image_Characteristics>'
         f'<QUANTIFICATION_VALUES_LIST><{q_tag} unit="none">{quantification}</{q_tag}></QUANTIFICATION_VALUES_LIST>'
         + (f'<{tag}_VALUES_LIST>{values}</{tag}_VALUES_LIST>' if level == "L2A" else
            f'<Radiometric_Offset_List>{values}</Radiometric_Offset_List>')
         + f'<Spectral_Information_List>{spectral}</Spectral_Information_List></Product_Image_Characteristics>'
         f'</n1:General_Info></n1:Level-{level[1:]}_User_Product>')
  path = os.path.join(safe, f"MTD_MSI{level}.xml")
  with open(path, "w", encoding="utf-8") as f:
    f.write(xml)
  return path


def dark_values(band, x, y):
  """Distinct per band, a dark stripe below 1000 DN (clipped to 0 by a -1000 offset) and a nodata (0) corner."""
  v = np.full(np.broadcast(x, y).shape, 1500.0 + 10 * bandlib.ALL_13.index(band))
  v[(x - 500000.0) > 400.0] = 600.0
  v[((x - 500000.0) < 100.0) & ((4200000.0 - y) < 100.0)] = 0.0
  return v


def read(path, harmonize="auto", bands=BANDS):
  with scene_io.open_scene(path, harmonize=harmonize) as scene:
    data, valid = scene.read(bands, WINDOW)
    return data, valid, scene.radiometry, scene.describe()


@pytest.mark.parametrize("level", ["L1C", "L2A"])
def test_safe_offsets_are_removed_per_band_and_nodata_stays(tmp_path, level):
  safe = write_safe(tmp_path, level, values=dark_values)
  offsets = {b: -1000 for b in bandlib.ALL_13} | {"B04": -900}
  write_mtd(safe, level, "05.09", offsets)
  raw, raw_valid, off, _ = read(safe, "off")
  data, valid, rad, text = read(safe)
  np.testing.assert_array_equal(valid, raw_valid)                  # validity comes from the stored DN
  assert not valid.all() and valid.any()
  expected = np.maximum(raw + np.array([-1000, -1000, -900, -1000], np.float32), 0) * valid[..., None]
  np.testing.assert_array_equal(data, expected)
  assert (data[valid] == 0).any(), "the dark stripe is clipped to 0 and stays valid"
  assert off.is_identity(BANDS) and not rad.is_identity(BANDS) and rad.declared
  assert f"MTD_MSI{level}.xml: processing baseline 05.09" in text and "per band" in text


def test_before_baseline_04_and_harmonize_off_are_bit_identical(tmp_path):
  safe = write_safe(tmp_path, "L2A", values=dark_values)
  write_mtd(safe, "L2A", "02.14")
  data, valid, rad, text = read(safe)
  raw, raw_valid, _, _ = read(safe, "off")
  np.testing.assert_array_equal(data, raw)
  assert "DN as stored (MTD_MSIL2A.xml: processing baseline 02.14, no offsets)" in text


def test_a_new_baseline_without_offsets_is_used_as_stored_with_a_warning(tmp_path, caplog):
  safe = write_safe(tmp_path, "L1C", values=dark_values)
  write_mtd(safe, "L1C", "05.10")
  with caplog.at_level(logging.WARNING):
    data, _, _, text = read(safe)
  np.testing.assert_array_equal(data, read(safe, "off")[0])
  assert "MTD_MSIL1C.xml: processing baseline 05.10 but no ADD_OFFSET values; DN used as stored" in caplog.text
  caplog.clear()
  write_mtd(safe, "L1C", "02.14")
  with caplog.at_level(logging.WARNING):
    read(safe)
  assert "ADD_OFFSET" not in caplog.text


def test_a_band_folder_inside_a_safe_finds_the_product_metadata(tmp_path):
  safe = write_safe(tmp_path, "L2A")
  write_mtd(safe, "L2A", "04.00", {b: -1000 for b in bandlib.ALL_13})
  r10m = os.path.join(safe, "GRANULE", os.listdir(os.path.join(safe, "GRANULE"))[0], "IMG_DATA", "R10m")
  data, valid, rad, _ = read(r10m)
  assert valid.all()
  np.testing.assert_array_equal(data[0, 0], [constant(b) - 1000 if constant(b) > 1000 else 0 for b in BANDS])
  assert rad.add_offset["B02"] == -1000


def test_l2a_boa_offsets_win_over_l1c_radio_offsets(tmp_path):
  path = tmp_path / "MTD_MSIL2A.xml"
  path.write_text('<a><RADIO_ADD_OFFSET band_id="1">-7</RADIO_ADD_OFFSET>'
                  '<BOA_ADD_OFFSET band_id="1">-1000</BOA_ADD_OFFSET></a>')
  assert dict(radiometry.from_product_metadata(str(path)).add_offset) == {"B02": -1000.0}


def test_quantification_other_than_10000_is_rescaled(tmp_path):
  safe = write_safe(tmp_path, "L1C", values=dark_values)
  write_mtd(safe, "L1C", "05.00", {b: -1000 for b in bandlib.ALL_13}, quantification="20000")
  raw, valid, _, _ = read(safe, "off")
  data, _, _, text = read(safe)
  np.testing.assert_allclose(data, np.maximum(raw - 1000, 0) * 0.5 * valid[..., None])
  assert "(DN - 1000) * 10000/20000" in text


@pytest.mark.parametrize("content, needle", [
    ("<not xml", "not readable Sentinel-2 product metadata"),
    ('<a><BOA_ADD_OFFSET band_id="2">minus</BOA_ADD_OFFSET></a>', "is not a number"),
    ('<a><BOA_ADD_OFFSET band_id="42">-1000</BOA_ADD_OFFSET></a>', "unknown band_id '42'"),
    ('<a><BOA_QUANTIFICATION_VALUE>0</BOA_QUANTIFICATION_VALUE></a>', "must be positive"),
])
def test_bad_product_metadata_is_one_line_naming_the_file(tmp_path, content, needle):
  safe = write_safe(tmp_path, "L2A")
  with open(os.path.join(safe, "MTD_MSIL2A.xml"), "w", encoding="utf-8") as f:
    f.write(content)
  with pytest.raises(SceneError, match=needle) as info:
    scene_io.open_scene(safe)
  assert "MTD_MSIL2A.xml" in str(info.value) and "\n" not in str(info.value)
  scene_io.open_scene(safe, harmonize="off").close()                 # the override never reads it


def test_safe_without_metadata_needs_an_explicit_choice(tmp_path):
  safe = write_safe(tmp_path, "L1C")
  os.remove(os.path.join(safe, "MTD_MSIL1C.xml"))
  with pytest.raises(SceneError, match="radiometric offset is unknown; pass --harmonize=off"):
    scene_io.open_scene(safe)
  data, _, rad, _ = read(safe, -1000.0)
  assert rad.source == "--harmonize=-1000" and np.all(data == 0)       # constants of 100-220 DN clip to 0


def _stac(tmp_path, properties=None, raster=None):
  files = write_band_folder(tmp_path / "files", BANDS, dark_values, pattern="{band}.tif")
  path = write_stac_item(tmp_path / "item.json", files)
  item = json.loads(open(path).read())
  item["properties"] = properties or {}
  for asset in item["assets"].values():
    asset.update(raster or {})
  with open(path, "w") as f:
    json.dump(item, f)
  return path


@pytest.mark.parametrize("properties, raster, offset, source", [
    ({"earthsearch:boa_offset_applied": True}, {"raster:bands": [{"scale": 0.0001, "offset": -0.1}]}, 0,
     "boa_offset_applied = true"),
    ({"earthsearch:boa_offset_applied": False}, {"raster:bands": [{"scale": 0.0001, "offset": -0.1}]}, -1000,
     "STAC raster scale/offset"),
    ({}, {"bands": [{"name": "x", "raster:scale": 0.0001, "raster:offset": -0.1}]}, -1000, "raster scale/offset"),
    ({"s2:processing_baseline": "05.10"}, None, -1000, "s2:processing_baseline = 05.10"),
    ({"processing:version": "03.01"}, None, 0, "processing:version = 03.01"),
])
def test_stac_items_declare_their_encoding(tmp_path, properties, raster, offset, source):
  path = _stac(tmp_path, properties, raster)
  raw, valid, _, _ = read(path, "off")
  data, _, rad, text = read(path)
  np.testing.assert_allclose(data, np.maximum(raw + offset, 0) * valid[..., None], atol=1e-3)
  assert source in text and rad.declared


def test_gdal_scale_offset_and_undeclared_rasters(tmp_path, caplog):
  array, transform = band_array("B02", dark_values)
  stack = np.stack([array] * 4)
  declared = write_raster(tmp_path / "declared.tif", stack, transform, nodata=0, descriptions=BANDS)
  import rasterio
  with rasterio.open(declared, "r+") as ds:
    ds.scales, ds.offsets = [0.0001] * 4, [-0.1] * 4
  raw, valid, _, _ = read(declared, "off")
  data, _, rad, text = read(declared)
  np.testing.assert_allclose(data, np.maximum(raw - 1000, 0) * valid[..., None], atol=1e-3)
  assert "GDAL scale/offset" in text
  plain = write_raster(tmp_path / "plain.tif", stack, transform, nodata=0, descriptions=BANDS)
  with caplog.at_level(logging.WARNING):
    data, _, rad, _ = read(plain)
  np.testing.assert_array_equal(data, raw)
  assert not rad.declared and "--harmonize=-1000" in caplog.text and "plain.tif" in caplog.text


def test_choice_parsing():
  assert radiometry.parse_choice(" AUTO ") == "auto" and radiometry.parse_choice("off") == "off"
  assert radiometry.parse_choice("-1000") == -1000.0
  for bad in ("nan", "inf", "harmonise", ""):
    with pytest.raises(ValueError, match="expected auto, off, or a number"):
      radiometry.parse_choice(bad)


def test_predict_harmonises_end_to_end_and_records_it(scene, tmp_path, capsys):
  """The band-mean double through predict: its output is the mean of the harmonised bands, tagged as such."""
  import jax.numpy as jnp
  import rasterio

  from spectralgpt_jax import models
  from spectralgpt_jax.inference import checkpoint as ckpt_lib
  bands = list(bandlib.CANONICAL)
  double = ckpt_lib.Checkpoint(str(tmp_path), models.build("mae_vit_tiny", img_size=32),
                               {"task": "pretrain", "bands": bands, "normalization": {"name": "none"}})
  apply = lambda model, x, noise: jnp.broadcast_to(x.mean(-1, keepdims=True), x.shape)  # noqa: E731
  with scene_io.open_scene(scene["path"], harmonize=-1000) as opened:
    written = predict.predict_scenes(double, [opened], str(tmp_path / "mean.tif"), apply=apply, batch_size=8,
                                     progress=False)
  with rasterio.open(written[0]) as ds:
    out, tags = ds.read(1), ds.tags()
  valid = scene["valid"]
  np.testing.assert_allclose(out[valid], np.maximum(scene["data"] - 1000, 0).mean(-1)[valid], rtol=1e-5)
  assert tags["radiometry"] == "harmonised DN = (DN - 1000), clipped at 0 (--harmonize=-1000)"
  with pytest.raises(SystemExit) as info:
    predict.main(["--checkpoint", str(tmp_path), "--input", scene["path"], "--output", str(tmp_path / "x.tif"),
                  "--harmonize", "minus1000"])
  assert info.value.code == 2 and "--harmonize: 'minus1000': expected auto, off" in capsys.readouterr().err


def test_crs_and_grid_unchanged_by_harmonisation(tmp_path):
  folder = write_band_folder(tmp_path / "f", BANDS, constant_values, pattern="{band}.tif")
  transform, w, h = native_grid(10)
  with scene_io.open_scene(os.path.dirname(folder["B02"]), harmonize=-50) as a:
    assert (a.crs.to_string(), a.transform, a.width, a.height) == (CRS, transform, w, h)
    np.testing.assert_array_equal(a.read(BANDS, WINDOW)[0][0, 0], [constant(b) - 50 for b in BANDS])
