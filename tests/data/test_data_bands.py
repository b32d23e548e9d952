import numpy as np
import pytest

from spectralgpt_jax.data import bands


def test_canonical_order_and_groups():
  assert bands.CANONICAL == ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
  assert "B10" not in bands.CANONICAL
  assert bands.spectral_groups() == [
      ("B01", "B02", "B03"),
      ("B04", "B05", "B06"),
      ("B07", "B08", "B8A"),
      ("B09", "B11", "B12"),
  ]
  centres = [bands.BANDS[b].centre_nm for b in bands.CANONICAL]
  assert centres == sorted(centres)  # canonical = wavelength order
  assert {bands.BANDS[b].gsd_m for b in ("B02", "B03", "B04", "B08")} == {10}
  assert {bands.BANDS[b].gsd_m for b in ("B01", "B09", "B10")} == {60}


def test_eurosat_b8a_last_reorders_to_canonical():
  disk = bands.ON_DISK["eurosat"]
  assert disk[-1] == "B8A" and disk[8] == "B09"
  img = np.arange(13, dtype=np.uint16)[None, None, :]  # value = file index
  out = bands.reorder(img, disk, bands.CANONICAL)[0, 0]
  # canonical position 8 (B8A) must come from file index 12, B09 from 8, B11 from 10 (file index 9 = B10 is gone)
  assert out.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 12, 8, 10, 11]


def test_reorder_errors():
  img = np.zeros((2, 2, 3))
  with pytest.raises(ValueError, match="3 bands but 2"):
    bands.reorder(img, ("B01", "B02"), ("B01",))
  with pytest.raises(KeyError, match="B05"):
    bands.reorder(img, ("B01", "B02", "B03"), ("B05",))
  with pytest.raises(ValueError, match="unknown"):
    bands.reorder(img, ("B01", "B02", "B13"), ("B01",))


def test_missing_band_policies():
  src = bands.ON_DISK["segmunich"]  # 10 bands, no B08/B09
  img = np.stack([np.full((2, 2), 10.0 * (i + 1)) for i in range(10)], -1).astype(np.uint16)
  mean = img.astype(np.float32).mean(-1)
  filled = bands.fill_missing(img, src, policy="band_mean")
  assert filled.shape == (2, 2, 12) and filled.dtype == np.float32
  assert np.allclose(filled[..., bands.CANONICAL.index("B08")], mean)
  assert np.allclose(filled[..., bands.CANONICAL.index("B09")], mean)
  assert np.allclose(filled[..., bands.CANONICAL.index("B8A")], 80)  # 8th SegMunich band, moved to its slot
  ref = bands.fill_missing(img, src, policy="band_mean", append_missing=True)  # the reference's layout
  assert np.allclose(ref[..., :10], img) and np.allclose(ref[..., 10:], mean[..., None])
  zero = bands.fill_missing(img, src, policy="zero")
  assert zero.dtype == np.uint16 and (zero[..., 7] == 0).all()
  with pytest.raises(KeyError, match="missing"):
    bands.fill_missing(img, src, policy="error")
  with pytest.raises(ValueError, match="policy"):
    bands.fill_missing(img, src, policy="interpolate")
