"""A pickle-free-of-code reader for PyTorch `.pth` files (the zip format of torch >= 1.6), without torch.

`torch.save` writes a zip holding `<name>/data.pkl` (a pickle of containers whose tensors reference storages by
persistent id) and one raw little-endian file per storage under `<name>/data/`. We unpickle `data.pkl` with an
allow-list `find_class`, like `torch.load(weights_only=True)`: only tensor rebuilding, storage dtypes, ordered dicts,
`argparse.Namespace` (held as a plain attribute bag) and numpy scalars are constructible. Any other global — the way
a malicious pickle runs code — is refused with `UnsafeCheckpointError` naming the file and the global.
"""
from __future__ import annotations

import collections
import io
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or does not fit the model; the message names the file and keys."""


class UnsafeCheckpointError(CheckpointError):
  """The pickle asks to construct something outside the allow-list (potential code execution)."""


class Namespace(types.SimpleNamespace):
  """Stand-in for `argparse.Namespace` (the reference stores its CLI args in checkpoints)."""


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}


class _StorageType:
  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *unused) -> np.ndarray:
  size, stride = tuple(size), tuple(stride)
  if not all(size):
    return np.zeros(size, storage.dtype)
  last = offset + sum((s - 1) * st for s, st in zip(size, stride))
  if offset < 0 or last >= storage.size:
    raise CheckpointError(f"tensor of size {size} stride {stride} at offset {offset} overruns its storage "
                          f"of {storage.size} elements (truncated or corrupt file)")
  item = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], size, [s * item for s in stride], writeable=False)
  return np.array(view)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *unused):
  return data


def _numpy_scalar(dtype, data=None):
  return np.frombuffer(data, dtype=dtype)[0] if data is not None else dtype.type()


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("argparse", "Namespace"): Namespace,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("torch", "device"): str,
}


class _SafeUnpickler(pickle.Unpickler):

  def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: str, byteorder: str):
    super().__init__(io.BytesIO(data))
    self._archive, self._prefix, self._path, self._byteorder = archive, prefix, path, byteorder
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str):
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    raise UnsafeCheckpointError(
        f"{self._path}: refusing to load global '{module}.{name}': the checkpoint's pickle asks to construct an "
        "object outside the allow-list (tensors, containers, argparse.Namespace), which could execute code. "
        "Only load checkpoints from sources you trust, and convert them with a trusted torch if you must.")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
      raise CheckpointError(f"{self._path}: unsupported persistent id {pid!r} in data.pkl")
    storage_type, key = pid[1], str(pid[2])
    dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else np.dtype(np.uint8)
    if key not in self._storages:
      name = f"{self._prefix}/data/{key}"
      try:
        raw = self._archive.read(name)
      except KeyError:
        raise CheckpointError(f"{self._path}: storage '{name}' is missing from the archive (truncated file?)")
      if len(raw) % dtype.itemsize:
        raise CheckpointError(f"{self._path}: storage '{name}' has {len(raw)} bytes, not a multiple of {dtype}")
      array = np.frombuffer(raw, dtype=dtype.newbyteorder("<" if self._byteorder == "little" else ">"))
      self._storages[key] = array.astype(dtype) if self._byteorder != "little" else array
    return self._storages[key]


def load_pth(path: str | Path) -> Any:
  """Reads a torch-zip `.pth` into plain Python containers with numpy arrays in place of tensors."""
  path = str(path)
  if not Path(path).is_file():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  if not zipfile.is_zipfile(path):
    return _load_legacy_with_torch(path)
  try:
    with zipfile.ZipFile(path) as archive:
      pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
      if len(pickles) != 1:
        raise CheckpointError(f"{path}: expected one data.pkl in the archive, found {pickles}")
      prefix = pickles[0].rsplit("/", 1)[0] if "/" in pickles[0] else ""
      names = set(archive.namelist())
      byteorder = "little"
      if f"{prefix}/byteorder" in names:
        byteorder = archive.read(f"{prefix}/byteorder").decode().strip()
      return _SafeUnpickler(archive.read(pickles[0]), archive, prefix, path, byteorder).load()
  except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, OSError) as e:
    raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {e})") from e


def _load_legacy_with_torch(path: str) -> Any:
  """Pre-1.6 (non-zip) torch files: read with torch's own restricted unpickler (`weights_only=True`), when the
  optional `torch` extra is installed. Tensors become numpy arrays, `argparse.Namespace` our attribute bag."""
  try:
    import torch
  except ImportError:
    raise CheckpointError(
        f"{path}: not a torch zip checkpoint (torch >= 1.6 format). Legacy torch files are read only with the "
        "optional torch extra (pip install 'spectralgpt_jax[torch]'), through torch.load(weights_only=True).") from None
  import argparse
  try:
    with torch.serialization.safe_globals([argparse.Namespace]):
      checkpoint = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise UnsafeCheckpointError(f"{path}: torch.load(weights_only=True) refused the file: {e}") from e
  except Exception as e:  # torch raises RuntimeError and friends for corrupt files
    raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e

  def to_numpy(obj):
    if isinstance(obj, torch.Tensor):
      return obj.detach().cpu().numpy()
    if isinstance(obj, argparse.Namespace):
      return Namespace(**vars(obj))
    if isinstance(obj, dict):
      return type(obj)((k, to_numpy(v)) for k, v in obj.items()) if isinstance(obj, collections.OrderedDict) \
          else {k: to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
      return type(obj)(to_numpy(v) for v in obj)
    return obj

  return to_numpy(checkpoint)


def state_dict_of(checkpoint: Any, path: str) -> dict[str, np.ndarray]:
  """The model state dict of a loaded checkpoint: under 'model' (reference layout), 'state_dict', or the top level;
  a DataParallel 'module.' prefix (the OSCD files) is stripped."""
  sd = checkpoint
  if isinstance(checkpoint, dict):
    for key in ("model", "state_dict"):
      if key in checkpoint and isinstance(checkpoint[key], dict):
        sd = checkpoint[key]
        break
  if not isinstance(sd, dict) or not sd or not all(isinstance(v, np.ndarray) for v in sd.values()):
    found = list(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise CheckpointError(f"{path}: no state dict of tensors found (top-level entries: {found})")
  if all(k.startswith("module.") for k in sd):
    sd = {k[len("module."):]: v for k, v in sd.items()}
  return dict(sd)
