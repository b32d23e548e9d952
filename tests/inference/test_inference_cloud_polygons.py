"""Vector cloud masks (MSK_CLOUDS_B00.gml of L1C products before baseline 04.00), burnt onto the scene's grid."""
import glob
import logging
import os

import numpy as np
import pytest
import rasterio.warp
from scipy import ndimage
from shapely import geometry

from rasterio.windows import Window

from scene_fixtures import X0, Y0, native_grid, pixel_centres, write_band_folder, write_raster, write_safe
from spectralgpt_jax.inference import clouds, scene_io
from spectralgpt_jax.inference.scene_io import SceneError
from test_inference_clouds import BANDS, read

OLD_NAME = "S2A_OPER_MSK_CLOUDS_SGS__20160929T154211_A006640_T18SUJ_B00_MSIL1C.gml"
HEAD = ('<?xml version="1.0" encoding="UTF-8"?>\n<eop:Mask xmlns:eop="http://www.opengis.net/eop/2.0" '
        'xmlns:gml="http://www.opengis.net/gml/3.2" gml:id="MSK_CLOUDS">\n'
        '  <gml:name>MSK_CLOUDS pixels mask from data-strip (synthetic)</gml:name>\n')


def write_gml(path, features, srs="urn:ogc:def:crs:EPSG:8.7:32618", dims=2, polygon_srs=False) -> str:
  """A Sentinel-2 GML mask: features = [(mask type, [exterior ring, hole ...])], rings as [(x, y), ...]."""
  out = [HEAD]
  if features and srs:
    out.append(f'  <gml:boundedBy><gml:Envelope srsName="{srs}"><gml:lowerCorner>0 0</gml:lowerCorner>'
               f'<gml:upperCorner>1 1</gml:upperCorner></gml:Envelope></gml:boundedBy>\n  <eop:maskMembers>\n')
  elif not features:
    out.append("  <gml:boundedBy><gml:Null>Inapplicable</gml:Null></gml:boundedBy>\n")
  else:
    out.append("  <eop:maskMembers>\n")
  for i, (kind, rings) in enumerate(features):
    def pos_list(ring):
      return " ".join(" ".join(f"{v:.3f}" for v in (x, y, 42.0)[:dims]) for x, y in ring)
    parts = [f'<gml:exterior><gml:LinearRing><gml:posList srsDimension="{dims}">{pos_list(rings[0])}</gml:posList>'
             '</gml:LinearRing></gml:exterior>']
    parts += [f'<gml:interior><gml:LinearRing><gml:posList srsDimension="{dims}">{pos_list(r)}</gml:posList>'
              '</gml:LinearRing></gml:interior>' for r in rings[1:]]
    srs_attr = f' srsName="{srs}"' if polygon_srs else ""
    out.append(f'    <eop:MaskFeature gml:id="{kind}.{i}"><eop:maskType codeSpace="urn:gs2:S2PDGS:maskType">{kind}'
               f'</eop:maskType><eop:extentOf><gml:Polygon gml:id="{kind}.{i}_Polygon"{srs_attr}>{"".join(parts)}'
               '</gml:Polygon></eop:extentOf></eop:MaskFeature>\n')
  if features:
    out.append("  </eop:maskMembers>\n")
  out.append("</eop:Mask>\n")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write("".join(out))
  return str(path)


def box(x0, y0, x1, y1):
  """A closed ring, corners in map metres from the scene's top-left corner (y down)."""
  return [(X0 + x0, Y0 - y0), (X0 + x1, Y0 - y0), (X0 + x1, Y0 - y1), (X0 + x0, Y0 - y1), (X0 + x0, Y0 - y0)]


def centres_inside(polygons) -> np.ndarray:
  """Which 10 m pixel centres lie inside any of `polygons` (shapely, independent of GDAL's rasterisation)."""
  x, y = pixel_centres(*native_grid(10))
  hit = np.zeros(x.shape, bool)
  for shell, *holes in polygons:
    shape = geometry.Polygon(shell, holes)
    hit |= np.vectorize(lambda a, b: shape.contains(geometry.Point(a, b)))(x, y)
  return hit


