"""benchmarks/finetune_step.py + step_timing.py: the real train step of a task recipe, timed, as one JSON record with
`step_s_median` (issue #9's contract), and `--freeze` counted in its FLOPs. Tiny models: no timing is asserted."""
from __future__ import annotations

import os
import sys

from spectralgpt_jax import tasks
from spectralgpt_jax.models import flops

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import finetune_step  # noqa: E402
import input_pipeline  # noqa: E402
import step_timing  # noqa: E402

KEYS = {"mesh", "steps", "step_s_median", "step_s_min", "img_per_s", "tokens_per_s", "model_tflops_per_s",
        "compile_s", "temp_mb", "peak_rss_mb", "gflops_per_img", "achieved_gflops_per_s", "final_loss", "device",
        "attention_impl", "jax", "flax", "runtime"}


def test_finetune_step_record_and_frozen_encoder_flops():
  config = finetune_step.recipe("eurosat", "B", "float32")
  config.model.update(dict(img_size=32, embed_dim=32, depth=2, num_heads=2))
  config.data.image_size = 32
  task = tasks.get(config)
  model_cfg = task.model_config()
  batch = finetune_step.example_batch(task, model_cfg, 8)
  records = {}
  for freeze in ((), ("encoder",)):
    records[freeze] = step_timing.time_step(task, model_cfg, config.optimizer, batch, mesh_text="1,-1,1",
                                            num_steps=1, freeze=freeze)
  full, probe = records[()], records[("encoder",)]
  assert KEYS <= set(full) and full["step_s_median"] > 0 and full["mesh"] == {"data": 1, "fsdp": 8, "model": 1}
  assert full["gflops_per_img"] == round(flops.train_step_flops(model_cfg) / 1e9, 2)
  head = flops.layer_forward_flops(model_cfg)[-1]
  assert probe["gflops_per_img"] == round((flops.forward_flops(model_cfg) + 2 * head) / 1e9, 2)
  assert probe["gflops_per_img"] < full["gflops_per_img"] / 2


def test_input_pipeline_benchmark_runs_the_training_pipelines():
  """benchmarks/input_pipeline.py builds each fine-tuning dataset's training pipeline as training does (mixup /
  cutmix for EuroSAT through pipeline.finetune_batch_ops): one record per dataset, a positive rate."""
  for name in ("eurosat", "oscd"):
    record = input_pipeline.run(name, workers=0, batch=4, batches=1, warmup=1)
    assert record["dataset"] == name and record["examples_per_s"] > 0 and record["image_size"] == 128
