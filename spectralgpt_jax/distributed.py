"""Multi-host initialisation, guarded so that it runs exactly once per training process.

`jax.distributed.initialize()` must run before any other JAX computation, only in the main training process of
each host. It must NOT run
  * in grain worker processes, which re-import the main module (google/grain#802),
  * on a single host, where it is unnecessary and crashes on some platforms (big_vision's BV_JAX_INIT note),
  * twice.
So it is opt-in: the launch scripts set SPECTRALGPT_DISTRIBUTED=1. On Cloud TPU pods, SLURM and Open MPI JAX
finds the coordinator by itself; anywhere else set JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES and
JAX_PROCESS_ID (optionally JAX_LOCAL_DEVICE_IDS="0,1"), the MaxText GPU recipe.
"""
from __future__ import annotations

import logging
import multiprocessing
import os

import jax

ENV_FLAG = "SPECTRALGPT_DISTRIBUTED"


def _explicit_args() -> dict:
  args = {}
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    args["coordinator_address"] = os.environ["JAX_COORDINATOR_ADDRESS"]
  if os.environ.get("JAX_NUM_PROCESSES"):
    args["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
  if os.environ.get("JAX_PROCESS_ID"):
    args["process_id"] = int(os.environ["JAX_PROCESS_ID"])
  if os.environ.get("JAX_LOCAL_DEVICE_IDS"):
    args["local_device_ids"] = [int(i) for i in os.environ["JAX_LOCAL_DEVICE_IDS"].split(",")]
  return args


def maybe_initialize() -> bool:
  """Initialise the JAX distributed runtime when asked to. Returns whether this call initialised it."""
  if multiprocessing.parent_process() is not None:
    return False              # a grain (or other multiprocessing) worker: never join the cluster
  if os.environ.get(ENV_FLAG, "0") != "1":
    return False
  if jax.distributed.is_initialized():
    return False
  args = _explicit_args()
  logging.info("jax.distributed.initialize(%s)", args or "auto-detected cluster")
  jax.distributed.initialize(**args)
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True
