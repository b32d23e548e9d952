"""grain input pipelines: deterministic, seeded, per-process sharded, checkpointable, global jax.Array batches.

Public API (see docs/contracts.md):
  default_data_config(name, task="pretrain")                      -> ml_collections.ConfigDict
  pretrain_iterator(data_cfg, *, global_batch_size, sharding, seed=0, train=True, ...)
  finetune_iterator(data_cfg, *, global_batch_size, sharding, seed=0, train=True, ...)
  make_source(data_cfg, split, train=True) -> (random-access source, band names)   (demo stand-ins when demo
                                                 and no data_dir; dense datasets as SceneWindows of image_size)
  class_names(data_cfg) -> tuple[str, ...];  label_key(data_cfg) -> "label" | "labels" | "mask" | "change"
  build_iterator(source, ops, *, train, global_batch_size, sharding, seed, workers, prefetch, ...)

Train: source -> seed -> global shuffle (reshuffled each epoch) -> repeat forever -> per-element transforms (keyed
by the *global* position, so the result does not depend on the process or worker count) -> this process's slice
[process_index::process_count] -> batch (drop remainder: static shapes) -> batch transforms (mixup) ->
iter -> worker processes (mp_prefetch, explicit options; 0 = in-process) -> global jax.Array -> thread prefetch.
Eval: this process's padded share (PaddedShard) -> transforms -> batch, with `valid` marking padding rows; finite.
The returned object is a grain DatasetIterator: get_state()/set_state() and grain.checkpoint.CheckpointSave work.
"""

from __future__ import annotations

import math
import zlib

import grain
import jax
import ml_collections
import numpy as np

from spectralgpt_jax.data import bands as bandlib
from spectralgpt_jax.data import families
from spectralgpt_jax.data import sources
from spectralgpt_jax.data import transforms as T
from spectralgpt_jax.data.readers import segmunich

# bigearthnet_v2 (BigEarthNet v2.0 / reBEN) follows the bigearthnet recipe everywhere (families.py).
PRETRAIN_DATASETS = ("demo", "fmow_sentinel", "bigearthnet", "bigearthnet_v2")
FINETUNE_DATASETS = ("eurosat", "bigearthnet", "bigearthnet_v2", "segmunich", "oscd")
# Keys of a fine-tuning batch per dataset: model inputs, then the label.
FINETUNE_KEYS = families.with_aliases({
    "eurosat": ("image", "label"),
    "bigearthnet": ("image", "labels"),
    "segmunich": ("image", "mask"),
    "oscd": ("image1", "image2", "change"),
})


def is_multilabel(name: str) -> bool:
  """Whether dataset `name`'s fine-tuning labels are multi-label (a multi-hot `labels` vector: BigEarthNet)."""
  return FINETUNE_KEYS.get(name, ("", ""))[-1] == "labels"


DENSE_DATASETS = ("segmunich", "oscd")   # served as windows of whole scenes (tiles / cities)
WINDOW_KEYS = ("scene", "y", "x", "window")


