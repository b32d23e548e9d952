"""Frozen parameters (`config.optimizer.freeze`): train a head on a fixed pretrained encoder.

`freeze` is a comma-separated list of regular expressions over parameter names ('/'-joined paths below the model,
e.g. "encoder/blocks/3/attn/q/kernel"); a parameter is frozen when a pattern matches a leading run of its path
components: "encoder" freezes everything under `encoder/` (a linear probe of the classifier, a frozen backbone
for the dense tasks), "encoder/(patch_embed|pos_embed|blocks/[0-5])" the embeddings and the first six blocks.

Frozen parameters are not differentiated at all (the step takes the gradient with respect to the trainable ones
only, so XLA never computes the frozen weights' gradients, nor the backward pass below the lowest trainable
layer), have no optimizer state (no Adam moments: the train state shrinks accordingly), are left bit-identical by
every step, and are not in the logged `grad_norm` or in gradient clipping. They are still saved, checkpointed
and exported with the model. Dropout and drop path act in the frozen layers as configured
(`model.drop_path_rate`; 0 gives the fixed features of a classic linear probe).
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

from flax import nnx

from spectralgpt_jax.train import optim
from spectralgpt_jax.train.config_checks import ConfigError

FIELD = "config.optimizer.freeze"


def parse(text: str) -> tuple[str, ...]:
  """'encoder, decoder/blocks/0' -> ('encoder', 'decoder/blocks/0'); '' -> (): nothing frozen."""
  patterns = tuple(p.strip() for p in (text or "").split(",") if p.strip())
  for p in patterns:
    if any(c.isspace() for c in p):      # no parameter name has any: a pattern broken across a line
      raise ConfigError(f"{FIELD}={text!r}: {p!r} contains whitespace; parameter names have none")
    try:
      re.compile(p)
    except re.error as e:
      raise ConfigError(f"{FIELD}={text!r}: {p!r} is not a regular expression ({e})") from None
  return patterns


def is_frozen(name: str, patterns: Sequence[str]) -> bool:
  return any(re.match(f"(?:{p})(?:/|$)", name) for p in patterns)


def _path_name(path) -> str:
  return "/".join(str(k) for k in path)


def trainable(patterns: Sequence[str]):
  """The NNX filter of the parameters that train (all of them when nothing is frozen)."""
  if not patterns:
    return nnx.Param
  patterns = tuple(patterns)
  return nnx.All(nnx.Param, lambda path, _: not is_frozen(_path_name(path), patterns))


def trained_layers(names: Iterable[str], patterns: Sequence[str], depth: int) -> list[bool] | None:
  """Per layer id (`optim.layer_id`: embeddings, blocks, the rest) whether it has a trained parameter, for the FLOP
  count of a step (`models.flops.train_step_flops`); None when nothing is frozen."""
  if not patterns:
    return None
  trained = [False] * (depth + 2)
  for name in names:
    if not is_frozen(name, patterns):
      trained[optim.layer_id(name, depth)] = True
  return trained


def check(patterns: Sequence[str], names: Iterable[str]) -> tuple[list[str], list[str]]:
  """(frozen names, trainable names) of a model's parameters; a pattern that matches none of them, or freezing all
  of them, is a ConfigError naming the field."""
  names = list(names)
  if not patterns:
    return [], names
  for p in patterns:
    if not any(is_frozen(n, [p]) for n in names):
      tops = sorted({n.split("/")[0] for n in names})
      raise ConfigError(f"{FIELD}: {p!r} matches no parameter of the model (its parameters start with "
                        f"{', '.join(tops)}; e.g. encoder/blocks/0/attn/q/kernel)")
  frozen = [n for n in names if is_frozen(n, patterns)]
  if len(frozen) == len(names):
    raise ConfigError(f"{FIELD}={','.join(patterns)!r} freezes every parameter of the model: nothing would train")
  return frozen, [n for n in names if n not in set(frozen)]
