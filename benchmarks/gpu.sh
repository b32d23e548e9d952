#!/usr/bin/env bash
# The GPU checks, for when an NVIDIA GPU is available (one H100/H200; at most 8 minutes, each step time-bounded):
#   1. parity and fast-path equivalence on the GPU at matmul precision "highest" (tests/test_parity.py,
#      tests/test_fast_paths.py, which includes cuDNN attention against XLA in bfloat16),
#   2. cuDNN flash attention against XLA attention on the ViT-B/8 MAE step, bf16,
#   3. bf16 step time, img/s, tokens/s and MFU (peak from the device table) of the MAE pretraining step of B, L and H
#      and of the ViT-B EuroSAT classification step.
# Usage:  bash benchmarks/gpu.sh [OUT_DIR]        (default benchmarks/results/gpu-<date>)
#   with `pip install -e ".[dev,cuda]"`, or on a machine without network whose image has jax with CUDA (then run
#   benchmarks/gpu_wheels.sh where PyPI is reachable and bring .whl/ along: its wheels are installed into /tmp and
#   the checkout runs from PYTHONPATH). `bash benchmarks/gpu.sh --dry-run [OUT_DIR]` runs the same script on the CPU
#   with tiny sizes, to check it before spending accelerator time.
# Writes OUT_DIR/{summary.txt,env.txt,tests.txt,steps.jsonl,stderr.txt}.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; shift; fi
out=${1:-benchmarks/results/gpu-$(date -u +%Y%m%d-%H%M)}
mkdir -p "$out"
py=${PYTHON:-$(command -v python3 || command -v python)}
export SPECTRALGPT_JAX_FAST_RUNTIME=${SPECTRALGPT_JAX_FAST_RUNTIME:-1} PYTHONUNBUFFERED=1
if ls .whl/*.whl > /dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/spectralgpt_site \
    .whl/*.whl || { echo "gpu.sh: installing .whl/ failed" >&2; exit 3; }
  export PYTHONPATH=/tmp/spectralgpt_site${PYTHONPATH:+:$PYTHONPATH}
fi
# from another directory: a script's own folder, not the working directory, starts its sys.path
(cd / && "$py" -c "import spectralgpt_jax" 2> /dev/null) || export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
missing=$("$py" - <<'PY'
import importlib.util
names = ["jax", "flax", "optax", "orbax.checkpoint", "grain", "ml_collections", "numpy", "scipy", "pytest"]
print(" ".join(n for n in names if importlib.util.find_spec(n.split(".")[0]) is None))
PY
) || { echo "gpu.sh: $py cannot check its packages" >&2; exit 2; }
if [ -n "$missing" ]; then
  echo "gpu.sh: missing Python packages: $missing (pip install -e '.[dev,cuda]', or bring .whl/ from benchmarks/gpu_wheels.sh)" >&2
  exit 2
fi
if [ "$dry" = 1 ]; then
  export JAX_PLATFORMS=cpu
  mae_b=mae_vit_tiny mae_l=mae_vit_tiny mae_h=mae_vit_tiny b_big=8 b_mid=8 b_small=8 ft_batch=1 impls=xla steps=1
  tests=(tests/test_parity.py tests/test_fast_paths.py)
  export XLA_FLAGS=--xla_force_host_platform_device_count=1     # one device, as on the one-GPU machine
  tests_s=300
else
  export JAX_PLATFORMS=cuda    # tests/conftest.py defaults to the CPU
  if ! "$py" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2> /dev/null; then
    echo "gpu.sh: jax sees no GPU (install the CUDA build: pip install -e '.[dev,cuda]')" >&2
    exit 2
  fi
  mae_b=mae_vit_base_patch8_128 mae_l=mae_vit_large_patch8_128 mae_h=mae_vit_huge_patch8_128
  b_big=512 b_mid=256 b_small=128 ft_batch=64 impls="xla cudnn" steps=10
  tests=(tests/test_parity.py tests/test_fast_paths.py)
  tests_s=120
fi
"$py" - <<'PY' 2>&1 | tee "$out/summary.txt"
import flax, jax, optax
d = jax.devices()[0]
print(f"{d.platform}:{d.device_kind} x{jax.device_count()}, jax {jax.__version__}, flax {flax.__version__}, "
      f"optax {optax.__version__}")
PY
"$py" -c "import jax; jax.print_environment_info()" > "$out/env.txt" 2>&1
start=$(date +%s)

# 1. Equivalence on the device (tiny models: compile-bound, ~1-2 min). -rs lists skips: a skipped cuDNN test
#    means the tests did not see a GPU (the mesh tests skip on one device). No -x: one failure must not hide the
#    cuDNN test.
JAX_DEFAULT_MATMUL_PRECISION=highest timeout "$tests_s" "$py" -m pytest -q -rs -p no:cacheprovider "${tests[@]}" \
  > "$out/tests.txt" 2>&1
echo "tests (${tests[*]}, precision highest): exit $? ($(tail -1 "$out/tests.txt"))" | tee -a "$out/summary.txt"

step() {   # one benchmark line into steps.jsonl, bounded in time
  timeout "$1" "$py" "${@:2}" >> "$out/steps.jsonl" 2>> "$out/stderr.txt" \
    || echo "FAILED ($?): ${*:2}" | tee -a "$out/summary.txt"
}
# 2. cuDNN flash attention vs XLA attention on the MAE step (same model, batch and dtype).
for impl in $impls; do
  step 50 benchmarks/pretrain_step.py --model "$mae_b" --batch "$b_mid" --steps "$steps" --dtype bfloat16 \
    --attention_impl "$impl"
done
# 3. bf16 MFU per size and of the classification step (attention auto = cuDNN for bf16 on GPU).
step 50 benchmarks/pretrain_step.py --model "$mae_b" --batch "$b_big" --steps "$steps" --dtype bfloat16
step 60 benchmarks/pretrain_step.py --model "$mae_l" --batch "$b_mid" --steps "$steps" --dtype bfloat16
step 90 benchmarks/pretrain_step.py --model "$mae_h" --batch "$b_small" --steps "$(( steps > 5 ? 5 : steps ))" \
  --dtype bfloat16
step 60 benchmarks/finetune_step.py --task eurosat --model B --batch "$ft_batch" --steps "$steps" --dtype bfloat16

"$py" - "$out/steps.jsonl" <<'PY' | tee -a "$out/summary.txt"
import json, sys
for line in open(sys.argv[1]):
  r = json.loads(line)
  name = r.get("task", "pretrain") + " " + r["model"]
  print(f"{name:40s} b{r['batch']:<4d} {r['attention_impl']:12s} {r['step_s_median']:.4f} s/step "
        f"{r['img_per_s']:8.1f} img/s  mfu {r.get('mfu', float('nan')):.3f}  compile {r['compile_s']} s")
PY
echo "gpu.sh: $(( $(date +%s) - start )) s; results in $out" | tee -a "$out/summary.txt"
