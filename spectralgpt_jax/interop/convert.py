r"""Convert an official SpectralGPT `.pth` checkpoint into an exported spectralgpt_jax model.

  python -m spectralgpt_jax.interop.convert --checkpoint SpectralGPT+.pth --out converted/spectralgpt_plus
  python -m spectralgpt_jax.interop.convert --checkpoint SpectralGPT.pth --arch vit_base_patch8_128 \
      --override num_classes=19 --out converted/ben19_init

Writes DIR/params (orbax) and DIR/metadata.json (architecture, band order, image size, expected normalisation) and
prints the load report. The file is read without torch and without executing pickled code.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import sys

from spectralgpt_jax import export
from spectralgpt_jax.interop.loader import load_reference_checkpoint
from spectralgpt_jax.interop.torch_pickle import CheckpointError


def _parse_override(text: str) -> tuple[str, object]:
  if "=" not in text:
    raise argparse.ArgumentTypeError(f"--override {text!r}: expected KEY=VALUE")
  key, value = text.split("=", 1)
  try:
    return key, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key, value


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
                                  source_sha256=_sha256(args.checkpoint),
                                  load_report={k: getattr(report, k) for k in
                                               ("missing", "unexpected", "mismatched", "initialised",
                                                "interpolated", "ignored")})
  out = export.save(args.out, model, metadata)
  print(f"wrote {out}/params and {out}/metadata.json")
  return 0


if __name__ == "__main__":
  sys.exit(main())
