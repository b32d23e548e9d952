"""SpectralGPT models in Flax NNX: `build(name, **overrides)` for every reference factory and tiny test variants."""
from __future__ import annotations

import jax
from flax import nnx

from spectralgpt_jax.models.config import VARIANTS, ModelConfig, get_config, names
from spectralgpt_jax.models.dense import ChangeDetectionViT, SegmentationViT
from spectralgpt_jax.models.mae import MaskedAutoencoder
from spectralgpt_jax.models.patch_embed import patchify, unpatchify
from spectralgpt_jax.models.vit import SpectralViT

__all__ = ["VARIANTS", "ChangeDetectionViT", "ModelConfig", "MaskedAutoencoder", "SegmentationViT", "SpectralViT",
           "ParamKeys", "build", "build_from_config",
           "count_params", "get_config", "names", "patchify", "unpatchify"]


_CLASSES = {"mae": MaskedAutoencoder, "vit": SpectralViT, "seg": SegmentationViT, "cd": ChangeDetectionViT}


class ParamKeys:
  """The keys of `nnx.Rngs(params=seed)` (key i = fold_in(key(seed), i)) with a Python counter: what the models'
  constructors ask of their `rngs` (`rngs.params()`, nothing else).

  Built under a trace (`jax.jit` / `nnx.eval_shape` of the constructor, as `train.state` creates sharded states),
  every `nnx.Rngs` draw stores a traced counter in a Variable, and flax's `set_value` then reads `.sharding` of the
  tracer. JAX answers with an error whose message walks the whole trace so far, so building costs time quadratic in
  the number of parameters: 18.7 of the 20 s that `eval_shape` of SpectralGPT-H took (flax 0.12.8, jax 0.10.2). The
  same keys from a plain counter build it in 0.6 s."""

  def __init__(self, seed: int):
    self._key, self._count = jax.random.key(seed), 0

  def params(self) -> jax.Array:
    key = jax.random.fold_in(self._key, self._count)
    self._count += 1
    return key


def build_from_config(cfg: ModelConfig, *, rngs: nnx.Rngs | None = None, seed: int = 0):
  rngs = rngs if rngs is not None else ParamKeys(seed)
  return _CLASSES[cfg.kind](cfg, rngs=rngs)


def build(name: str, *, seed: int = 0, rngs: nnx.Rngs | None = None, **overrides):
  """A named model (`names()` lists them) with reference-style overrides, e.g. `build("vit_base_patch8_128",
  num_classes=19)`. Parameters are initialised as the reference does, from `seed` (or `rngs`)."""
  return build_from_config(get_config(name, **overrides), rngs=rngs, seed=seed)


def count_params(model) -> int:
  return sum(int(v.size) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
