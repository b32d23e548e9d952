r"""Memory plan of the real sharded train step on a TPU slice or a GPU host, compiled ahead of time on this machine
(no accelerator needed); prints one JSON line.

  pip install -e ".[tpu]"      # libtpu: the TPU compiler; it runs on a CPU host
  python benchmarks/memory_plan.py --model H --topology v5e-64                  # the recommended plan (PLANS)
  python benchmarks/memory_plan.py --model mae_vit_large_patch8_128 --topology v4-32 --batch 4096 \
      --mesh 1,16,1 --remat full --accum_steps 4
  python benchmarks/memory_plan.py --model B --topology 8xH100                  # 8 simulated CPU devices
  python benchmarks/memory_plan.py --task eurosat --model L --topology v5e-16 --batch 512

TPU topologies (`v4-N`, `v5e-N`, `v5p-N`, `v6e-N`; N counts TensorCores as Cloud TPU names do, so v4-32 and
v5p-128 are 16 and 64 megacore chips) are compiled by libtpu for compile-only devices of that topology
(`jax.experimental.topologies.get_topology_desc`, as MaxText's train_compile.py does): the same compiler as on the
slice, so its buffer assignment is the one the slice would run. GPU hosts (`8xH100`, `8xA100`, `8xH200`) and
`cpu-N` are compiled by XLA:CPU for N simulated host devices (the script sets
XLA_FLAGS=--xla_force_host_platform_device_count=N before importing JAX): the CPU compiler's buffer assignment only
approximates the GPU's, and attention runs as `xla` there (cuDNN's fused kernel, what `auto` picks on the GPU, does
not compile for the CPU and would need less memory), so GPU figures are an estimate, on the high side.

The step is `spectralgpt_jax.train.steps.train_step` with the task plug-in, the recipe's optimizer (pretraining:
configs/pretrain.py:bigearthnet, AdamW; fine-tuning: benchmarks/finetune_step.py's recipe), params and optimizer
state in float32 with their training shardings (`state.abstract_sharded`: nothing is allocated), the batch
sharded over ("data", "fsdp"), the state donated: exactly what `main.py` compiles. Options that are not given come
from PLANS (the recommended plan per model size and topology, quoted by docs/scaling.md), else pure FSDP, the
recipe's global batch, no remat, no accumulation.

Fields: peak_bytes_per_device = argument + output - alias + temp bytes of `compiled.memory_analysis()` (state and
batch in, new state and metrics out, the donated state counted once, the step's temporaries; the program's own
code and the runtime's reservations are not in it; for a program the TPU compiler refuses, the temporaries its
error message says it needed), hbm_bytes_per_device (the device's nominal HBM), fits (peak + the program's code,
memory_bytes.generated_code, which a TPU keeps in HBM too, <= HBM, and the TPU compiler accepted the program),
flops_per_device (analytic, models/flops.py, x global batch / devices), xla_flops_per_device (XLA's cost analysis;
null with accumulation, as XLA counts a loop body at most once; above the unconstrained figure when the TPU
compiler rematerialises to fit, docs/scaling.md), compile_s (lower + compile on this host), plan ("recommended"
when the options are PLANS'), the options chosen and the versions. Errors (unknown topology or model, impossible
mesh or batch, libtpu missing) are one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import sys
import time

GIB = 2 ** 30
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"B": "base", "L": "large", "H": "huge"}

# Recommended pretraining plans at the paper's global batch 4096, 128 px, bfloat16: (model size, topology) ->
# (data, fsdp, model) mesh, micro-batches per update, remat policy. Chosen as the fewest micro-batches that compile
# within the TPU compiler's HBM limit without its own rematerialisation (or, on GPUs, within JAX's default 75 %
# preallocation), no remat: docs/scaling.md has the measured figures, the alternatives tried and the commands.
_PLAN_ROWS = {   # topology: {size: accum_steps}
    "v4-32": {"B": 4, "L": 4, "H": 4},
    "v5e-64": {"B": 1, "L": 2, "H": 2},
    "v5e-256": {"B": 1, "L": 1, "H": 1},
    "v5p-128": {"B": 1, "L": 1, "H": 1},
    "8xH100": {"B": 8, "L": 16, "H": 16},
}
_DEVICES = {"v4-32": 16, "v5e-64": 64, "v5e-256": 256, "v5p-128": 64, "8xH100": 8}
PLANS: dict[tuple[str, str], dict] = {
    (size, topology): dict(mesh=(1, _DEVICES[topology], 1), batch=4096, accum_steps=accum, remat="none",
                           scan_blocks=False)
    for topology, row in _PLAN_ROWS.items() for size, accum in row.items()}

# TPU generations: the libtpu topology prefix, TensorCores per chip in the Cloud TPU name (megacore chips are one
# JAX device), nominal HBM per chip, torus dimensions.
TPU_GENERATIONS = {
    "v4": dict(prefix="v4", cores=2, hbm_gib=32, dims=3, chip_config="megacore"),
    "v5e": dict(prefix="v5e", cores=1, hbm_gib=16, dims=2, chip_config="default"),
    "v5p": dict(prefix="v5", cores=2, hbm_gib=95, dims=3, chip_config="megacore"),
    "v6e": dict(prefix="v6e", cores=1, hbm_gib=32, dims=2, chip_config="default"),
}
# Chip grids of the slice shapes Cloud TPU offers (the same strings as MaxText's accelerator_to_spec_map).
GRIDS_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
GRIDS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
            512: "8x8x8"}
GPUS_GIB = {"H100": 80, "A100": 80, "H200": 141}     # SXM parts' nominal HBM


class PlanError(ValueError):
  """A bad request (unknown topology or model, impossible mesh / batch, no libtpu): one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Target:
  name: str                  # as asked: "v5e-64", "8xH100", "cpu-8"
  platform: str              # what the plan is for: "tpu" | "gpu" | "cpu"
  num_devices: int
  hbm_bytes: int             # per device
  device_kind: str
  topology: str = ""         # libtpu topology ("v5e:8x8")
  chip_config: str = "default"
  wrap: tuple[bool, bool, bool] = (False, False, False)


