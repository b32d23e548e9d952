"""Helpers for the fine-tuning tests: the real `configs/finetune_*.py:demo` configs shrunk to tiny models and a few
steps, on the real demo stand-ins of the data layer (real Sentinel-2 pixels, derived labels)."""
from __future__ import annotations

import importlib.util
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # tests/: shared helpers
from config_overrides import set_dotted  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = {"classification": "finetune_eurosat", "multilabel": "finetune_bigearthnet",
           "segmentation": "finetune_segmunich", "change_detection": "finetune_oscd"}


def config_module(name: str):
  path = os.path.join(ROOT, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny(kind: str, arg: str = "demo", **overrides) -> ml_collections.ConfigDict:
  """configs/<CONFIGS[kind]>.py:<arg> with a 2-block 32-wide encoder at 32 px and a 6-step schedule."""
  c = config_module(CONFIGS[kind]).get_config(arg)
  dense = kind in ("segmentation", "change_detection")
  c.model.update(dict(img_size=32, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0))
  if dense:
    c.model.update(dict(neck_channels=(16, 16, 32, 64), fpn_channels=16))
    c.data.eval_window_overlap = 0.0
  c.data.update(dict(image_size=32, prefetch=1, read_threads=1))
  c.update(dict(batch_size=16, eval_batch_size=32, total_steps=6, total_epochs=0.0, warmup_steps=1,
                warmup_epochs=0.0, log_every=1, checkpoint_every=3, keep_checkpoints=2, eval_every=6,
                progress_bar=False, tensorboard=False, init_from="", compute_dtype="float32"))
  c.optimizer.update(dict(lr=3e-3, schedule="cosine", accum_steps=1))
  return set_dotted(c, overrides)


def mae_export(directory, seed: int = 3):
  """A tiny 32 px MAE saved as an export in `directory` (a pretraining checkpoint to fine-tune from); returns it."""
  from spectralgpt_jax import export, models
  mae = models.build("mae_vit_tiny", img_size=32, seed=seed)
  export.save(directory, mae, export.make_metadata("mae_vit_tiny", mae.cfg))
  return mae
