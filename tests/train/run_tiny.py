"""Subprocess entry for the training-system tests: `python run_tiny.py WORKDIR '{"key": value, ...}'`.

Runs loop.run on the tiny config (train_testlib.tiny_config with the JSON overrides) and the synthetic source.
With SPECTRALGPT_DISTRIBUTED=1 and JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID set it joins a
multi-process CPU cluster first, exactly as main.py does.
"""
import json
import os
import sys

from absl import flags, logging

flags.FLAGS(sys.argv[:1], known_only=True)
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402

from spectralgpt_jax import distributed  # noqa: E402


def main():
  workdir, overrides = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
  distributed.maybe_initialize()
  jax.config.update("jax_disable_most_optimizations", True)
  logging.set_verbosity(logging.INFO)
  import train_testlib as tl
  from spectralgpt_jax.train import loop
  summary = loop.run(tl.tiny_config(**overrides), workdir, make_iterator=tl.make_iterator)
  keep = {k: v for k, v in summary.items() if k in ("start_step", "final_step", "preempted")}
  print("SUMMARY", json.dumps({**keep, "process_index": jax.process_index(), "process_count": jax.process_count()}),
        flush=True)


if __name__ == "__main__":
  main()