# Opaque cloud on the 60 m lattice with a hole; a cirrus block; a slanted cloud whose edges cut through pixels.
OPAQUE = [box(0, 0, 240, 240), box(60, 60, 120, 120)]
CIRRUS = [box(300, 420, 420, 540)]
SLANTED = [[(X0 + 451.3, Y0 - 21.7), (X0 + 588.9, Y0 - 102.2), (X0 + 468.6, Y0 - 297.1), (X0 + 451.3, Y0 - 21.7)]]
FEATURES = [("OPAQUE", OPAQUE), ("CIRRUS", CIRRUS), ("OPAQUE", SLANTED)]


def test_an_old_l1c_product_masks_its_gml_opaque_and_cirrus_polygons(tmp_path, caplog):
  safe = write_safe(tmp_path, "L1C")
  granule = glob.glob(os.path.join(safe, "GRANULE", "*"))[0]
  gml = write_gml(os.path.join(granule, "QI_DATA", OLD_NAME),
                  FEATURES + [("QT_NODATA_PIXELS", [box(480, 480, 600, 600)])])   # another mask type: not cloud
  with caplog.at_level(logging.INFO):
    _, valid, described = read(safe, cloud_mask="auto")
  cloudy = centres_inside([OPAQUE, CIRRUS, SLANTED])
  assert 0.1 < cloudy.mean() < 0.5 and not cloudy[7, 7] and cloudy[3, 3] and cloudy[50, 35]     # the hole stays
  np.testing.assert_array_equal(valid, ~cloudy)
  assert f"cloud mask: MSK_CLOUDS opaque cloud and cirrus polygons from {gml}" in described
  assert "3 cloud polygons (2 OPAQUE, 1 CIRRUS), 3 of them over" in caplog.text
  # a buffer grows them by a disk, read past the scene's edge as for raster masks
  _, grown, _ = read(safe, cloud_mask="auto", cloud_buffer=2)
  y, x = np.mgrid[-2:3, -2:3]
  np.testing.assert_array_equal(grown, ~ndimage.binary_dilation(cloudy, structure=x * x + y * y <= 4))
  # a window is burnt on its own: two strips equal the whole
  with scene_io.open_scene(safe, harmonize="off", cloud_mask="auto") as scene:
    strips = [scene.read(BANDS, Window(0, r, 60, 20))[1] for r in (0, 20, 40)]
  np.testing.assert_array_equal(np.concatenate(strips), valid)
  # the hint when off, and the MSK_CLASSI raster of a newer product wins over a GML
  with caplog.at_level(logging.INFO):
    assert read(safe)[1].all()
  assert f"({OLD_NAME}) that is not applied" in caplog.text
  write_raster(os.path.join(granule, "QI_DATA", "MSK_CLASSI_B00.jp2"), np.zeros((3, 10, 10), np.uint8),
               native_grid(60)[0])
  assert "cloud mask: MSK_CLASSI opaque clouds or cirrus from" in read(safe, cloud_mask="auto")[2]


