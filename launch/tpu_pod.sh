#!/usr/bin/env bash
# Pretrain on a Cloud TPU VM pod slice: create it, copy this checkout to every worker, install, run everywhere.
#
#   TPU_NAME=sgpt ZONE=us-central2-b ACCELERATOR=v4-64 \
#     bash launch/tpu_pod.sh create            # once: create the slice
#   bash launch/tpu_pod.sh setup               # copy the code to all workers and pip install it
#   bash launch/tpu_pod.sh run gs://BUCKET/spectralgpt/stage1 configs/pretrain.py:fmow,B --config.data.workers=16
#   bash launch/tpu_pod.sh logs                # follow worker 0's log
#   bash launch/tpu_pod.sh delete
#
# Every worker runs the same command (one JAX process per host); SPECTRALGPT_DISTRIBUTED=1 makes main.py call
# jax.distributed.initialize(), which finds the other hosts by itself on TPU. Use a gs:// workdir (or a shared
# filesystem): all hosts write checkpoints to it. Prepared data must be readable from every worker
# (config.data.data_dir, e.g. a gcsfuse mount). Maintenance events deliver SIGTERM / a preemption notice: the run
# saves a checkpoint and `run` again resumes.
set -euo pipefail
TPU_NAME=${TPU_NAME:-spectralgpt}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-32}
VERSION=${VERSION:-tpu-ubuntu2204-base}
REMOTE_DIR=${REMOTE_DIR:-spectralgpt_jax}
cd "$(dirname "$0")/.."

ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"; }

case "${1:-}" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
        --version="$VERSION" ${SPOT:+--spot}
    ;;
  setup)
    # Copy the working tree (not runs/ or the venv), then install with the TPU build of JAX on every worker.
    tar --exclude=.venv --exclude=runs --exclude=.git -czf /tmp/spectralgpt_src.tgz .
    gcloud compute tpus tpu-vm scp /tmp/spectralgpt_src.tgz "$TPU_NAME":/tmp/ --zone="$ZONE" --worker=all
    ssh_all "mkdir -p ~/$REMOTE_DIR && tar -xzf /tmp/spectralgpt_src.tgz -C ~/$REMOTE_DIR && cd ~/$REMOTE_DIR && \
             python3 -m venv ~/venv && ~/venv/bin/pip install -q -U pip && ~/venv/bin/pip install -q -e '.[tpu]'"
    ;;
  run)
    WORKDIR=${2:?usage: tpu_pod.sh run WORKDIR [CONFIG] [--config.key=value ...]}
    CONFIG=${3:-configs/pretrain.py:fmow,B}
    shift $(( $# >= 3 ? 3 : 2 ))
    # nohup + log file: the run survives the ssh session; `logs` follows it.
    ssh_all "cd ~/$REMOTE_DIR && SPECTRALGPT_DISTRIBUTED=1 nohup ~/venv/bin/python main.py --config='$CONFIG' \
             --workdir='$WORKDIR' $* > ~/spectralgpt.log 2>&1 & echo \$! > ~/spectralgpt.pid"
    ;;
  logs)
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=0 --command="tail -f ~/spectralgpt.log"
    ;;
  stop)
    ssh_all "kill -TERM \$(cat ~/spectralgpt.pid) || true"   # SIGTERM: each host saves a checkpoint, then exits
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
    ;;
  *)
    echo "usage: $0 create|setup|run WORKDIR [CONFIG] [overrides]|logs|stop|delete" >&2
    exit 2
    ;;
esac