def default_data_config(name: str, task: str = "pretrain") -> ml_collections.ConfigDict:
  """Defaults for dataset `name`, following the reference recipe for the task (pretrain | finetune)."""
  if task == "pretrain" and name not in PRETRAIN_DATASETS:
    raise ValueError(f"no pretraining pipeline for {name!r}; choose from {PRETRAIN_DATASETS}")
  if task == "finetune" and name not in FINETUNE_DATASETS:
    raise ValueError(f"no fine-tuning pipeline for {name!r}; choose from {FINETUNE_DATASETS}")
  if task not in ("pretrain", "finetune"):
    raise ValueError(f"unknown task {task!r}")
  cfg = ml_collections.ConfigDict()
  cfg.name = name
  cfg.data_dir = sources.default_data_dir()  # tfds data_dir; unused for demo
  cfg.demo = False  # fine-tuning on the embedded demo stand-ins (demo_tasks.py) when data_dir is also empty
  cfg.image_size = 96 if name == "fmow_sentinel" else 128  # SpectralGPT stage 1 (fMoW) at 96, stage 2 at 128
  cfg.normalization = "minmax_per_image"  # the reference's pretraining normalisation
  cfg.stats = ""  # statistics table (stats/<name>.json) for zscore / satmae_2sigma
  cfg.crop_scale = (0.2, 1.0)
  cfg.hflip = True
  cfg.vflip = False
  cfg.rot90 = False
  cfg.workers = 0  # grain worker processes; 0 = in-process (tests, small machines)
  cfg.prefetch = 2  # batches buffered per worker / read thread and after device transfer
  cfg.read_threads = 2
  cfg.train_split = "train"
  cfg.eval_split = "val" if name != "segmunich" and name != "oscd" else "test"
  cfg.missing_bands = "band_mean"  # SegMunich: reference rule (see bands.fill_missing)
  cfg.append_missing_bands = False  # True = reference layout (fillers after the 10 bands)
  cfg.window_overlap = 0.5  # dense tasks: overlap of the training windows cut from the scenes
  cfg.eval_window_overlap = 0.5  # dense tasks: overlap of the evaluation windows (blended into whole scenes)
  cfg.reference_windows = False  # dense tasks: the reference OSCD's stride-63 windows instead (both splits)
  cfg.mixup = 0.0
  cfg.cutmix = 0.0
  cfg.label_smoothing = 0.0
  if task == "finetune":
    recipe = families.family(name)
    if recipe == "eurosat":  # reference: Normalize(SSL4EO L2A stats) + RRC/flip; mixup 0.8 / cutmix 1.0
      cfg.normalization, cfg.stats = "zscore", "ssl4eo_s12_l2a"
      cfg.mixup, cfg.cutmix, cfg.label_smoothing = 0.8, 1.0, 0.1
    elif recipe == "bigearthnet":  # reference: SentinelNormalize(fMoW stats without B10), 10 % of train
      cfg.normalization, cfg.stats = "satmae_2sigma", "fmow_sentinel"
      cfg.train_split = "train_10pct"
    elif recipe == "segmunich":
      cfg.hflip, cfg.vflip, cfg.rot90 = True, True, True
    elif recipe == "oscd":
      cfg.rot90 = True
  return cfg


def uses_demo_data(cfg) -> bool:
  """A fine-tuning config reads the embedded demo stand-ins when `demo` is set and no `data_dir` is given, so
  `--config.data.data_dir=DIR` switches a demo config onto the real prepared dataset."""
  return bool(cfg.get("demo", False)) and not cfg.get("data_dir")


def label_key(cfg) -> str:
  """The label entry of the configured dataset's batches."""
  if cfg["name"] not in FINETUNE_KEYS:
    raise ValueError(f"dataset {cfg['name']!r} has no fine-tuning labels; choose from {FINETUNE_DATASETS}")
  return FINETUNE_KEYS[cfg["name"]][-1]


def make_source(cfg, split: str, train: bool = True):
  """(random-access source, band names of its images) for a dataset config and split. Dense datasets come as
  `SceneWindows` of side `image_size` (overlap `window_overlap` for training, `eval_window_overlap` otherwise)."""
  if cfg["name"] == "demo":
    from spectralgpt_jax.data import demo

    return demo.DemoPatches(split, cfg["image_size"]), bandlib.CANONICAL
  if uses_demo_data(cfg):
    from spectralgpt_jax.data import demo_tasks

    source = demo_tasks.demo_source(cfg["name"], split)
    bands = source.bands
  else:
    source, bands = sources.tfds_source(cfg["name"], split, cfg.get("data_dir"))
  if cfg["name"] in DENSE_DATASETS:
    overlap = cfg.get("window_overlap", 0.5) if train else cfg.get("eval_window_overlap", 0.5)
    tile = (segmunich.SIZE, segmunich.SIZE) if cfg["name"] == "segmunich" else None   # every tile: no read needed
    source = sources.SceneWindows(source, cfg["image_size"], overlap, scene_shape=tile,
                                  reference=cfg.get("reference_windows", False))
  return source, bands


