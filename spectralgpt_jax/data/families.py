"""Dataset names that are another release of a dataset the data layer already knows.

BigEarthNet v2.0 (reBEN, `bigearthnet_v2`) has v1's element schema, classes and recipe (normalisation, 10 %
subset, keys, eps), so it joins every per-dataset table as a copy of the `bigearthnet` row instead of a second
hand-written one that could drift. Only what really differs (the tfds builder) is keyed by the name itself.

No imports: the grain transforms, the band tables and the pipelines all read this.
"""

from __future__ import annotations

ALIASES = {"bigearthnet_v2": "bigearthnet"}


def family(name: str) -> str:
  """The dataset whose recipe `name` follows (itself for every dataset that is no alias)."""
  return ALIASES.get(name, name)


def with_aliases(table: dict) -> dict:
  """`table` plus a row for each alias whose base dataset has one (the same value)."""
  return {**table, **{alias: table[base] for alias, base in ALIASES.items() if base in table}}
