r"""Where a train step's time goes, per XLA op: one profiled step, printed as one JSON line.

  python benchmarks/profile_step.py --task mae --batch 4                    # MAE ViT-B/8 pretraining step
  python benchmarks/profile_step.py --task eurosat --model B --batch 4 --dtype bfloat16 --top 20

The step is compiled as `pretrain_step.py` / `finetune_step.py` compile it (benchmarks/step_timing.py), run twice to
warm up, then once under `jax.profiler.trace`; the trace's events are summed per op. Fields: task, model, batch,
dtype, traced_step_s, by_kind (seconds of thread time per op kind: `ynn_fusion` are XLA:CPU's YNNPACK matmul
fusions, `*_fusion` elementwise loops, ...), by_dot (fused ops grouped by the dots they hold, "out <- lhs x rhs"
with the operands' element types: thread_s, count, gflop_per_s), unfused_dots (the plain dot instructions, grouped
the same way: count, gflop; XLA:CPU runs them asynchronously on Eigen's thread pool, so the trace times only their
launch and their cost shows in the ops that run beside them; the weight gradients that contract over the token axis
are such dots), top (the `--top` costliest ops: name, kind, thread_s, dots, gflop, gflop_per_s, which is null for a
plain dot), device, cpu, versions.
Tracing slows the step (its thread-pool events cost ~1.5x on a 2-core CPU), so compare ops within one profile, not
with untraced step times; `pretrain_step.py` and `finetune_step.py` measure those. Not a test.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import math
import os
import re
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import finetune_step  # noqa: E402
import pretrain_step  # noqa: E402
import step_timing  # noqa: E402

from spectralgpt_jax import runtime  # noqa: E402

_SKIP = ("ThunkExecutor", "ThreadpoolListener", "SlinkyThreadPool", "end:", "$", "PjitFunction")


def build(args):
  """(task, model config, optimizer config, host batch) of the step to profile, as the step benchmarks build it."""
  if args.task == "mae":
    args.mask_ratio = 0.9
    return pretrain_step.setup(args)
  return finetune_step.setup(args)


def op_durations(trace_dir: str) -> collections.Counter:
  """Thread seconds per op name, summed over every thread of the trace."""
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
  seconds = collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      for event in line.events:
        if not event.name.startswith(_SKIP):
          seconds[event.name] += event.duration_ns / 1e9
  return seconds


def kind_of(name: str) -> str:
  return re.sub(r"[.\d]+$", "", name)


def _dims(shape: str) -> list[int]:
  return [int(d) for d in re.findall(r"\[([\d,]*)\]", shape)[0].split(",") if d]


def dots_of(hlo: str) -> dict[str, list[tuple[str, str, str, int, bool]]]:
  """The dots of every fusion and of every plain dot instruction of an optimized HLO module, by instruction name:
  (out, lhs, rhs, flops, batched), shapes with their element types."""
  bodies = dict(re.findall(r"^(?:ENTRY )?%([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S | re.M))
  per_body = {name: _dots_in(body) for name, body in bodies.items()}
  fusions = dict(re.findall(r"%([\w.\-]+) = [^\n]*? fusion\([^\n]*?calls=%([\w.\-]+)", hlo))
  found = {name: [tuple(dot) for _, *dot in per_body.get(callee, [])] for name, callee in fusions.items()}
  fused = set(fusions.values())
  for body, dots in per_body.items():     # dots that are instructions of their own, outside any fusion
    if body not in fused:
      found.update({name: [tuple(dot)] for name, *dot in dots})
  return found


def _dots_in(body: str) -> list[tuple[str, str, str, str, int, bool]]:
  shapes = dict(re.findall(r"%([\w.\-]+) = (\w+\[[\d,]*\])", body))
  shapes.update(re.findall(r"([\w.\-]+): (\w+\[[\d,]*\])", body))          # the computation's parameters
  dots = []
  pattern = r"%([\w.\-]+) = (\w+\[[\d,]*\])\S* dot\(%([\w.\-]+), %([\w.\-]+)\), ([^\n]*)"
  for name, out, lhs, rhs, attrs in re.findall(pattern, body):
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attrs).group(1)
    lhs_dims = _dims(shapes.get(lhs, "?[]"))
    k = math.prod(lhs_dims[int(c)] for c in contracting.split(",") if c) if lhs_dims else 0
    dots.append((name, out, shapes.get(lhs, "?"), shapes.get(rhs, "?"), 2 * math.prod(_dims(out)) * k,
                 "lhs_batch_dims" in attrs))
  return dots


def group_dots(seconds: collections.Counter, dots: dict) -> tuple[dict, dict]:
  """Traced ops that hold dots, grouped by their dots' signature: [seconds, count, flops] per group, for the fused
  ops and, apart, for the plain (unfused) dot instructions. XLA:CPU runs a plain dot asynchronously on its Eigen
  thread pool, so its trace event times the launch only and its cost lands in the ops that run beside it."""
  fused, unfused = (collections.defaultdict(lambda: [0.0, 0, 0]) for _ in range(2))
  for name, s in seconds.items():
    if dots.get(name):
      groups = fused if "fusion" in kind_of(name) else unfused
      group = groups[" + ".join(f"{out} <- {lhs} x {rhs}" for out, lhs, rhs, *_ in dots[name])]
      group[0] += s
      group[1] += 1
      group[2] += sum(d[3] for d in dots[name])
  return dict(fused), dict(unfused)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--task", default="mae", choices=["mae", "eurosat", "bigearthnet", "segmunich", "oscd"])
  parser.add_argument("--model", default=None, help="mae: a model name (mae_vit_base_patch8_128); else B | L | H")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--mesh", default="1,-1,1", help="data,fsdp,model sizes (one may be -1)")
  parser.add_argument("--top", type=int, default=15, help="how many of the costliest ops to list")
  step_timing.add_speed_flags(parser)
  args = parser.parse_args()
  args.model = args.model or ("mae_vit_base_patch8_128" if args.task == "mae" else "B")

  task, cfg, opt, batch = build(args)
  compiled, state, batch, _, _, _ = step_timing.compile_step(task, cfg, opt, batch, mesh_text=args.mesh)
  for _ in range(2):
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as trace_dir:
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir):
      state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
    traced_s = time.perf_counter() - start
    seconds = op_durations(trace_dir)

  by_kind = collections.Counter()
  for name, s in seconds.items():
    by_kind[kind_of(name)] += s
  dots = dots_of(compiled.as_text())
  top = []
  for name, s in seconds.most_common(args.top):
    own = dots.get(name, [])
    flops = sum(d[3] for d in own)
    top.append({"name": name, "kind": kind_of(name), "thread_s": round(s, 4),
                "dots": [f"{out} <- {lhs} x {rhs}" for out, lhs, rhs, *_ in own],
                "gflop": round(flops / 1e9, 3),
                "gflop_per_s": round(flops / s / 1e9, 1) if flops and "fusion" in kind_of(name) else None})
  by_dot, unfused = group_dots(seconds, dots)
  by_dot = {sig: {"thread_s": round(t, 4), "count": n, "gflop_per_s": round(f / t / 1e9, 1)}
            for sig, (t, n, f) in sorted(by_dot.items(), key=lambda kv: -kv[1][0])[:args.top]}
  unfused = {sig: {"count": n, "gflop": round(f / 1e9, 1)}
             for sig, (_, n, f) in sorted(unfused.items(), key=lambda kv: -kv[1][2])[:args.top]}
  device = jax.devices()[0]
  print(json.dumps({"task": args.task, "model": args.model, "batch": args.batch, "dtype": args.dtype,
                    "traced_step_s": round(traced_s, 3),
                    "by_kind": {k: round(v, 4) for k, v in by_kind.most_common(args.top)}, "by_dot": by_dot,
                    "unfused_dots": unfused, "top": top,
                    "device": f"{device.platform}:{device.device_kind}", "cpu": runtime.cpu_summary(),
                    "jax": jax.__version__, "runtime": runtime.describe()}))


if __name__ == "__main__":
  runtime.configure()   # the allocator and XLA CPU flags main.py uses (SPECTRALGPT_JAX_FAST_RUNTIME=0: off)
  main()
