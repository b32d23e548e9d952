"""benchmarks/profile_step.py: its HLO reading (dots, operand types, FLOPs) and its trace reading, on small jits."""
from __future__ import annotations

import collections
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import profile_step  # noqa: E402


def test_dots_of_reads_shapes_types_and_flops_of_fused_and_plain_dots():
  x, w = jnp.ones((8, 16), jnp.bfloat16), jnp.ones((16, 4), jnp.bfloat16)
  fn = jax.jit(lambda a, b: jnp.tanh(jnp.dot(a, b, preferred_element_type=jnp.float32)) + 1.0)
  dots = profile_step.dots_of(fn.lower(x, w).compile().as_text())
  found = [d for ds in dots.values() for d in ds]
  assert found, dots
  assert found[0] == ("f32[8,4]", "bf16[8,16]", "bf16[16,4]", 2 * 8 * 16 * 4, False)


def test_op_durations_sums_the_ops_of_a_trace(tmp_path):
  fn = jax.jit(lambda a: jnp.dot(a, a.T).sum())
  a = jnp.ones((256, 256))
  fn(a).block_until_ready()
  with jax.profiler.trace(str(tmp_path)):
    fn(a).block_until_ready()
  seconds = profile_step.op_durations(str(tmp_path))
  assert seconds and all(s >= 0 for s in seconds.values())
  assert not any(name.startswith(profile_step._SKIP) for name in seconds)
  assert profile_step.kind_of("ynn_fusion.452") == "ynn_fusion"


def test_dots_of_reads_the_entry_computations_plain_dots_and_groups_them_apart():
  """A weight-gradient-like dot (contracting both operands' leading axis) stays a plain dot instruction of the ENTRY
  computation on XLA:CPU; it is found, and group_dots keeps it out of the timed, fused groups."""
  x, dy = jnp.ones((64, 16)), jnp.ones((64, 32))
  fn = jax.jit(lambda a, b: jnp.tanh(jnp.einsum("mk,mn->kn", a, b)) * 2.0)
  dots = profile_step.dots_of(fn.lower(x, dy).compile().as_text())
  found = {name: ds for name, ds in dots.items() if ds}
  assert list(found.values()) == [[("f32[16,32]", "f32[64,16]", "f32[64,32]", 2 * 16 * 32 * 64, False)]], dots
  (name,) = found
  assert "fusion" not in profile_step.kind_of(name), name
  fused_dot = ("f32[8,4]", "f32[8,16]", "f32[16,4]", 2 * 8 * 16 * 4, False)
  seconds = collections.Counter({name: 0.5, "ynn_fusion.3": 0.25, "tanh_fusion": 0.125})
  fused, unfused = profile_step.group_dots(seconds, {**found, "ynn_fusion.3": [fused_dot], "tanh_fusion": []})
  assert fused == {"f32[8,4] <- f32[8,16] x f32[16,4]": [0.25, 1, 2 * 8 * 16 * 4]}
  assert unfused == {"f32[16,32] <- f32[64,16] x f32[64,32]": [0.5, 1, 2 * 16 * 32 * 64]}
