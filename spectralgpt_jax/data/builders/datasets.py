"""The six tfds builders. Each reads the dataset's real layout from `manual_dir` through its reader.

Element schema (all images uint16, canonical band order, bands in `info.metadata["bands"]`):
  eurosat_ms      image [64,64,12]            label (10 classes)          id
  bigearthnet_s2  image [120,120,12]          labels multi-hot [19] uint8 id   splits train/val/test/train_10pct
  bigearthnet_v2  as bigearthnet_s2 (BigEarthNet v2.0 / reBEN); config reference_maps adds reference_map
                  [120,120] uint8 (BEN-19 index per pixel, 255 = none)
  fmow_sentinel   image [H,W,12] (varying)    label (62 classes)          id
  segmunich       image [128,128,10]          mask [128,128] uint8 (0..12) id  (bands B01..B07,B8A,B11,B12)
  oscd            image1/image2 [H,W,12]      change [H,W] uint8 (0/1)    id   (whole cities; crops in the pipeline)
"""

from __future__ import annotations


import numpy as np
import tensorflow_datasets as tfds

from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.data.builders.base import Sentinel2Builder, image_feature, map_feature
from spectralgpt_jax.data.readers import bigearthnet, bigearthnet_v2, eurosat, fmow, oscd, segmunich

_DOCS = "See docs/data.md of spectralgpt_jax for the full recipe."


class EurosatMs(Sentinel2Builder):
  DESCRIPTION = "EuroSAT-MS: 27,000 Sentinel-2 L1C patches, 64x64, 10 classes (B8A reordered, B10 dropped)."
  HOMEPAGE = "https://github.com/phelber/EuroSAT"
  LICENSE = "MIT (dataset); Copernicus Sentinel data terms"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Put EuroSAT_MS.zip / EuroSATallBands.zip, or its extracted folder, in manual_dir, optionally with split files:
      wget https://zenodo.org/records/7711810/files/EuroSAT_MS.zip
      # or: wget https://hf.co/datasets/torchgeo/eurosat/resolve/1ce6f1bfb56db63fd91b6ecc466ea67f2509774c/EuroSATallBands.zip
      for s in train val test; do wget https://hf.co/datasets/torchgeo/eurosat/resolve/1ce6f1bfb56db63fd91b6ecc466ea67f2509774c/eurosat-$s.txt; done
    {_DOCS}"""

  def __init__(self, *, split_scheme: str | None = None, verify_split_md5: bool | None = None, **kwargs):
    self.split_scheme, self.verify_split_md5 = split_scheme, verify_split_md5
    super().__init__(**kwargs)

  def _features(self):
    return {
        "image": image_feature(64, 64),
        "label": tfds.features.ClassLabel(names=eurosat.CLASSES),
        "id": tfds.features.Text(),
    }

  def _split_generators(self, dl_manager):
    root = self._manual_dir(dl_manager)
    reader = eurosat.EuroSAT(eurosat.find_source(root), split_dir=root, split_scheme=self.split_scheme,
                             verify_split_md5=self.verify_split_md5)
    splits = reader.splits()
    self.report.details.update(reader.split_report)
    return {split: self._generate_examples(stems, reader.read) for split, stems in splits.items()}


class BigearthnetS2(Sentinel2Builder):
  DESCRIPTION = (
      "BigEarthNet-S2 v1.0 (L2A), 12 bands resampled bilinearly to 120x120 (10 m), BEN-19 multi-hot "
      "labels, official cloud/snow exclusion and BEN-19 splits; train_10pct = seeded 10% of train."
  )
  HOMEPAGE = "https://bigearth.net"
  LICENSE = "CDLA-Permissive-1.0"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Extract BigEarthNet-S2-v1.0.tar.gz in manual_dir (gives BigEarthNet-v1.0/<patch>/...):
      wget https://zenodo.org/records/12687186/files/BigEarthNet-S2-v1.0.tar.gz   # 65 GiB, md5 5a64e9ce38deb036a435a7b59494924c
      tar xzf BigEarthNet-S2-v1.0.tar.gz -C <manual_dir>
    The official cloud/snow lists and BEN-19 splits ship with spectralgpt_jax (from bigearthnet-common 2.8.0).
    {_DOCS}"""
  SUBSET_FRACTION, SUBSET_SEED = 0.1, 0

  def __init__(self, *, lists_dir: str | None = None, **kwargs):
    self.lists_dir = lists_dir
    super().__init__(**kwargs)

  def _features(self):
    return {
        "image": image_feature(120, 120),
        "id": tfds.features.Text(),
        "labels": tfds.features.Tensor(shape=(len(bigearthnet.LABELS_19),), dtype=np.uint8),
    }

  def _split_generators(self, dl_manager):
    reader = bigearthnet.BigEarthNet(self._manual_dir(dl_manager), self.lists_dir)
    splits = {s: reader.split_names(s, self.report) for s in bigearthnet.SPLITS}
    reader.require_nonempty(splits)
    splits["train_10pct"] = bigearthnet.seeded_subset(splits["train"], self.SUBSET_FRACTION, self.SUBSET_SEED)
    return {s: self._generate_examples(names, reader.read) for s, names in splits.items() if names}