def test_an_empty_mask_is_no_cloud_and_a_mask_in_another_utm_zone_is_reprojected(tmp_path, caplog):
  folder = os.path.dirname(write_band_folder(tmp_path / "f", BANDS, pattern="{band}.tif")["B02"])
  empty = write_gml(tmp_path / "MSK_CLOUDS_B00.gml", [])
  with caplog.at_level(logging.INFO):
    assert read(folder, cloud_mask=empty)[1].all()
  assert "0 cloud polygons (0 OPAQUE, 0 CIRRUS)" in caplog.text
  # the slanted cloud written in UTM 17N, 3-D points, the CRS on the polygon (no envelope)
  ring17 = list(zip(*rasterio.warp.transform("EPSG:32618", "EPSG:32617", *zip(*SLANTED[0]))))
  moved = write_gml(tmp_path / "other_zone_MSK_CLOUDS_B00.gml", [("CIRRUS", [ring17])], srs="EPSG:32617", dims=3,
                    polygon_srs=True)
  x, y = pixel_centres(*native_grid(10))
  x17, y17 = rasterio.warp.transform("EPSG:32618", "EPSG:32617", x.ravel(), y.ravel())
  shape17 = geometry.Polygon(ring17)
  expected = np.array([shape17.contains(geometry.Point(a, b)) for a, b in zip(x17, y17)]).reshape(x.shape)
  assert expected.sum() > 100
  np.testing.assert_array_equal(read(folder, cloud_mask=moved)[1], ~expected)
  # srsName as a GML 2 URL names its EPSG code (never fetched); polygons of another tile mask nothing, with a warning
  gml2 = write_gml(tmp_path / "gml2.gml", FEATURES, srs="http://www.opengis.net/gml/srs/epsg.xml#32618")
  assert not read(folder, cloud_mask=gml2)[1].all()
  far = [(kind, [[(x + 2e5, y) for x, y in ring] for ring in rings]) for kind, rings in FEATURES]
  with caplog.at_level(logging.WARNING):
    assert read(folder, cloud_mask=write_gml(tmp_path / "far.gml", far))[1].all()
  assert "none of its 3 cloud polygons lies over" in caplog.text and "the mask of another tile?" in caplog.text


def test_bad_gml_masks_are_one_line_naming_the_file(tmp_path):
  folder = os.path.dirname(write_band_folder(tmp_path / "f", BANDS, pattern="{band}.tif")["B02"])

  def fails(path, match, **kw):
    with pytest.raises(SceneError, match=match) as error:
      read(folder, cloud_mask=str(path), **kw)
    assert "\n" not in str(error.value)

  broken = tmp_path / "broken.gml"
  broken.write_text("<eop:Mask")
  fails(broken, "broken.gml: not a readable GML cloud mask")
  other = tmp_path / "other.gml"
  other.write_text('<FeatureCollection xmlns="http://www.opengis.net/wfs"/>')
  fails(other, r"other.gml: not a Sentinel-2 GML mask \(its root element is .*FeatureCollection")
  fails(write_gml(tmp_path / "no_crs.gml", FEATURES, srs=None), "no_crs.gml: polygon OPAQUE.0_Polygon has no srsName")
  odd = write_gml(tmp_path / "odd.gml", [("OPAQUE", [box(0, 0, 60, 60)])])
  with open(odd) as f:
    text = f.read().replace(f"{Y0:.3f}</gml:posList>", "</gml:posList>", 1)
  with open(odd, "w") as f:
    f.write(text)
  fails(odd, "odd.gml: polygon OPAQUE.0_Polygon: gml:posList has 9 numbers, not a ring of at least four 2-D points")
  fails(write_gml(tmp_path / "open.gml", [("OPAQUE", [box(0, 0, 60, 60)[:-1]])]),
        r"open.gml: polygon OPAQUE.0_Polygon: a LinearRing must end where it starts")
  fails(write_gml(tmp_path / "url.gml", FEATURES, srs="http://example.org/crs/utm18n"),
        "url.gml: srsName 'http://example.org/crs/utm18n' is a URL without an EPSG code")
  fails(write_gml(tmp_path / "lonlat.gml", FEATURES, srs="urn:ogc:def:crs:EPSG::4326"), "is a geographic CRS")
  fails(write_gml(tmp_path / "MSK_CLOUDS_B00.gml", FEATURES), "MSK_CLOUDS_B00.gml: is a vector .GML. cloud mask; "
        "--cloud_classes applies to class-coded masks", cloud_classes=clouds.parse_classes("1"))
  fails(tmp_path / "missing.gml", "missing.gml: no such cloud mask file")
