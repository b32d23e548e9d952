"""Scene-scale inference: inputs, tiling, writers, commands."""
