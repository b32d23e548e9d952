"""The fast process defaults (allocator re-exec, glibc mallopt, XLA flags), each in a fresh interpreter."""
import os
import subprocess
import sys

import pytest

from spectralgpt_jax import runtime

PROBE = ("import sys; from spectralgpt_jax import runtime; print(runtime.configure()); "
         "print('argv', sys.argv[1:]); print('maps', 'tcmalloc' in open('/proc/self/maps').read(), "
         "'jemalloc' in open('/proc/self/maps').read())")


def probe(*args, **env):
  clean = {k: v for k, v in os.environ.items() if not k.startswith(("SPECTRALGPT_JAX_", "_SPECTRALGPT_JAX_"))}
  clean.pop("LD_PRELOAD", None)
  out = subprocess.run([sys.executable, "-c", PROBE, *args], env={**clean, **env}, capture_output=True, text=True,
                       timeout=60)
  return out.returncode, out.stdout.splitlines(), out.stderr


needs_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD and mallopt are Linux")


@needs_linux
@pytest.mark.parametrize("name", ["tcmalloc", "jemalloc"])
def test_reexec_with_an_installed_allocator_keeps_the_arguments(name):
  if runtime.find_allocator(name) is None:
    pytest.skip(f"{name} is not installed here")
  code, lines, err = probe("--flag", "x y", SPECTRALGPT_JAX_ALLOCATOR=name)
  assert code == 0, err
  assert lines[0].startswith(f"allocator: {name} (re-executed with LD_PRELOAD)")
  assert lines[1] == "argv ['--flag', 'x y']"                 # the child got the same command line
  assert lines[2] == f"maps {name == 'tcmalloc'} {name == 'jemalloc'}"   # and really loaded it


@needs_linux
def test_glibc_is_reexecuted_with_tunables_that_keep_freed_memory():
  code, lines, err = probe("a", SPECTRALGPT_JAX_ALLOCATOR="glibc")
  assert code == 0, err
  assert lines[0].startswith(f"allocator: glibc, GLIBC_TUNABLES={runtime.GLIBC_TUNABLES} (re-executed)")
  assert lines[1:] == ["argv ['a']", "maps False False"]
  code, lines, err = probe(SPECTRALGPT_JAX_ALLOCATOR="glibc", GLIBC_TUNABLES="glibc.malloc.mmap_max=0")
  assert code == 0 and lines[0].startswith("allocator: glibc, GLIBC_TUNABLES=glibc.malloc.mmap_max=0;")  # the user's


def test_switched_off_and_bad_names():
  code, lines, _ = probe(SPECTRALGPT_JAX_FAST_RUNTIME="0", SPECTRALGPT_JAX_ALLOCATOR="tcmalloc")
  assert code == 0 and lines[0] == "allocator: unchanged (SPECTRALGPT_JAX_FAST_RUNTIME=0)"
  code, _, err = probe(SPECTRALGPT_JAX_ALLOCATOR="mimalloc")
  assert code == 1 and err.strip().splitlines() == ["SPECTRALGPT_JAX_ALLOCATOR=mimalloc: choose one of tcmalloc, "
                                                    "jemalloc, glibc"]


def test_default_choice_is_logged_by_the_commands(tmp_path):
  out = subprocess.run([sys.executable, "-m", "spectralgpt_jax.predict", "--checkpoint", str(tmp_path), "--input",
                        str(tmp_path), "--output", str(tmp_path / "o.tif")], capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 1 and "runtime: allocator: " in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith("error: --checkpoint")