def class_names(cfg) -> tuple[str, ...]:
  """Class names of the configured dataset (demo stand-in or prepared dataset; no data is read)."""
  name = cfg["name"]
  if uses_demo_data(cfg):
    from spectralgpt_jax.data import demo_tasks

    return demo_tasks.class_names(name)
  if name == "oscd":
    return ("no change", "change")
  from spectralgpt_jax.data.readers import bigearthnet, eurosat, fmow, segmunich

  table = families.with_aliases({"eurosat": eurosat.CLASSES, "bigearthnet": bigearthnet.LABELS_19,
                                 "segmunich": segmunich.CLASSES, "fmow_sentinel": fmow.CATEGORIES})
  if name not in table:
    raise ValueError(f"dataset {name!r} has no class names; known: {sorted(table) + ['oscd']}")
  return tuple(table[name])


def _geometry(cfg, train: bool, fixed_size: bool) -> list:
  size = cfg["image_size"]
  if train:
    ops = [] if fixed_size else [T.RandomResizedCrop(size, tuple(cfg["crop_scale"]))]
    flips = T.RandomFlipRot(0.5 if cfg["hflip"] else 0.0, 0.5 if cfg.get("vflip") else 0.0, cfg.get("rot90", False))
    return ops + [flips]
  return [] if fixed_size else [T.ResizeCenterCrop(size)]


def element_ops(cfg, train: bool, bands, keys, fixed_size: bool = False) -> list:
  """Per-element transforms: bands to the canonical 12, normalisation, geometry, key selection."""
  ops = []
  if tuple(bands) != bandlib.CANONICAL:
    ops.append(
        T.FillMissingBands(
            bands, bandlib.CANONICAL, cfg.get("missing_bands", "error"), cfg.get("append_missing_bands", False)
        )
    )
  ops.append(T.normalizer(cfg["normalization"], cfg["name"], cfg.get("stats") or None))
  return ops + _geometry(cfg, train, fixed_size) + [T.SelectKeys(keys)]


def pretrain_iterator(
    data_cfg,
    *,
    global_batch_size: int,
    sharding=None,
    seed: int = 0,
    train: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    start_batch: int = 0,
):
  """Pretraining batches {"image": float32 [B, S, S, 12]} (+ "valid" bool [B] when train=False).

  demo patches are already S x S; eval on them is just normalisation. fMoW/BigEarthNet eval uses the
  reference's Resize(S/0.875) + CenterCrop(S).
  """
  cfg = data_cfg
  split = cfg["train_split"] if train else cfg["eval_split"]
  source, bands = make_source(cfg, split)
  fixed = cfg["name"] == "demo" and not train
  ops = element_ops(cfg, train, bands, ("image",) if train else ("image", "valid"), fixed_size=fixed)
  return build_iterator(
      source,
      ops,
      train=train,
      global_batch_size=global_batch_size,
      sharding=sharding,
      seed=seed,
      workers=cfg["workers"],
      prefetch=cfg["prefetch"],
      read_threads=cfg.get("read_threads", 2),
      process_index=process_index,
      process_count=process_count,
      start_batch=start_batch,
  )


def finetune_iterator(
    data_cfg,
    *,
    global_batch_size: int,
    sharding=None,
    seed: int = 0,
    train: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    start_batch: int = 0,
):
  """Fine-tuning batches (FINETUNE_KEYS): eurosat {"image", "label"} (or "targets" [B, C] float when mixup /
  cutmix / label smoothing is on); bigearthnet {"image", "labels" uint8 [B, 19]}; segmunich {"image", "mask"};
  oscd {"image1", "image2", "change"}; dense datasets are windows of `image_size` cut from whole scenes.
  Evaluation batches add "valid", the example ids "id" (strings, kept on the host) and, for dense datasets, the
  window position (WINDOW_KEYS)."""
  cfg = data_cfg
  name = cfg["name"]
  split = cfg["train_split"] if train else cfg["eval_split"]
  source, bands = make_source(cfg, split, train=train)
  keys = FINETUNE_KEYS[name]
  if not train:
    keys = keys + ("valid", "id") + (WINDOW_KEYS if name in DENSE_DATASETS else ())
  fixed = name in DENSE_DATASETS  # windows of the model's size: flips / rot90 only (the reference)
  ops = element_ops(cfg, train, bands, keys, fixed_size=fixed)
  return build_iterator(
      source,
      ops,
      batch_ops=finetune_batch_ops(cfg, train),
      train=train,
      global_batch_size=global_batch_size,
      sharding=sharding,
      seed=seed,
      workers=cfg["workers"],
      prefetch=cfg["prefetch"],
      read_threads=cfg.get("read_threads", 2),
      process_index=process_index,
      process_count=process_count,
      start_batch=start_batch,
  )


