"""Shared by the test helpers: apply {"a.b.c": value} overrides to an ml_collections ConfigDict."""


def set_dotted(c, overrides: dict):
  for key, value in overrides.items():
    target = c
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return c
