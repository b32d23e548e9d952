"""One rule table for filling any model from another model's parameters (MAE, classifier, seg, cd, bare encoder).

`transfer(source, target, cfg, ...)` compares flat parameter names ("encoder/blocks/0/attn/q/kernel", our layout)
of a source (a converted `.pth`, an export, a training state) with the shapes of the model to fill, and decides
every name with the first matching rule of `TARGET_RULES` (names the model has) or `SOURCE_RULES` (names only the
source has). Missing, unexpected and mismatched names are errors; the other outcomes are the expected differences
between the stages of the reference recipe (a fresh task head, an unused MAE decoder, position embeddings at another
image size) and are listed in the `TransferReport`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from spectralgpt_jax.interop.torch_pickle import CheckpointError
from spectralgpt_jax.models.config import DENSE_KINDS, ModelConfig
from spectralgpt_jax.models.dense import HEAD_ROOTS
from spectralgpt_jax.models.patch_embed import resize_spatial_pos_embed

UNMAPPED = "unmapped/"   # prefix of source entries that name no parameter of ours (raw reference keys)
SPATIAL_POS = ("encoder/pos_embed/spatial", "decoder/pos_embed/spatial")
SEPARABLE_POS = ("encoder/pos_embed/spatial", "encoder/pos_embed/spectral")
JOINT_POS = "encoder/pos_embed/embedding"
ERRORS = ("missing", "unexpected", "mismatched")
OUTCOMES = ("loaded", "missing", "unexpected", "mismatched", "initialised", "interpolated", "ignored")


class CheckpointMismatchError(CheckpointError):
  """Missing, unexpected or mis-shaped parameters under strict loading; `.report` has the details."""

  def __init__(self, message: str, report: "TransferReport"):
    super().__init__(message)
    self.report = report


def model_kind(cfg_kind: str) -> str:
  """The kind a source is compared with: seg and cd share every parameter name, so they are one "dense" kind."""
  return "dense" if cfg_kind in DENSE_KINDS else cfg_kind


def infer_kind(names: Iterable[str]) -> str:
  """The kind of model a set of flat names comes from: mae | vit | dense (seg or cd) | encoder | unknown."""
  roots = {n.split("/")[0] for n in names if not n.startswith(UNMAPPED)}
  if "decoder" in roots:
    return "mae"
  if "head" in roots:
    return "vit"
  if roots & set(HEAD_ROOTS):
    return "dense"
  return "encoder" if "encoder" in roots else "unknown"


def is_task_head(name: str) -> bool:
  """Classifier head or seg/cd merge/neck/FPN/classifier: the task-specific part a fine-tune starts afresh."""
  root = name.split("/")[0]
  return root == "head" or root in HEAD_ROOTS


@dataclasses.dataclass(frozen=True)
class Case:
  """What a rule sees about one name. A shape is None where that side lacks the name."""
  name: str
  source_shape: tuple | None
  target_shape: tuple | None
  source_kind: str
  target_kind: str
  cfg: ModelConfig


@dataclasses.dataclass(frozen=True)
class Rule:
  name: str
  outcome: str
  applies: Callable[[Case], bool]
  why: str


def _square(positions: int) -> bool:
  return int(round(positions ** 0.5)) ** 2 == positions


def _resizable_pos_embed(c: Case) -> bool:
  s, t = c.source_shape, c.target_shape
  return (c.name in SPATIAL_POS and s is not None and len(s) == len(t) == 3 and s[0] == t[0] == 1
          and s[2] == t[2] and _square(s[1]) and _square(t[1]))


TARGET_RULES: tuple[Rule, ...] = (
    Rule("same_shape", "loaded", lambda c: c.source_shape == c.target_shape, "present with the same shape"),
    Rule("pos_embed_reinit", "initialised",
         lambda c: _resizable_pos_embed(c) and c.cfg.pos_embed_resize == "reinit",
         "spatial position embedding of another image size, re-initialised (the reference's resume at 128 px)"),
    Rule("pos_embed_interpolate", "interpolated",
         lambda c: _resizable_pos_embed(c) and c.cfg.pos_embed_resize == "interpolate",
         "spatial position embedding of another image size, bicubic-resized (pos_embed_resize='interpolate')"),
    Rule("joint_pos_embed_zero", "initialised", lambda c: c.name == JOINT_POS and c.source_shape is None,
         "the reference classifier's joint pos_embed starts at zero"),
    Rule("fresh_head_reshaped", "initialised",
         lambda c: is_task_head(c.name) and c.source_shape is not None,
         "task head of another shape (e.g. class count), re-initialised as the reference deletes it"),
    Rule("fresh_head", "initialised",
         lambda c: is_task_head(c.name) and c.source_kind != c.target_kind,
         "task head absent from a source of another kind"),
    Rule("missing", "missing", lambda c: c.source_shape is None, "the source lacks it"),
    Rule("mismatched", "mismatched", lambda c: True, "the source has another shape"),
)

SOURCE_RULES: tuple[Rule, ...] = (
    Rule("unmapped_key", "unexpected", lambda c: c.name.startswith(UNMAPPED),
         "a reference key that names no parameter of our models"),
    Rule("other_models_part", "ignored",
         lambda c: not c.name.startswith("encoder/") and c.source_kind != c.target_kind,
         "part of another kind of model (MAE decoder and mask token, another task's head)"),
    Rule("separable_pos_embed_unused", "ignored",
         lambda c: c.name in SEPARABLE_POS and c.cfg.reference_pos_embed,
         "the target uses the reference's joint pos_embed instead"),
    Rule("unexpected", "unexpected", lambda c: True, "the target has no such parameter (e.g. a deeper source)"),
)


def _first(rules: tuple[Rule, ...], case: Case) -> Rule:
  return next(rule for rule in rules if rule.applies(case))


def _group_key(name: str) -> str:
  """Names sharing a prefix up to their first index (a block, a branch) form one group: "encoder/blocks/2/*"."""
  sep = "/" if "/" in name else "."
  parts = name.split(sep)
  for i, part in enumerate(parts[:-1]):
    if part.isdigit():
      return sep.join(parts[:i + 1] + ["*"])
  return sep.join(parts[:-1] + ["*"]) if len(parts) > 1 else name


@dataclasses.dataclass
class TransferReport:
  source: str
  arch: str
  config: ModelConfig
  loaded: list[str] = dataclasses.field(default_factory=list)
  missing: list[str] = dataclasses.field(default_factory=list)        # target names the source lacks (error)
  unexpected: list[str] = dataclasses.field(default_factory=list)     # source names the target lacks (error)
  mismatched: list[str] = dataclasses.field(default_factory=list)     # same name, another shape (error)
  initialised: list[str] = dataclasses.field(default_factory=list)    # expected fresh: task head, resized pos-embeds
  interpolated: list[str] = dataclasses.field(default_factory=list)
  ignored: list[str] = dataclasses.field(default_factory=list)        # expected unused: decoder when fine-tuning
  checkpoint_args: dict[str, Any] = dataclasses.field(default_factory=dict)
  source_kind: str = ""
  shapes: dict[str, tuple] = dataclasses.field(default_factory=dict)  # name -> (source, target) where they differ
  rules: dict[str, str] = dataclasses.field(default_factory=dict)     # name -> deciding rule (non-loaded names)

  @property
  def ok(self) -> bool:
    return not (self.missing or self.unexpected or self.mismatched)

  def describe(self, name: str) -> str:
    if name not in self.shapes:
      return name
    source, target = self.shapes[name]
    return f"{name}: checkpoint {source} vs model {target}"

  def summary(self) -> str:
    parts = [f"{self.source} -> {self.arch}: {len(self.loaded)} tensors loaded"]
    for outcome in OUTCOMES[1:]:
      names = getattr(self, outcome)
      if names:
        more = f" ... ({len(names) - 12} more in .report)" if len(names) > 12 else ""
        parts.append(f"{outcome} ({len(names)}): " + ", ".join(self.describe(n) for n in names[:12]) + more)
    return "\n  ".join(parts)

  def _grouped(self, names: list[str], limit: int = 6) -> str:
    groups: dict[str, list[str]] = {}
    for name in names:
      groups.setdefault(_group_key(name), []).append(name)
    parts = [self.describe(members[0]) if len(members) == 1 else f"{key} ({len(members)} params)"
             for key, members in groups.items()]
    extra = len(parts) - limit
    more = [f"{extra} more group{'s' if extra > 1 else ''}"] if extra > 0 else []
    return ", ".join(parts[:limit] + more)

  def error_line(self) -> str:
    """One line naming every error, grouped per block so that a depth mismatch reads as a few groups."""
    if self.ok:
      return f"{self.source} fits {self.arch}: {len(self.loaded)} loaded"
    errors = [f"{len(getattr(self, k))} {k} ({self._grouped(getattr(self, k))})" for k in ERRORS if getattr(self, k)]
    return f"{self.source} does not fit {self.arch}: " + "; ".join(errors)

  def to_dict(self) -> dict[str, Any]:
    plain = lambda v: v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
    return {"source": self.source, "arch": self.arch, "config": self.config.to_dict(), "ok": self.ok,
            "source_kind": self.source_kind, **{k: list(getattr(self, k)) for k in OUTCOMES},
            "shapes": {k: [list(s), list(t)] for k, (s, t) in self.shapes.items()}, "rules": dict(self.rules),
            "checkpoint_args": {k: plain(v) for k, v in self.checkpoint_args.items()}}

  def renamed(self, name: Callable[[str], str], shape: Callable[[str, str, tuple], tuple]) -> "TransferReport":
    """The same report in another naming (e.g. reference keys); `shape(name, side, shape)` converts the layout of
    the "source" and "target" shapes."""
    lists = {k: [name(n) for n in getattr(self, k)] for k in OUTCOMES}
    shapes = {name(n): (shape(n, "source", s), shape(n, "target", t)) for n, (s, t) in self.shapes.items()}
    return dataclasses.replace(self, **lists, shapes=shapes, rules={name(n): r for n, r in self.rules.items()})


def _shape(value) -> tuple | None:
  return None if value is None else tuple(np.shape(value))


def transfer(source: Mapping[str, np.ndarray], target: Mapping[str, tuple[int, ...]], cfg: ModelConfig, *,
             source_name: str, arch: str, strict: bool = True,
             checkpoint_args: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], TransferReport]:
  """Decide every name of `source` (flat name -> array, our layout) and `target` (flat name -> shape of the model
  to fill) with the rule tables. Returns the values to assign (loaded or interpolated; every other parameter keeps
  its fresh initialisation) and the report. strict: a report with errors raises `CheckpointMismatchError` whose
  message is `report.error_line()`."""
  source_kind, target_kind = infer_kind(source), model_kind(cfg.kind)
  report = TransferReport(source=source_name, arch=arch, config=cfg, source_kind=source_kind,
                          checkpoint_args=dict(checkpoint_args or {}))
  values: dict[str, np.ndarray] = {}

  def decide(rules, name, source_shape, target_shape):
    rule = _first(rules, Case(name, source_shape, target_shape, source_kind, target_kind, cfg))
    getattr(report, rule.outcome).append(name)
    if rule.outcome != "loaded":
      report.rules[name] = rule.name
    if source_shape is not None and target_shape is not None and source_shape != target_shape:
      report.shapes[name] = (source_shape, target_shape)
    return rule.outcome

  for name, shape in target.items():
    outcome = decide(TARGET_RULES, name, _shape(source.get(name)), tuple(shape))
    if outcome == "loaded":
      values[name] = np.asarray(source[name])
    elif outcome == "interpolated":
      values[name] = resize_spatial_pos_embed(source[name], int(round(shape[1] ** 0.5)))
  for name in source:
    if name not in target:
      decide(SOURCE_RULES, name, _shape(source[name]), None)
  if strict and not report.ok:
    raise CheckpointMismatchError(report.error_line(), report)
  return values, report