def resolve_target(name: str) -> Target:
  """`v5e-64` | `v4-32` | `v5p-128` | `v6e-16` | `8xH100` | `8xA100` | `8xH200` | `cpu-8` -> Target."""
  tpu = re.fullmatch(r"(v4|v5e|v5p|v6e)-(\d+)", name)
  if tpu:
    gen = TPU_GENERATIONS[tpu.group(1)]
    cores = int(tpu.group(2))
    grids = GRIDS_3D if gen["dims"] == 3 else GRIDS_2D
    chips = cores // gen["cores"]
    if cores % gen["cores"] or chips not in grids:
      sizes = ", ".join(f"{tpu.group(1)}-{c * gen['cores']}" for c in grids)
      raise PlanError(f"--topology={name}: not a slice shape this script knows; known: {sizes}")
    # Wrap-around links as MaxText sets them: full 3D cubes (>= 4x4x4) and the long 2D sides of 16-chip rows.
    wrap = ((True,) * 3 if chips >= 64 else (False,) * 3) if gen["dims"] == 3 else \
        {128: (False, True, False), 256: (True, True, False)}.get(chips, (False,) * 3)
    return Target(name, "tpu", chips, gen["hbm_gib"] * GIB, f"TPU {tpu.group(1)}",
                  f"{gen['prefix']}:{grids[chips]}", gen["chip_config"], wrap)
  gpu = re.fullmatch(r"(\d+)x(H100|A100|H200)", name, flags=re.IGNORECASE)
  if gpu:
    kind = gpu.group(2).upper()
    return Target(name, "gpu", int(gpu.group(1)), GPUS_GIB[kind] * GIB, f"NVIDIA {kind} (simulated by XLA:CPU)")
  cpu = re.fullmatch(r"cpu-(\d+)", name)
  if cpu:   # simulated host devices share the host's RAM
    count = int(cpu.group(1))
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Target(name, "cpu", count, ram // count, "cpu")
  raise PlanError(f"--topology={name}: unknown; use a TPU slice (v4-32, v5e-64, v5e-256, v5p-128, v6e-16, ...), "
                  "a GPU host (8xH100, 8xA100, 8xH200) or cpu-N")


def host_device_flags(target: Target) -> None:
  """Before JAX is imported: enough simulated host devices for a GPU / CPU target (the CPU compiler stands in)."""
  if target.platform == "tpu":
    return
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={target.num_devices}".strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


def model_name(task: str, model: str) -> tuple[str, str | None]:
  """--model as a variant name or B / L / H -> (variant name for pretraining or "", size letter or None)."""
  size = model.upper() if model.upper() in SIZES else None
  if task == "pretrain":
    if size:
      return f"mae_vit_{SIZES[size]}_patch8_128", size
    named = [s for s, long in SIZES.items() if model == f"mae_vit_{long}_patch8_128"]   # the plans' models
    return model, (named[0] if named else None)
  if not size:
    raise PlanError(f"--model={model}: fine-tuning tasks take a size B | L | H (their recipe names the model)")
  return "", size


def plan_for(size: str | None, topology: str) -> dict:
  return dict(PLANS.get((size or "", topology), {}))


def _recipe(task: str, model: str, dtype: str):
  """The training config of the task: configs/pretrain.py:bigearthnet (128 px, mask 0.9, batch 4096, AdamW) or
  the fine-tuning recipe of benchmarks/finetune_step.py."""
  for folder in (ROOT, os.path.join(ROOT, "benchmarks")):    # configs/ and finetune_step.py
    if folder not in sys.path:
      sys.path.insert(0, folder)
  name, size = model_name(task, model)
  if task == "pretrain":
    from configs import common, pretrain
    from spectralgpt_jax import models
    config = pretrain.get_config(f"bigearthnet,{size or 'B'}")
    if name not in models.VARIANTS:
      raise PlanError(f"--model={model}: unknown; use B | L | H or a variant name ({', '.join(models.names())})")
    config.model = common.model_section(name, mask_ratio=config.model.mask_ratio)
  else:
    import finetune_step
    config = finetune_step.recipe(task, size, dtype)
  config.compute_dtype = dtype
  return config, size


def _abstract_batch(task_obj, model_cfg, batch: int) -> dict:
  """ShapeDtypeStructs of one global batch of what the pipeline feeds the task (no host arrays)."""
  import jax
  import numpy as np
  if task_obj.name == "pretrain":
    shape = (batch, model_cfg.img_size, model_cfg.img_size, model_cfg.num_frames)
    return {"image": jax.ShapeDtypeStruct(shape, np.float32)}
  import finetune_step
  one = finetune_step.example_batch(task_obj, model_cfg, 1)
  return {k: jax.ShapeDtypeStruct((batch, *v.shape[1:]), v.dtype) for k, v in one.items()}


def _devices(target: Target) -> list:
  import jax
  if target.platform != "tpu":
    devices = jax.devices("cpu")
    if len(devices) < target.num_devices:
      raise PlanError(f"--topology={target.name} needs {target.num_devices} host devices, this process has "
                      f"{len(devices)}: set XLA_FLAGS=--xla_force_host_platform_device_count={target.num_devices} "
                      "before JAX is imported (the script does when run directly)")
    return devices[:target.num_devices]
  import importlib.util
  if importlib.util.find_spec("libtpu") is None:
    raise PlanError(f"--topology={target.name}: compiling for TPUs needs libtpu: pip install -e \".[tpu]\"")
  from jax.experimental import topologies
  try:
    topology = topologies.get_topology_desc(topology_name=target.topology, platform="tpu",
                                            chip_config_name=target.chip_config, chips_per_host_bounds=(2, 2, 1),
                                            num_slices=1, wrap=target.wrap)
  except Exception as e:   # libtpu's errors are long C++ traces: keep the first line
    raise PlanError(f"--topology={target.name}: libtpu could not describe {target.topology}: "
                    f"{str(e).splitlines()[0]}") from None
  return list(topology.devices)


def _versions() -> dict:
  import importlib.metadata
  import platform
  out = {"python": platform.python_version()}
  for package in ("jax", "jaxlib", "flax", "libtpu"):
    try:
      out[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


# The TPU compiler's two forms of "does not fit": "... Used 20.5G of 15.75G hbm ..." and "the total memory required
# for HLO temporaries (819.63G) exceeds available HBM (15.75G)".
_OOM = (re.compile(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm"),
        re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)"))
_SCALE = {"K": 2 ** 10, "M": 2 ** 20, "G": GIB, "T": 2 ** 40}


def _oom_bytes(message: str) -> tuple[int, int] | None:
  """(needed, limit) bytes from the TPU compiler's out-of-memory error, else None."""
  for pattern in _OOM:
    match = pattern.search(message)
    if match:
      return (int(float(match.group(1)) * _SCALE[match.group(2)]), int(float(match.group(3)) * _SCALE[match.group(4)]))
  return None


def plan(model: str, topology: str, *, batch: int | None = None, mesh: str | None = None, remat: str | None = None,
         accum_steps: int | None = None, scan_blocks: bool | None = None, task: str = "pretrain",
         dtype: str = "bfloat16", attention_impl: str | None = None) -> dict:
  """Compile the train step for `topology` and return the JSON fields (see the module docstring)."""
  target = resolve_target(topology)
  config, size = _recipe(task, model, dtype)
  chosen = plan_for(size, topology) if task == "pretrain" else {}
  # JAX is imported here, not at the top: run as a script, main() first sets the host device count for GPU / CPU
  # targets, which XLA reads once, when JAX starts.
  import jax

  from spectralgpt_jax import models, sharding, tasks
  from spectralgpt_jax.models.flops import train_step_flops
  from spectralgpt_jax.train import optim, steps
  from spectralgpt_jax.train import state as state_lib

  batch = int(batch or chosen.get("batch") or config.batch_size)
  accum = int(accum_steps or chosen.get("accum_steps", 1))
  mesh_text = mesh or ",".join(str(s) for s in chosen.get("mesh", (1, -1, 1)))
  fields = {f.name for f in dataclasses.fields(models.ModelConfig)}
  switches = {"remat": remat or chosen.get("remat", "none"),
              "scan_blocks": bool(chosen.get("scan_blocks", False) if scan_blocks is None else scan_blocks)}
  for key, value in switches.items():
    if key in fields:
      config.model[key] = value
    elif value not in ("none", False):
      raise PlanError(f"--{key}={value}: this ModelConfig has no {key!r} field yet")
  # "auto" is resolved by the platform of the default backend when traced, which is this CPU host: resolve it for
  # the target instead. Simulated GPUs run `xla` (cuDNN's kernel does not compile for the CPU).
  impl = attention_impl or config.model.get("attention_impl", "xla")
  if impl == "auto":
    impl = "xla" if target.platform == "gpu" else models.config.resolve_attention(impl, target.platform, dtype=dtype)
  config.model.attention_impl = impl
  if "grad_fence" in fields:   # "auto" would see this CPU host too: fence only where the target is a CPU
    config.model.grad_fence = "on" if target.platform == "cpu" else "off"

  devices = _devices(target)
  try:
    the_mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, (int(s) for s in mesh_text.split(",")))),
                                  devices=devices)
  except (sharding.MeshError, ValueError) as e:
    raise PlanError(f"--mesh={mesh_text}: {e}") from None
  dp = sharding.data_parallel_size(the_mesh)
  if batch % (accum * dp):
    raise PlanError(f"--batch={batch}: must divide by accum_steps x data-parallel devices = {accum} x {dp}")

  task_obj = tasks.get(config)
  model_cfg = task_obj.model_config()
  schedule = optim.warmup_half_cosine(1e-4, total_steps=1000, warmup_steps=10)   # its values cost no memory
  tx = optim.make_optimizer(config.optimizer, schedule, depth=model_cfg.depth)
  sharded = state_lib.abstract_sharded(model_cfg, tx, the_mesh)
  batch_sharding = sharding.batch_sharding(the_mesh)
  step_fn = functools.partial(steps.train_step, sharded.graphdef, jax.random.key(0), schedule,
                              steps.StepConfig(task=task_obj, accum_steps=accum), batch_sharding)
  abstract_batch = _abstract_batch(task_obj, model_cfg, batch)

  compiled, memory, oom, compile_s = _compile(step_fn, sharded, abstract_batch, batch_sharding)
  mask_ratio = float(config.model.get("mask_ratio", 0.9))
  flops = train_step_flops(model_cfg, mask_ratio) * batch // target.num_devices
  asked = {"batch": batch, "accum_steps": accum, "mesh": tuple(the_mesh.shape.values()), **switches}
  source = ("recommended" if chosen and all(chosen.get(k) == v for k, v in asked.items()) else
            "custom" if chosen else "default (no recommended plan for this model and topology)")
  result = {
      "model": config.model.name, "task": task, "plan": source, "topology": topology, "platform": target.platform,
      "device_kind": target.device_kind, "libtpu_topology": target.topology or None,
      "num_devices": target.num_devices, "mesh": dict(the_mesh.shape), "batch": batch, "accum_steps": accum,
      "micro_batch_per_device": batch // accum // dp, **switches, "attention_impl": impl, "dtype": dtype,
  }
  result.update(_memory_fields(memory, oom, target))
  result.update({
      "flops_per_device": int(flops), "xla_flops_per_device": _xla_flops(compiled, accum),
      "compile_s": round(compile_s, 1),
      "memory_analysis": ("libtpu (the TPU compiler)" if target.platform == "tpu" else
                          "XLA:CPU for simulated devices (approximates the GPU's)"),
  })
  result["versions"] = _versions()
  return result


