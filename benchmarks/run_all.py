r"""Runs the benchmark suite and writes one JSON file: pretraining and fine-tuning steps per model size and batch,
the input pipeline's and dataset preparation's examples/s and the compile times, each benchmark in its own
process (clean peak RSS, its own runtime.configure()), with the machine and versions once at the top.

  python benchmarks/run_all.py --out benchmarks/results/cpu.json                  # this CPU, ~20 min on 2 cores
  python benchmarks/run_all.py --out gpu.json --suite accelerator                 # bf16, B/L/H, larger batches
  python benchmarks/run_all.py --out quick.json --suite quick                     # a smoke run, ~3 min

Every entry is the JSON line the benchmark printed (`benchmarks/pretrain_step.py`, `finetune_step.py`,
`input_pipeline.py`: step_s_median, img_per_s, tokens_per_s, mfu where the peak is known, compile_s, temp_mb,
peak_rss_mb, ...; `profile_step.py`: time per XLA op) plus the command that produced it; a benchmark that failed
is recorded with its exit status and the last line of its stderr instead of stopping the suite. Not a test:
time on a quiet machine and compare runs of the same machine side by side.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

from spectralgpt_jax import runtime   # the light top-level package and its runtime module: no JAX import

HERE = os.path.dirname(os.path.abspath(__file__))

# (benchmark script, arguments) per suite. CPU: float32 (and bfloat16, the recipes' default) at the batch 4 of
# the reference comparison, and where the MAE step's time goes;
# accelerator: bfloat16 at batches that fill one 80 GB GPU.
SUITES: dict[str, list[tuple[str, list[str]]]] = {
    "cpu": [
        ("pretrain_step.py", ["--model", "mae_vit_base_patch8_128", "--batch", "4", "--steps", "3"]),
        ("pretrain_step.py", ["--model", "mae_vit_base_patch8_128", "--batch", "8", "--steps", "3"]),
        ("pretrain_step.py", ["--model", "mae_vit_base_patch8_128", "--batch", "4", "--steps", "3",
                              "--dtype", "bfloat16"]),
        ("pretrain_step.py", ["--model", "mae_vit_large_patch8_128", "--batch", "4", "--steps", "2"]),
        ("finetune_step.py", ["--task", "eurosat", "--model", "B", "--batch", "4", "--steps", "3"]),
        ("finetune_step.py", ["--task", "eurosat", "--model", "B", "--batch", "4", "--steps", "3",
                              "--dtype", "bfloat16"]),
        ("profile_step.py", ["--task", "mae", "--batch", "4"]),
        ("finetune_step.py", ["--task", "bigearthnet", "--model", "B", "--batch", "4", "--steps", "3"]),
        ("finetune_step.py", ["--task", "segmunich", "--model", "B", "--batch", "2", "--steps", "3"]),
        ("finetune_step.py", ["--task", "oscd", "--model", "B", "--batch", "2", "--steps", "3"]),
        ("input_pipeline.py", ["--workers", "0", "2"]),
        ("prepare_throughput.py", ["--dataset", "bigearthnet", "--examples", "600",
                                   "--modes", "single,workers2,beam_direct1"]),
        ("prepare_throughput.py", ["--codecs"]),
    ],
    "accelerator": [
        *[("pretrain_step.py", ["--model", f"mae_vit_{size}_patch8_128", "--batch", str(batch), "--steps", "10",
                                "--dtype", "bfloat16"])
          for size, batch in (("base", 256), ("large", 128), ("huge", 64))],
        *[("finetune_step.py", ["--task", task, "--model", "B", "--batch", str(batch), "--steps", "10",
                                "--dtype", "bfloat16"])
          for task, batch in (("eurosat", 64), ("bigearthnet", 64), ("segmunich", 16), ("oscd", 16))],
        ("input_pipeline.py", ["--workers", "0", "4", "--batch", "64"]),
    ],
    "quick": [
        ("pretrain_step.py", ["--model", "mae_vit_base_patch8_128", "--batch", "4", "--steps", "2"]),
        ("finetune_step.py", ["--task", "eurosat", "--model", "B", "--batch", "2", "--steps", "2"]),
        ("input_pipeline.py", ["--datasets", "eurosat", "--workers", "0", "--batches", "5"]),
    ],
}


def run_one(script: str, args: list[str], timeout_s: float) -> list[dict]:
  """The JSON lines one benchmark printed (each with its command), or one entry saying why there are none."""
  command = [sys.executable, os.path.join(HERE, script), *args]
  shown = " ".join(["python", f"benchmarks/{script}", *args])
  start = time.perf_counter()
  try:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return [{"command": shown, "error": f"timed out after {timeout_s:.0f} s"}]
  rows = []
  for line in proc.stdout.splitlines():
    if line.startswith("{"):
      rows.append({"command": shown, **json.loads(line)})
  if proc.returncode or not rows:
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    rows.append({"command": shown, "error": f"exit {proc.returncode}: {tail}"})
  for row in rows:
    row["wall_s"] = round(time.perf_counter() - start, 1)
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="JSON file to write")
  parser.add_argument("--suite", default="cpu", choices=sorted(SUITES))
  parser.add_argument("--timeout_s", type=float, default=1200.0, help="per benchmark")
  args = parser.parse_args()

  results = []
  for script, script_args in SUITES[args.suite]:
    print(f"[run_all] {script} {' '.join(script_args)}", file=sys.stderr, flush=True)
    results.extend(run_one(script, script_args, args.timeout_s))
  report = {
      "suite": args.suite, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                  "cpu": runtime.cpu_summary(), "python": platform.python_version()},
      "results": results,
      "failed": sum("error" in r for r in results),
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=1)
  print(json.dumps({"out": args.out, "entries": len(results), "failed": report["failed"]}))
  if report["failed"]:
    sys.exit(1)


if __name__ == "__main__":
  main()
