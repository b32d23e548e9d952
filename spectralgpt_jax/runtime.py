"""Fast process defaults for every entry point: the memory allocator and the XLA CPU flags, chosen once at start.

XLA:CPU allocates a step's temporaries (gigabytes for a ViT-B step) on every call. glibc's malloc serves blocks that
large with mmap and gives them back to the kernel on free, so every step page-faults them in again; tcmalloc and
jemalloc keep them. `configure()` therefore, on Linux:
  1. re-executes the process once with `LD_PRELOAD` set to tcmalloc (else jemalloc) when one is installed
     (`apt-get install libtcmalloc-minimal4`), before JAX creates any buffer;
  2. otherwise re-executes it with `GLIBC_TUNABLES` that make glibc keep freed memory (no mmap for large blocks,
     no trimming, a 256 MB top pad, and one arena, so that a block one XLA thread frees is reused by the others
     instead of faulting in new pages: 1.3x on the MAE step); calling mallopt() at run time measured no gain;
  3. adds the XLA CPU flags that measured faster (`CPU_XLA_FLAGS`) to `XLA_FLAGS`, unless the user set them.
`SPECTRALGPT_JAX_FAST_RUNTIME=0` turns all of it off; `SPECTRALGPT_JAX_ALLOCATOR=tcmalloc|jemalloc|glibc` picks
one. The choice is logged once (`describe()`). Entry points call it first thing (`main.py`, `predict`, `embed`,
the benchmarks); library code and tests never do. `cpu_has_bf16_dots()` (read by `models/matmul.py` when a
function is traced; `SPECTRALGPT_JAX_CPU_BF16_DOTS=1|0` overrides it) says whether bf16 matmul kernels pay here.
"""
from __future__ import annotations

import functools
import glob
import logging
import os
import platform
import sys

DISABLE_ENV = "SPECTRALGPT_JAX_FAST_RUNTIME"
ALLOCATOR_ENV = "SPECTRALGPT_JAX_ALLOCATOR"
BF16_DOTS_ENV = "SPECTRALGPT_JAX_CPU_BF16_DOTS"
_APPLIED_ENV = "_SPECTRALGPT_JAX_RUNTIME"   # set before the re-exec: the child must not exec again
# Shared-library names, best first; searched in the usual library folders (Debian/Ubuntu, Fedora, conda).
ALLOCATORS = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
    "jemalloc": ("libjemalloc.so.2",),
}
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
             "/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu")
GLIBC_TUNABLES = ("glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295:glibc.malloc.top_pad=268435456"
                  ":glibc.malloc.arena_max=1")
# XLA CPU flags that measured faster on the MAE and fine-tuning steps (docs/benchmarks.md); only for the CPU.
CPU_XLA_FLAGS: tuple[str, ...] = ()

_state: dict[str, str] = {}


def find_allocator(name: str) -> str | None:
  """Path of the allocator's shared library, or None."""
  prefixes = [os.path.join(p, "lib") for p in (os.environ.get("CONDA_PREFIX"), sys.prefix) if p]
  for lib in ALLOCATORS[name]:
    for folder in (*prefixes, *_LIB_DIRS):
      matches = sorted(glob.glob(os.path.join(folder, lib)))
      if matches:
        return matches[0]
  return None


def _preloaded() -> str | None:
  """The allocator this process has loaded (from its memory map; LD_PRELOAD alone may name a missing file)."""
  try:
    with open("/proc/self/maps", encoding="utf-8") as f:
      loaded = f.read()
  except OSError:
    loaded = os.environ.get("LD_PRELOAD", "")
  for name, libs in ALLOCATORS.items():
    if any(lib.split(".so")[0] + ".so" in loaded for lib in libs):
      return name
  return None


def _reexec_with(name: str, **variables: str) -> None:
  env = {**os.environ, **variables, _APPLIED_ENV: name}
  argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], env)


def _add_xla_flags() -> str:
  if not CPU_XLA_FLAGS or os.environ.get("JAX_PLATFORMS", "cpu").split(",")[0] not in ("cpu", ""):
    return ""
  current = os.environ.get("XLA_FLAGS", "")
  extra = [f for f in CPU_XLA_FLAGS if f.split("=")[0] not in current]
  if extra:
    os.environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
  return " ".join(extra)


