r"""Accuracy of a predicted class map (or change map) against a reference raster.

  python -m spectralgpt_jax.assess --prediction out/landcover.tif --reference labels.tif --output out/assessment
  python -m spectralgpt_jax.assess --prediction out/landcover.tif --reference corine.tif \
      --class_map "111=bare,112=bare,311=dense vegetation,512=water" --ignore 0 --output out/assessment
  python -m spectralgpt_jax.assess --prediction change.tif --reference oscd_cm.tif --class_map 1=0,2=1 \
      --output out/change_assessment

The prediction fixes the grid; the reference may be in another CRS or resolution (read by nearest neighbour).
Every pixel valid in both (not nodata, not --ignore) is counted once. Reference codes are class indices of the
prediction, or mapped with --class_map CODE=CLASS (a class index or name); an unmapped code is an error naming
it. Writes OUTPUT/metrics.json (overall accuracy, kappa, mIoU, mean F1, per-class IoU / F1 / precision = user's
accuracy / recall = producer's accuracy, the confusion matrix; change metrics for a change map),
OUTPUT/per_class.json and OUTPUT/confusion_matrix.png, and prints the table.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from spectralgpt_jax.inference import cli


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--prediction", required=True, help="class map or change map (predict's COG, or any class raster)")
  p.add_argument("--reference", required=True, help="reference raster of class codes (any CRS and resolution)")
  p.add_argument("--output", required=True, help="output directory")
  p.add_argument("--reference_band", type=int, default=1, help="band of --reference holding the codes (default 1)")
  p.add_argument("--class_map", default=None, help="reference code -> class: CODE=CLASS,... (CLASS an index or name "
                 "of the prediction's classes); default: codes are class indices")
  p.add_argument("--ignore", default="", help="reference codes left out (e.g. 0 for unlabelled), comma-separated")
  p.add_argument("--class_names", default=None, help="class names of a --prediction without class_names tags, "
                 "comma-separated in index order")
  p.add_argument("--area_weighted", action="store_true", help="the reference is a sample stratified by map class "
                 "(points or plots, nodata elsewhere): also estimate area-weighted accuracies and class areas with "
                 "95%% confidence intervals (Olofsson et al. 2014)")
  return p.parse_args(argv)


def _codes(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise cli.UsageError(f"--ignore {text!r}: must be integer codes, comma-separated") from None


def run(args) -> list[str]:
  from spectralgpt_jax.inference import assessment
  from spectralgpt_jax.tasks import reporting
  ignore = _codes(args.ignore)
  names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
  if os.path.exists(args.output) and not os.path.isdir(args.output):
    raise cli.UsageError(f"--output {args.output}: exists and is not a directory")
  prediction = assessment.open_class_map(args.prediction, names)
  try:
    try:
      class_map = assessment.parse_class_map(args.class_map, prediction.class_names)
    except ValueError as e:
      raise cli.UsageError(str(e)) from None
    cm, map_counts = assessment.tally(prediction, args.reference, band=args.reference_band, class_map=class_map,
                                      ignore=ignore, count_map=args.area_weighted)
    weighted = None
    if args.area_weighted:
      weighted = assessment.area_weighted(cm, map_counts, prediction.class_names, assessment.pixel_km2(prediction))
  finally:
    prediction.close()
  result = assessment.scores(cm, prediction.task)
  if weighted:
    result["area_weighted"] = weighted
    area = "area_km2" if "area_km2" in weighted else "area_pixels"
    table, _ = reporting.per_class_table(prediction.class_names, {
        "users_accuracy": weighted["users_accuracy"], "+-": weighted["users_accuracy_ci95"],
        "producers_accuracy": weighted["producers_accuracy"], "+- ": weighted["producers_accuracy_ci95"],
        area: weighted[area], "+-  ": weighted[f"{area}_ci95"], "samples": weighted["samples_per_map_class"]})
    logging.info("area-weighted (stratified sample; 95 %% confidence half-widths):\n%s", table)
  columns = {"iou": result["iou"], "f1": result["f1"], "users_accuracy": result["precision"],
             "producers_accuracy": result["recall"], "pixels": result["pixels_per_class"]}
  table, rows = reporting.per_class_table(prediction.class_names, columns)
  logging.info("accuracy of %s against %s:\n%s", args.prediction, args.reference, table)
  summary = {"prediction": os.path.abspath(args.prediction), "reference": os.path.abspath(args.reference),
             "reference_band": args.reference_band, "class_names": prediction.class_names,
             "class_map": {str(k): v for k, v in class_map.items()} or None, "ignore": list(ignore),
             **result, "confusion_matrix": cm.tolist(), "confusion_rows": "reference", "confusion_columns":
             "prediction"}
  try:
    os.makedirs(args.output, exist_ok=True)
  except OSError as e:
    raise cli.UsageError(f"--output {args.output}: cannot create it ({e.strerror})") from None
  title = f"{os.path.basename(args.prediction)} vs {os.path.basename(args.reference)}"
  written = [reporting.write_json(os.path.join(args.output, "metrics.json"), summary),
             reporting.write_json(os.path.join(args.output, "per_class.json"), rows),
             reporting.confusion_png(os.path.join(args.output, "confusion_matrix.png"), cm, prediction.class_names,
                                     title=title)]
  change = result.get("change")
  print(f"overall accuracy {result['oa']:.4f}, kappa {result['kappa']:.4f}, mIoU {result['miou']:.4f} over "
        f"{result['num_pixels']:,} pixels" + (f"; change F1 {change['f1']:.4f} (precision {change['precision']:.4f}, "
                                             f"recall {change['recall']:.4f})" if change else "")
        + (f"; area-weighted overall accuracy {weighted['oa']:.4f} +- {weighted['oa_ci95']:.4f}" if weighted else ""))
  return written


def main(argv: list[str] | None = None) -> int:
  return cli.main(run, parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
