"""Exported models: params-only orbax checkpoint + `metadata.json`, enough to rebuild the model with nothing else.

Written by the `.pth` converter and by the training system's final export; read by fine-tuning and inference.
`metadata.json` carries the architecture (full model config), the band names in input order, the image size and the
normalisation the weights expect, so a user never has to guess them; `MODEL_CARD.md` says the same for people
(`model_card`).
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from spectralgpt_jax import model_card, models
from spectralgpt_jax.data import bands as band_registry

FORMAT = "spectralgpt_jax.export/1"
PARAMS_DIR = "params"

# What the released pretraining checkpoints were trained on (the reference's fMoW / BigEarthNet pretraining
# datasets): per-image, per-band min-max.
PRETRAIN_NORMALIZATION = {"name": "minmax_per_image", "eps": 1e-12,
                          "note": "per image and band: (x - min) / (max - min + eps), on raw reflectance values"}


def make_metadata(arch: str, cfg: models.ModelConfig, *, normalization: dict[str, Any] | None = None,
                  bands: list[str] | None = None, source: str | None = None, **extra) -> dict[str, Any]:
  bands = list(bands or band_registry.CANONICAL[:cfg.num_frames])
  if len(bands) != cfg.num_frames:
    raise ValueError(f"{len(bands)} band names {bands} for a model with num_frames={cfg.num_frames}")
  return {"format": FORMAT, "arch": arch, "model_config": cfg.to_dict(), "bands": bands,
          "image_size": cfg.img_size, "normalization": normalization or PRETRAIN_NORMALIZATION,
          "source": source, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          **extra}


def save_params(directory: str | Path, params: dict, metadata: dict[str, Any]) -> Path:
  """Writes `directory/params` (orbax; `params` is `nnx.to_pure_dict` of the model's `nnx.Param` state, with host
  or sharded global arrays — every process calls this in multi-host runs), `directory/metadata.json` and its
  rendering for people, `directory/MODEL_CARD.md` (process 0). Overwrites an existing export."""
  directory = Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  metadata = {**metadata, "param_count": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))}
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / PARAMS_DIR, params, force=True)
    checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    (directory / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    model_card.write(directory, metadata)
  return directory


def save(directory: str | Path, model: nnx.Module, metadata: dict[str, Any]) -> Path:
  """Exports a model built in this process (see `save_params`)."""
  return save_params(directory, nnx.to_pure_dict(nnx.state(model, nnx.Param)), metadata)


def read_metadata(directory: str | Path) -> dict[str, Any]:
  path = Path(directory) / "metadata.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no metadata.json; is {directory} an exported spectralgpt_jax model?")
  metadata = json.loads(path.read_text())
  if metadata.get("format") != FORMAT:
    raise ValueError(f"{path}: format {metadata.get('format')!r}, expected {FORMAT!r}")
  return metadata


def load(directory: str | Path, **overrides) -> tuple[nnx.Module, dict[str, Any]]:
  """Rebuilds the model from `metadata.json` (with optional config overrides such as `drop_path_rate`) and restores
  its parameters. Shape-changing overrides fail with the parameter named."""
  directory = Path(directory).absolute()
  metadata = read_metadata(directory)
  cfg = models.ModelConfig(**{**metadata["model_config"], **overrides})
  model = models.build_from_config(cfg)
  state = nnx.state(model, nnx.Param)
  target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), nnx.to_pure_dict(state))
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(directory / PARAMS_DIR, target)
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(model, state)
  return model, metadata