def configure() -> str:
  """Apply the fast defaults (may re-execute the process: call before any work). Returns `describe()`."""
  if _state:
    return describe()
  if os.environ.get(DISABLE_ENV, "1").lower() in ("0", "false", "no", "off"):
    _state["allocator"] = f"unchanged ({DISABLE_ENV}=0)"
    return describe()
  wanted = os.environ.get(ALLOCATOR_ENV, "").lower()
  if wanted and wanted not in (*ALLOCATORS, "glibc"):
    raise SystemExit(f"{ALLOCATOR_ENV}={wanted}: choose one of {', '.join([*ALLOCATORS, 'glibc'])}")
  preloaded = _preloaded()
  if preloaded:
    _state["allocator"] = preloaded + (" (re-executed with LD_PRELOAD)" if os.environ.get(_APPLIED_ENV) else
                                       " (LD_PRELOAD)")
  elif sys.platform.startswith("linux") and wanted != "glibc" and not os.environ.get(_APPLIED_ENV):
    for name in ([wanted] if wanted else list(ALLOCATORS)):
      path = find_allocator(name)
      if path:
        _reexec_with(name, LD_PRELOAD=":".join(p for p in (path, os.environ.get("LD_PRELOAD")) if p))
      if wanted:
        raise SystemExit(f"{ALLOCATOR_ENV}={wanted}: {ALLOCATORS[name][0]} not found (apt-get install "
                         f"{'libtcmalloc-minimal4' if name == 'tcmalloc' else 'libjemalloc2'})")
  if "allocator" not in _state and sys.platform.startswith("linux"):
    if os.environ.get("GLIBC_TUNABLES"):
      tuned = " (re-executed)" if os.environ.get(_APPLIED_ENV) == "glibc" else ""
      _state["allocator"] = (f"glibc, GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}{tuned}; tcmalloc is faster "
                             "(apt-get install libtcmalloc-minimal4)")
    else:
      _reexec_with("glibc", GLIBC_TUNABLES=GLIBC_TUNABLES)
  if "allocator" not in _state:
    _state["allocator"] = "system malloc"
  _state["xla_flags"] = _add_xla_flags()
  return describe()


def describe() -> str:
  if not _state:
    return "runtime defaults not applied"
  flags = f"; XLA CPU flags added: {_state['xla_flags']}" if _state.get("xla_flags") else ""
  return f"allocator: {_state['allocator']}{flags}"


@functools.cache
def cpu_info() -> dict[str, str]:
  """The first processor's /proc/cpuinfo fields ({} where there is none: macOS, Windows)."""
  info: dict[str, str] = {}
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  return info


def cpu_has_bf16_dots() -> bool:
  """Whether this CPU has bfloat16 dot-product instructions (x86 AVX512-BF16 or AMX-BF16), which XLA:CPU's bf16
  kernels need to beat float32. Without them (AVX2-only x86; ARM is not measured) the bf16 kernels ran 1.3-1.6x
  slower than float32 dots (docs/benchmarks.md). `SPECTRALGPT_JAX_CPU_BF16_DOTS=1|0` overrides the detection."""
  forced = os.environ.get(BF16_DOTS_ENV, "")
  if forced in ("0", "1"):
    return forced == "1"
  flags = set(cpu_info().get("flags", "").split())
  return bool(flags & {"avx512_bf16", "amx_bf16"})


def cpu_summary() -> str:
  """The CPU as benchmarks record it (machines of one kind differ): model name, logical CPUs, the ISA extensions
  that decide matmul speed (AVX-512, its bf16 dot products, AMX)."""
  info = cpu_info()
  if not info:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
  flags = set(info.get("flags", "").split())
  isa = [name for name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if name in flags]
  return f"{info.get('model name', platform.machine())}, {os.cpu_count()} CPUs, {' '.join(isa) or 'no AVX2'}"


def configure_and_log() -> None:
  logging.getLogger(__name__).info("runtime: %s", configure())
