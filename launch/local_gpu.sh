#!/usr/bin/env bash
# Pretrain on one machine with all its local GPUs (1..8), no multi-host setup.
#
#   bash launch/local_gpu.sh runs/stage1 configs/pretrain.py:fmow,B --config.batch_size=512
#
# All visible GPUs join one mesh; by default FSDP spans them (config.mesh.fsdp=-1). Limit the GPUs with
# CUDA_VISIBLE_DEVICES=0,1. Extra arguments are passed to main.py (any --config.key=value override).
set -euo pipefail
WORKDIR=${1:?usage: local_gpu.sh WORKDIR [CONFIG] [--config.key=value ...]}
CONFIG=${2:-configs/pretrain.py:fmow,B}
shift $(( $# >= 2 ? 2 : 1 ))
cd "$(dirname "$0")/.."

if ! python -c "import jax; assert jax.default_backend() == 'gpu'" 2>/dev/null; then
  echo "JAX does not see a GPU. Install the CUDA build first:  pip install -e '.[cuda]'" >&2
  exit 1
fi
# Let XLA use most of the GPU memory up front (default 75 %); keep a little for cuDNN workspaces.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
# grain workers must not initialise CUDA (architecture.md pitfall 1); the data layer handles this, this is a guard.
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
exec python main.py --config="$CONFIG" --workdir="$WORKDIR" "$@"