def _compile(step_fn, sharded, abstract_batch: dict, batch_sharding):
  """(compiled or None, memory analysis or None, (needed, limit) bytes if the TPU compiler said out of memory,
  seconds)."""
  from spectralgpt_jax.train import steps
  start = time.perf_counter()
  try:
    compiled, memory = steps.compile_train_step(step_fn, sharded.state, sharded.shardings, abstract_batch,
                                                batch_sharding)
    oom = None
  except Exception as e:      # the TPU compiler refuses programs larger than HBM: that is the answer, not a failure
    oom = _oom_bytes(str(e))
    if oom is None:
      raise
    compiled, memory, oom = None, None, (*oom, str(e).splitlines()[0][:300])
  if compiled is not None and memory is None:
    raise PlanError("this backend's compiler has no memory analysis")
  return compiled, memory, oom, time.perf_counter() - start


def _memory_fields(memory, oom, target: Target) -> dict:
  """peak = argument + output - alias + temp bytes; fits = peak + code <= HBM (see the module docstring)."""
  if memory is None:
    needed, limit, error = oom
    return {"peak_bytes_per_device": needed, "peak_gib_per_device": round(needed / GIB, 2),
            "hbm_bytes_per_device": target.hbm_bytes, "hbm_gib_per_device": round(target.hbm_bytes / GIB, 2),
            "fits": False, "memory_bytes": {}, "xla_peak_memory_bytes": None, "compile_error": error,
            "compiler_hbm_limit_bytes": limit}
  breakdown = {k: int(getattr(memory, f"{k}_size_in_bytes")) for k in
               ("argument", "output", "alias", "temp", "generated_code")}
  peak = breakdown["argument"] + breakdown["output"] - breakdown["alias"] + breakdown["temp"]
  return {"peak_bytes_per_device": peak, "peak_gib_per_device": round(peak / GIB, 2),
          "hbm_bytes_per_device": target.hbm_bytes, "hbm_gib_per_device": round(target.hbm_bytes / GIB, 2),
          "fits": peak + breakdown["generated_code"] <= target.hbm_bytes, "memory_bytes": breakdown,
          # XLA:CPU's peak figure leaves its temporaries out (about the arguments alone): TPU only.
          "xla_peak_memory_bytes": getattr(memory, "peak_memory_in_bytes", None) if target.platform == "tpu" else None}


