#!/usr/bin/env bash
# The GPU checks, for when an NVIDIA GPU is available (one H100/H200; under 8 minutes in all, each step bounded):
#   1. parity and fast-path equivalence on the GPU at matmul precision "highest" (tests/test_parity.py,
#      tests/test_fast_paths.py, which includes cuDNN attention against XLA in bfloat16),
#   2. cuDNN flash attention against XLA attention: the ViT-B/8 MAE and classification steps, bf16,
#   3. the bf16 MAE pretraining step of B, L and H: step time, img/s, tokens/s and MFU (peak from the device table).
# Usage (from a checkout with `pip install -e ".[dev,cuda]"`):  bash benchmarks/gpu.sh [OUT_DIR]
# Writes OUT_DIR/{tests.txt,steps.jsonl,summary.txt} (default benchmarks/results/gpu-<date>).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/gpu-$(date -u +%Y%m%d-%H%M)}
mkdir -p "$out"
export SPECTRALGPT_JAX_FAST_RUNTIME=${SPECTRALGPT_JAX_FAST_RUNTIME:-1}
if ! python -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
  echo "gpu.sh: jax sees no GPU (install the CUDA build: pip install -e '.[dev,cuda]')" >&2
  exit 2
fi
python -c "import jax; d = jax.devices()[0]; print(f'{d.device_kind} x{jax.device_count()}, jax {jax.__version__}')" \
  | tee "$out/summary.txt"
start=$(date +%s)

# 1. Equivalence on the GPU (tiny models: compile-bound, ~1-2 min).
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 180 python -m pytest -q -x tests/test_parity.py tests/test_fast_paths.py \
  > "$out/tests.txt" 2>&1
echo "tests (parity + fast paths, precision highest): exit $? ($(tail -1 "$out/tests.txt"))" | tee -a "$out/summary.txt"

step() {   # one benchmark line into steps.jsonl, bounded in time
  timeout "$1" python "${@:2}" >> "$out/steps.jsonl" 2>> "$out/stderr.txt" \
    || echo "FAILED ($?): ${*:2}" | tee -a "$out/summary.txt"
}
# 2. cuDNN vs XLA attention (same model, batch and dtype).
for impl in xla cudnn; do
  step 60 benchmarks/pretrain_step.py --model mae_vit_base_patch8_128 --batch 256 --steps 10 --dtype bfloat16 \
    --attention_impl "$impl"
  step 60 benchmarks/finetune_step.py --task eurosat --model B --batch 64 --steps 10 --dtype bfloat16 \
    --attention_impl "$impl"
done
# 3. bf16 MFU per size (attention auto = cuDNN for bf16 on GPU).
step 60 benchmarks/pretrain_step.py --model mae_vit_base_patch8_128 --batch 512 --steps 10 --dtype bfloat16
step 90 benchmarks/pretrain_step.py --model mae_vit_large_patch8_128 --batch 256 --steps 10 --dtype bfloat16
step 120 benchmarks/pretrain_step.py --model mae_vit_huge_patch8_128 --batch 128 --steps 5 --dtype bfloat16

python - "$out/steps.jsonl" <<'PY' | tee -a "$out/summary.txt"
import json, sys
for line in open(sys.argv[1]):
  r = json.loads(line)
  name = r.get("task", "pretrain") + " " + r["model"]
  print(f"{name:40s} b{r['batch']:<4d} {r['attention_impl']:6s} {r['step_s_median']:.4f} s/step "
        f"{r['img_per_s']:8.1f} img/s  mfu {r.get('mfu', float('nan')):.3f}  compile {r['compile_s']} s")
PY
echo "gpu.sh: $(( $(date +%s) - start )) s; results in $out" | tee -a "$out/summary.txt"
