"""A crop of the real CC0 demo scene for the command tests: constants and GeoTIFF helpers (the fixtures that build
it are in conftest.py)."""
import numpy as np
import rasterio
from rasterio.windows import Window

from spectralgpt_jax.data import bands as bandlib

CANONICAL = bandlib.CANONICAL
# A 150 x 173 px window (not a multiple of any tile or stride) across the coast of the demo scene: sea, beach, land.
CROP = Window(col_off=1010, row_off=980, width=173, height=150)
NODATA_CORNER = 40  # the top-left 40 x 40 px of the GeoTIFF are nodata: whole 16 px tiles and parts of 32 px ones


def read_all(path, bands=CANONICAL):
  from spectralgpt_jax.inference.scene_io import open_scene
  with open_scene(path, bands=None) as scene:
    data, valid = scene.read(bands, Window(0, 0, scene.width, scene.height))
    return data, valid, scene.crs, scene.transform


def write_multiband(path, data: np.ndarray, transform, crs, descriptions=None, nodata=None, order=None) -> str:
  """[H, W, C] float32 -> a GeoTIFF whose bands (in `order`, default as given) carry `descriptions`."""
  order = list(range(data.shape[-1])) if order is None else order
  with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=len(order),
                     dtype="float32", crs=crs, transform=transform, nodata=nodata) as dst:
    dst.write(np.moveaxis(data[..., order], -1, 0))
    for i, name in enumerate(descriptions or ()):
      dst.set_band_description(i + 1, name)
  return str(path)
