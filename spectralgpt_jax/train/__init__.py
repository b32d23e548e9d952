"""The pretraining system: `loop.run(config, workdir)`; see docs/training.md."""