class ToGlobalArrays(grain.transforms.Map):
  """Process-local numpy batch -> global jax.Array laid out with `sharding` (runs in the main process only)."""

  def __init__(self, sharding):
    self.sharding = sharding

  def map(self, batch):
    batch = {k: np.asarray(v) for k, v in batch.items()}  # SharedMemoryArray from workers -> plain numpy
    if self.sharding is None:
      return batch
    # Strings (example ids) cannot be device arrays: they stay this process's numpy rows.
    return {k: v if v.dtype.kind in "USO" else jax.make_array_from_process_local_data(self.sharding, v)
            for k, v in batch.items()}


def finetune_batch_ops(cfg, train: bool) -> list:
  """Whole-batch transforms of a fine-tuning pipeline: mixup / cutmix / label smoothing of the classification
  datasets in training, when the config asks for any (soft "targets" then replace the labels)."""
  mixing = cfg.get("mixup", 0) > 0 or cfg.get("cutmix", 0) > 0 or cfg.get("label_smoothing", 0) > 0
  if not (train and mixing and families.family(cfg["name"]) in ("eurosat", "bigearthnet")):
    return []
  return [T.MixupCutmix(len(class_names(cfg)), cfg.get("mixup", 0), cfg.get("cutmix", 0),
                        label_smoothing=cfg.get("label_smoothing", 0))]


def _apply(ds, op, seed: int | None = None):
  if isinstance(op, grain.transforms.RandomMap):
    return ds.random_map(op, seed=seed)
  return ds.map(op)


def build_iterator(
    source,
    ops,
    *,
    train: bool,
    global_batch_size: int,
    sharding=None,
    seed: int = 0,
    workers: int = 0,
    prefetch: int = 2,
    read_threads: int = 2,
    batch_ops=(),
    process_index: int | None = None,
    process_count: int | None = None,
    start_batch: int = 0,
):
  """The grain pipeline around `source` (see module docstring). Returns a checkpointable DatasetIterator.

  `start_batch` (train only) starts at global batch `start_batch` of the stream. Global batch i holds stream
  elements i*B .. (i+1)*B - 1 whatever the process or worker count, so a run resumed on another host or worker
  layout (where grain's saved iterator state does not apply) continues on exactly the examples it would have seen.
  """
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if global_batch_size % pc:
    raise ValueError(f"global batch {global_batch_size} is not divisible by the {pc} processes")
  local_batch = global_batch_size // pc
  if train:
    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
    for op in ops:
      ds = _apply(ds, op)
    ds = ds[pi::pc].batch(local_batch, drop_remainder=True)
    if start_batch:
      ds = ds[start_batch:]
    # Batch-level randomness (mixup) must differ between processes: fold the process index into its seed.
    batch_seed = zlib.crc32(f"{seed}/{pi}".encode()) % 2**31
    for op in batch_ops:
      ds = _apply(ds, op, seed=batch_seed)
  else:
    if start_batch:
      raise ValueError("start_batch applies to training iterators only")
    ds = grain.MapDataset.source(sources.PaddedShard(source, local_batch, pi, pc)).seed(seed)
    for op in ops:
      ds = _apply(ds, op)
    ds = ds.batch(local_batch, drop_remainder=True)  # PaddedShard length is a multiple of the batch
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, read_threads), prefetch_buffer_size=max(1, prefetch)))
  if workers > 0:  # never rely on mp_prefetch's default of 10 workers (grain's mp_prefetch docstring)
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=max(1, prefetch)))
  it = it.map(ToGlobalArrays(sharding))
  if prefetch > 0:
    it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=prefetch)
  return iter(it)


def num_eval_batches(num_examples: int, global_batch_size: int, process_count: int = 1) -> int:
  """Batches an eval iterator yields for `num_examples` (the same on every process)."""
  per_process = math.ceil(num_examples / process_count)
  return max(1, math.ceil(per_process / (global_batch_size // process_count)))