def _xla_flops(compiled, accum_steps: int) -> int | None:
  """XLA's cost analysis of the step, without accumulation only: XLA counts a loop body at most once, and after the
  TPU compiler's loop transformations not even that (v4-32, B, 4 micro-batches: 0.77 of one micro-batch)."""
  if compiled is None or accum_steps > 1:
    return None
  try:
    cost = compiled.cost_analysis()
  except Exception:    # not every backend implements it
    return None
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return int(cost["flops"]) if cost and "flops" in cost else None


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", required=True, help="B | L | H or a model variant name (pretraining)")
  parser.add_argument("--topology", required=True, help="v4-32, v5e-64, v5e-256, v5p-128, 8xH100, cpu-8, ...")
  parser.add_argument("--batch", type=int, help="global batch per optimizer update (default: the plan's)")
  parser.add_argument("--mesh", help="data,fsdp,model sizes, one may be -1 (default: the plan's, else 1,-1,1)")
  parser.add_argument("--remat", choices=["none", "full", "dots", "dots_no_batch"])
  parser.add_argument("--accum_steps", type=int, help="micro-batches per update (default: the plan's, else 1)")
  parser.add_argument("--scan_blocks", type=int, choices=[0, 1], help="blocks under lax.scan (default: the plan's)")
  parser.add_argument("--task", default="pretrain", choices=["pretrain", "eurosat", "bigearthnet", "segmunich", "oscd"])
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="compute dtype")
  parser.add_argument("--attention_impl", help="default: the model's (auto), resolved for the target")
  args = parser.parse_args()
  try:
    host_device_flags(resolve_target(args.topology))
    result = plan(args.model, args.topology, batch=args.batch, mesh=args.mesh, remat=args.remat,
                  accum_steps=args.accum_steps, task=args.task, dtype=args.dtype, attention_impl=args.attention_impl,
                  scan_blocks=None if args.scan_blocks is None else bool(args.scan_blocks))
  except PlanError as e:
    print(f"memory_plan: {e}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps(result))


if __name__ == "__main__":
  from spectralgpt_jax import runtime
  runtime.configure()   # the allocator main.py uses (SPECTRALGPT_JAX_FAST_RUNTIME=0: off); imports no JAX
  main()
