"""The export a training run leaves in DIR/export: params, `metadata.json` (architecture, bands, normalisation, the
recipe, what was frozen, the final evaluation) and `MODEL_CARD.md`, written at the end of a run (and again when a
finished command is rerun, so that a later evaluation is recorded)."""
from __future__ import annotations

import json
import logging
import os

from flax import nnx

from spectralgpt_jax import export
from spectralgpt_jax.data import bands as band_registry
from spectralgpt_jax.train import evaluation
from spectralgpt_jax.train import state as state_lib


def bands_of(config) -> tuple[str, ...]:
  """The bands a run's data have, in input order."""
  return tuple(config.data.get("bands", None) or band_registry.CANONICAL)


def export_run(r, state, step: int) -> None:
  """workdir/export: params, metadata.json (with the recipe and the final evaluation) and MODEL_CARD.md."""
  config = r.config
  if not config.export:
    return
  training = {"init_from": config.init_from or None, "steps": r.plan.total_steps, "batch_size": config.batch_size,
              "optimizer": _optimizer_line(config.optimizer, r.plan.peak_lr), "seed": config.seed}
  if r.plan.freeze:
    frozen = state_lib.frozen_count(state, r.plan.freeze)
    training["frozen"] = (f"{','.join(r.plan.freeze)} ({frozen:,} of {state_lib.param_count(state):,} parameters "
                          f"kept as initialised)")
  evaluated = _final_evaluation(r.workdir, step)
  metadata = export.make_metadata(config.model.name, r.plan.model, bands=list(bands_of(config)), source=r.workdir,
                                  step=step, data=json.loads(config.data.to_json_best_effort()), training=training,
                                  evaluation=evaluated, **r.task.export_metadata())
  export.save_params(os.path.join(r.workdir, "export"), nnx.to_pure_dict(state_lib.model_params(state)), metadata)
  logging.info("export: params, metadata.json and MODEL_CARD.md written to %s", os.path.join(r.workdir, "export"))


def _final_evaluation(workdir: str, step: int) -> dict | None:
  """The run's evaluation at `step` (DIR/eval/metrics.json, written at the last step; also found when a rerun of a
  finished command re-exports), as the export records it."""
  path = os.path.join(workdir, "eval", "metrics.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    result = json.load(f)
  if result.get("step") != step:
    return None
  return {"split": result.get("split"), "step": step, "num_examples": result.get("num_examples"),
          "metrics": {k: v for k, v in evaluation.scalars(result).items() if k not in ("step", "num_examples")}}


def _optimizer_line(opt, peak_lr: float) -> str:
  layer_decay = f", layer decay {opt.layer_decay:g}" if opt.layer_decay != 1.0 else ""
  return f"AdamW, peak lr {peak_lr:.3g} ({opt.schedule}), weight decay {opt.weight_decay:g}{layer_decay}"
