"""Subprocess entry for the multi-process task tests: `python run_task.py KIND WORKDIR '{"key": value, ...}'`.

Runs loop.run on `tasks_testlib.tiny(KIND, **overrides)`. With SPECTRALGPT_DISTRIBUTED=1 and
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set it joins a multi-process CPU cluster first, exactly
as main.py does.
"""
import json
import os
import sys

from absl import flags, logging

flags.FLAGS(sys.argv[:1], known_only=True)
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

from spectralgpt_jax import distributed  # noqa: E402


def main():
  kind, workdir = sys.argv[1], sys.argv[2]
  overrides = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
  distributed.maybe_initialize()
  jax.config.update("jax_disable_most_optimizations", True)
  logging.set_verbosity(logging.INFO)
  import tasks_testlib as tl
  from spectralgpt_jax.train import loop
  summary = loop.run(tl.tiny(kind, **overrides), workdir)
  print("SUMMARY", json.dumps({"process_index": jax.process_index(), "process_count": jax.process_count(),
                               "mode": summary.get("mode", "train")}), flush=True)


if __name__ == "__main__":
  main()
