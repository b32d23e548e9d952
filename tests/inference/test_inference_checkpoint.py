"""`checkpoint.load` on a run directory without export/ (an interrupted run): model, metadata and weights."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tasks"))
import tasks_testlib as tl  # noqa: E402

from spectralgpt_jax.inference import checkpoint as ckpt_lib  # noqa: E402
from spectralgpt_jax.interop.keymap import param_paths  # noqa: E402
from spectralgpt_jax.train import checkpointing, loop  # noqa: E402


def test_run_directory_without_export(tmp_path):
  workdir = str(tmp_path / "run")
  loop.run(tl.tiny("segmentation", total_steps=2, checkpoint_every=2, eval_every=0, export=False), workdir)
  assert not os.path.exists(os.path.join(workdir, "export"))
  loaded = ckpt_lib.load(workdir)
  assert loaded.task == "segmentation" and loaded.cfg.img_size == 32
  assert loaded.class_names == loaded.metadata["class_names"] and len(loaded.class_names) == loaded.cfg.num_classes
  assert len(loaded.input_bands) == 10 and len(loaded.model_bands) == 12       # SegMunich's ten bands on disk
  saved, _ = checkpointing.load_model_params(workdir)
  model = {"/".join(map(str, p)): np.asarray(v[...]) for p, v in param_paths(loaded.model)}
  assert set(model) == set(saved)
  for name, value in saved.items():
    np.testing.assert_array_equal(model[name], value, err_msg=name)
