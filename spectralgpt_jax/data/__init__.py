"""Sentinel-2 data layer: band registry, dataset readers, TF-free tfds builders, grain pipelines, demo data.

Submodules are imported explicitly (`from spectralgpt_jax.data import pipeline`); importing this package stays
cheap and JAX-free because grain worker processes import it to unpickle transforms.
"""

import multiprocessing as _mp
import os as _os

# In a grain worker process (a multiprocessing child), keep JAX off the accelerators should anything import it:
# each worker would otherwise grab GPU memory (google/grain#820).
if _mp.parent_process() is not None:
  _os.environ.setdefault("JAX_PLATFORMS", "cpu")
  _os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
