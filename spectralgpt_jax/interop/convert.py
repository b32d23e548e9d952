r"""Convert an official SpectralGPT `.pth` checkpoint into an exported spectralgpt_jax model.

  python -m spectralgpt_jax.interop.convert --checkpoint SpectralGPT+.pth --out converted/spectralgpt_plus
  python -m spectralgpt_jax.interop.convert --checkpoint SpectralGPT.pth --arch vit_base_patch8_128 \
      --override num_classes=19 --out converted/ben19_init

  python -m spectralgpt_jax.interop.convert --checkpoint model_3con_loss_51_0.pth --arch seg_vit_base_patch8_128 \
      --out converted/segmunich
  python -m spectralgpt_jax.interop.convert --checkpoint spectralGPT+_54_28.pth --arch cd_vit_base_patch8_128 \
      --out converted/oscd

Writes DIR/params (orbax) and DIR/metadata.json (architecture, task, class names, band order, image size, expected
normalisation) and prints the load report. The file is read without torch and without executing pickled code.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import sys

from spectralgpt_jax import export
from spectralgpt_jax.data.readers.segmunich import CLASSES as SEGMUNICH_CLASSES
from spectralgpt_jax.data.transforms import REFERENCE_MINMAX_EPS
from spectralgpt_jax.interop.loader import load_reference_checkpoint
from spectralgpt_jax.interop.torch_pickle import CheckpointError
from spectralgpt_jax.models.config import ModelConfig


def _parse_override(text: str) -> tuple[str, object]:
  if "=" not in text:
    raise argparse.ArgumentTypeError(f"--override {text!r}: expected KEY=VALUE")
  key, value = text.split("=", 1)
  try:
    return key, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key, value


TASKS = {"mae": "pretrain", "vit": "classification", "seg": "segmentation", "cd": "change_detection"}


def task_metadata(cfg: ModelConfig) -> dict:
  """What a user of the converted weights must know beyond the architecture: the task, the class names (SegMunich's
  13 / OSCD's 2 when the head has that many outputs) and the reference's input preparation.
  Pretraining and classification keep export's default normalisation (per-image min-max); a classifier's class
  names are not in its checkpoint."""
  kind = cfg.kind
  meta = {"task": TASKS[kind], "class_names": None}
  if kind == "seg":
    meta["class_names"] = list(SEGMUNICH_CLASSES) if cfg.num_classes == len(SEGMUNICH_CLASSES) else None
    meta["normalization"] = {"name": "minmax_per_image", "eps": REFERENCE_MINMAX_EPS["segmunich"],
                             "note": "SegMunich script: per image and band (x - min) / (max - min + eps)"}
    meta["data"] = {"missing_bands": "band_mean", "append_missing_bands": True}
    meta["band_layout"] = ("the released SegMunich model saw B01..B07, B8A, B11, B12 followed by two copies of the "
                           "per-pixel mean of those 10 bands (12 channels)")
  elif kind == "cd":
    meta["class_names"] = ["no change", "change"] if cfg.num_classes == 2 else None
    meta["normalization"] = {"name": "minmax_per_image", "eps": REFERENCE_MINMAX_EPS["oscd"],
                             "note": "OSCD script: per 128 px patch and band (x - min) / (max - min), without eps "
                                     "(NaN on a constant band); eps added here"}
  return meta


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="official .pth file (SpectralGPT.pth, SpectralGPT+.pth, ...)")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--arch", default=None, help="model name (models.names()); inferred from the file if omitted")
  parser.add_argument("--override", action="append", default=[], type=_parse_override,
                      help="model config override KEY=VALUE, e.g. img_size=128 or pos_embed_resize=interpolate")
  parser.add_argument("--non-strict", action="store_true", help="load what fits instead of failing on mismatches")
  args = parser.parse_args(argv)
  try:
    model, report = load_reference_checkpoint(args.checkpoint, args.arch, strict=not args.non_strict,
                                              **dict(args.override))
  except (CheckpointError, KeyError, TypeError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(report.summary())
  metadata = export.make_metadata(report.arch, report.config, source=args.checkpoint,
                                  source_sha256=_sha256(args.checkpoint), **task_metadata(report.config),
                                  load_report={k: getattr(report, k) for k in
                                               ("missing", "unexpected", "mismatched", "initialised",
                                                "interpolated", "ignored")})
  out = export.save(args.out, model, metadata)
  print(f"wrote {out}/params and {out}/metadata.json")
  return 0


if __name__ == "__main__":
  sys.exit(main())
