"""Shared base of our TF-free tfds builders.

Every builder is a `GeneratorBasedBuilder` writing ArrayRecord with `Tensor` features only (tfds `Image`
features need TensorFlow to encode). The images are stored as uint16 in canonical band order;
the band list goes into the dataset metadata (`info.metadata["bands"]`). Variable-size images use zlib-encoded
tensors (tfds requires an encoding for more than one unknown dimension).

Builders take `on_error` ("raise" or "skip") and write `<data_dir>/<name>/<version>/prepare_report.json`
with what was read, skipped (file + reason) and excluded (by list).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.data.readers import common


def image_feature(h=None, w=None, n=len(bandlib.CANONICAL)):
  encoding = "zlib" if h is None else "none"
  return tfds.features.Tensor(shape=(h, w, n), dtype=np.uint16, encoding=encoding)


def map_feature(h=None, w=None):
  encoding = "zlib" if h is None else "none"
  return tfds.features.Tensor(shape=(h, w), dtype=np.uint8, encoding=encoding)


class Sentinel2Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Common plumbing: manual_dir check, on_error policy, the skip report, band metadata."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release (spectralgpt_jax)."}
  BANDS: tuple[str, ...] = bandlib.CANONICAL
  DESCRIPTION = ""
  HOMEPAGE = ""
  CITATION = ""
  LICENSE = ""

  def __init__(self, *, on_error: str = "raise", **kwargs):
    if on_error not in common.ON_ERROR:
      raise ValueError(f"on_error must be one of {common.ON_ERROR}, got {on_error!r}")
    self.on_error = on_error
    self.report = common.Report()
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{self.DESCRIPTION}\nLicence: {self.LICENSE}",
        features=tfds.features.FeaturesDict(self._features()),  # defined by each dataset
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        metadata=tfds.core.MetadataDict(bands=list(self.BANDS), license=self.LICENSE),
    )

  def _manual_dir(self, dl_manager) -> str:
    path = os.fspath(dl_manager.manual_dir)
    common.require_dir(path, f"{self.name} manual_dir")
    return path

  def _generate_examples(self, items, read_one, name_of=str):
    """Yield (key, example) for each item read by `read_one`, applying on_error and recording the report."""
    for ex in common.guarded(items, read_one, self.on_error, self.report, name_of):
      yield ex["id"], ex

  def _download_and_prepare(self, dl_manager, download_config):
    try:
      super()._download_and_prepare(dl_manager, download_config)
    except Exception as e:
      if not self.report.skipped:
        raise
      # With on_error="skip" a split whose every file was bad ends in tfds's "No examples were yielded": the
      # reasons would be lost with the incomplete directory, so they are written beside it and named here.
      path = os.path.join(os.path.dirname(os.fspath(self.data_path)), "prepare_report.failed.json")
      self.report.write(path)
      first = "; ".join(f"{where}: {reason}" for where, reason in self.report.skipped[:3])
      raise common.DataError(f"{self.name}: preparation failed ({type(e).__name__}: {str(e).splitlines()[0]}) "
                             f"after skipping {len(self.report.skipped)} file(s) with on_error=skip; first: "
                             f"{first}; every reason: {path}") from None
    # Written next to the prepared files (the incomplete dir is renamed into place afterwards).
    self.report.write(os.path.join(os.fspath(self.data_path), "prepare_report.json"))
