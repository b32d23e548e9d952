r"""SpectralGPT entry point: pretraining, fine-tuning and evaluation, one loop for every task.

  python main.py --config=configs/pretrain.py:demo --workdir=runs/demo
  python main.py --config=configs/pretrain.py:fmow,B --workdir=gs://bucket/stage1 --config.mesh.fsdp=-1
  python main.py --config=configs/pretrain.py:bigearthnet,B --workdir=runs/stage2 \
      --config.init_from=gs://bucket/stage1/export
  python main.py --config=configs/finetune_eurosat.py:demo --workdir=runs/eurosat_demo
  python main.py --config=configs/finetune_oscd.py --config.mode=eval --config.init_from=CKPT --workdir=W

Any config key can be overridden with --config.key=value (type-checked). Re-running the same command resumes from
the newest checkpoint in --workdir. See docs/training.md and docs/tasks.md.
"""
from __future__ import annotations

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (local path or gs://...).")
_LIBRARY_LOGS = flags.DEFINE_bool("library_logs", False, "Show INFO logs of orbax/grain (very verbose).")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that turns an unknown --config.key into one clear line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    cause = e.args[0] if e.args else e
    key = str(cause.args[0] if isinstance(cause, KeyError) and cause.args else cause).split("\n")[0].strip("'\"")
    hint = str(cause).split("\n", 1)[1].strip("'\"") if "\n" in str(cause) else ""
    bad = [a for a in argv if a.startswith("--config.") and key in a.split("=")[0].split(".")]
    where = bad[0].split("=")[0][2:] if bad else key
    sys.exit(f"Config error: {where}: unknown key {key!r}. {hint}".strip())
  except flags.Error as e:
    sys.exit(f"Flag error: {e}")


class _QuietLibraries(std_logging.Filter):
  """Drop INFO lines from orbax and grain (dozens per checkpoint); warnings and errors still pass."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    noisy = any(part in record.pathname for part in ("/orbax/", "/grain/"))
    return record.levelno >= std_logging.WARNING or not noisy


def main(argv):
  del argv
  # Before anything touches JAX: join the cluster on multi-host launches (no-op locally and in grain workers).
  from spectralgpt_jax import distributed
  distributed.maybe_initialize()

  from spectralgpt_jax.data.readers.common import DataError
  from spectralgpt_jax.interop import CheckpointError
  from spectralgpt_jax.train import config_checks, loop
  if not _LIBRARY_LOGS.value:
    logging.get_absl_handler().addFilter(_QuietLibraries())
  from spectralgpt_jax import runtime
  logging.info("runtime: %s", runtime.describe())
  try:
    loop.run(_CONFIG.value, _WORKDIR.value)
  except config_checks.ConfigError as e:
    sys.exit(f"Config error: {e}")
  except CheckpointError as e:        # a checkpoint that does not fit (strict loading), unsafe or unreadable
    sys.exit(f"Checkpoint error: {_one_line(e)}")
  except (DataError, FileNotFoundError) as e:
    sys.exit(f"Data error: {_one_line(e)}")


def _one_line(error: Exception) -> str:
  return " ".join(str(error).split())


if __name__ == "__main__":
  from spectralgpt_jax import runtime
  runtime.configure()        # fast allocator and XLA CPU flags (may re-execute this process once, before JAX starts)
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=parse_flags)