class BigearthnetV2(Sentinel2Builder):
  DESCRIPTION = (
      "BigEarthNet v2.0 (reBEN, L2A by sen2cor 2.11), 12 bands resampled bilinearly to 120x120 (10 m), BEN-19 "
      "multi-hot labels and the geographic train/validation/test split of metadata.parquet, snow/cloud/shadow "
      "patches excluded; train_10pct = seeded 10% of train (as bigearthnet_s2)."
  )
  HOMEPAGE = "https://bigearth.net"
  LICENSE = "CDLA-Permissive-1.0"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    From https://zenodo.org/records/10891137 put metadata.parquet (and, so the report counts the excluded patches,
    metadata_for_patches_with_snow_cloud_or_shadow.parquet) in manual_dir and extract BigEarthNet-S2.tar.zst there
    (Reference_Maps.tar.zst too for the reference_maps config):
      tar --zstd -xf BigEarthNet-S2.tar.zst -C <manual_dir>
    {_DOCS}"""
  # Why reference maps are a config, off by default: no task reads them, they are a separate download, and a
  # config gets its own folder, so a dataset prepared without them is never mistaken for one with them.
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="default", description="image, labels, id"),
      tfds.core.BuilderConfig(name="reference_maps", description="image, labels, id and reference_map"),
  ]
  SUBSET_FRACTION, SUBSET_SEED = BigearthnetS2.SUBSET_FRACTION, BigearthnetS2.SUBSET_SEED

  def __init__(self, *, reference_maps: bool = False, **kwargs):
    if reference_maps:
      if kwargs.get("config") not in (None, "reference_maps"):
        raise ValueError(f"reference_maps=True selects the reference_maps config, not {kwargs['config']!r}")
      kwargs["config"] = "reference_maps"
    super().__init__(**kwargs)

  @property
  def reference_maps(self) -> bool:
    return self.builder_config.name == "reference_maps"

  def _features(self):
    features = {
        "image": image_feature(120, 120),
        "id": tfds.features.Text(),
        "labels": tfds.features.Tensor(shape=(len(bigearthnet.LABELS_19),), dtype=np.uint8),
    }
    if self.reference_maps:
      features["reference_map"] = map_feature(120, 120)
    return features

  def _split_generators(self, dl_manager):
    reader = bigearthnet_v2.BigEarthNetV2(self._manual_dir(dl_manager), reference_maps=self.reference_maps)
    splits = {s: reader.split_names(s, self.report) for s in bigearthnet_v2.SPLITS}
    reader.require_nonempty(splits)
    splits["train_10pct"] = bigearthnet.seeded_subset(splits["train"], self.SUBSET_FRACTION, self.SUBSET_SEED)
    return {s: self._generate_examples(names, reader.read) for s, names in splits.items() if names}


class FmowSentinel(Sentinel2Builder):
  DESCRIPTION = "fMoW-Sentinel (SatMAE): 13-band L1C crops of varying size, 62 classes; B10 dropped."
  HOMEPAGE = "https://purl.stanford.edu/vg497cb6002"
  LICENSE = "see https://purl.stanford.edu/vg497cb6002 (terms of the Stanford Digital Repository item)"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download the fMoW-Sentinel archive and CSVs from https://purl.stanford.edu/vg497cb6002 and put train.csv,
    val.csv (test.csv) and the extracted fmow-sentinel/ folder in manual_dir. {_DOCS}"""

  def _features(self):
    return {
        "image": image_feature(),
        "label": tfds.features.ClassLabel(names=fmow.CATEGORIES),
        "id": tfds.features.Text(),
    }

  def _split_generators(self, dl_manager):
    reader = fmow.FMoWSentinel(self._manual_dir(dl_manager))
    splits = reader.available_splits()
    if not splits:
      raise fmow.DataError(f"{reader.root}: none of train.csv / val.csv / test.csv found")
    return {s: self._generate_examples(reader.rows(s), reader.read, lambda r: r["image_path"]) for s in splits}


class Segmunich(Sentinel2Builder):
  BANDS = bandlib.canonical_subset(segmunich.BANDS)
  DESCRIPTION = "SegMunich TUM_128 (SpectralGPT): 128x128 10-band tiles, 13-class masks (reference remap)."
  HOMEPAGE = "https://huggingface.co/datasets/Moonboy12138/SegMunich"
  LICENSE = "not stated by the authors; check the Hugging Face dataset card"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
      wget https://huggingface.co/datasets/Moonboy12138/SegMunich/resolve/main/TUM_128.zip && unzip TUM_128.zip -d <manual_dir>
    {_DOCS}"""

  def _features(self):
    return {
        "image": image_feature(128, 128, len(self.BANDS)),
        "mask": map_feature(128, 128),
        "id": tfds.features.Text(),
    }

  def _split_generators(self, dl_manager):
    reader = segmunich.SegMunich(self._manual_dir(dl_manager))
    return {s: self._generate_examples(reader.ids(s), reader.read) for s in segmunich.SPLITS}


class Oscd(Sentinel2Builder):
  DESCRIPTION = "OSCD: 24 Sentinel-2 L1C city pairs (imgs_*_rect, read as-is), binary change maps; 14 train / 10 test."
  HOMEPAGE = "https://rcdaudt.github.io/oscd/"
  LICENSE = "CC-BY-4.0"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Unzip the three OSCD archives into manual_dir ("Onera Satellite Change Detection dataset - Images",
    "... - Train Labels", "... - Test Labels"); train.txt/test.txt are in the Images folder. {_DOCS}"""

  def _features(self):
    return {"image1": image_feature(), "image2": image_feature(), "change": map_feature(), "id": tfds.features.Text()}

  def _split_generators(self, dl_manager):
    reader = oscd.OSCD(self._manual_dir(dl_manager))
    return {s: self._generate_examples(reader.cities(s), reader.read) for s in oscd.SPLITS}


BUILDERS = {
    "eurosat": EurosatMs,
    "bigearthnet": BigearthnetS2,
    "bigearthnet_v2": BigearthnetV2,
    "fmow_sentinel": FmowSentinel,
    "segmunich": Segmunich,
    "oscd": Oscd,
}
