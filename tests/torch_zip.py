"""Writes torch-zip `.pth` files without torch, for tests of the checkpoint reader (mutated or malicious files).

Emits the same pickle opcodes `torch.save` does for a dict of tensors: `_rebuild_tensor_v2(storage, offset, size,
stride, requires_grad, OrderedDict())` with storages as persistent ids and raw little-endian data files.
"""
import pickle
import struct
import zipfile

import numpy as np

_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage", np.dtype(np.float64): "DoubleStorage"}


def _unicode(s: str) -> bytes:
  b = s.encode()
  return pickle.BINUNICODE + struct.pack("<I", len(b)) + b


def _int(i: int) -> bytes:
  return pickle.BININT + struct.pack("<i", i)


def _tuple(items) -> bytes:
  return pickle.MARK + b"".join(_int(i) for i in items) + pickle.TUPLE


def _tensor(index: int, array: np.ndarray) -> bytes:
  strides = [s // array.itemsize for s in array.strides] if array.ndim else []
  storage_id = (pickle.MARK + _unicode("storage") + pickle.GLOBAL + f"torch\n{_STORAGE[array.dtype]}\n".encode()
                + _unicode(str(index)) + _unicode("cpu") + _int(array.size) + pickle.TUPLE + pickle.BINPERSID)
  return (pickle.GLOBAL + b"torch._utils\n_rebuild_tensor_v2\n" + pickle.MARK + storage_id + _int(0)
          + _tuple(array.shape) + _tuple(strides) + pickle.NEWFALSE
          + pickle.GLOBAL + b"collections\nOrderedDict\n" + pickle.EMPTY_TUPLE + pickle.REDUCE
          + pickle.TUPLE + pickle.REDUCE)


def state_dict_pickle(state_dict: dict, wrap_model: bool = True) -> tuple[bytes, list[np.ndarray]]:
  arrays = [np.ascontiguousarray(v) for v in state_dict.values()]
  body = pickle.EMPTY_DICT + pickle.MARK
  for i, (key, array) in enumerate(zip(state_dict, arrays)):
    body += _unicode(key) + _tensor(i, array)
  body += pickle.SETITEMS
  if wrap_model:
    body = pickle.EMPTY_DICT + _unicode("model") + body + pickle.SETITEM
  return pickle.PROTO + b"\x02" + body + pickle.STOP, arrays


def write_pth(path, state_dict: dict, *, wrap_model: bool = True, data_pkl: bytes | None = None,
              drop_storage: int | None = None) -> None:
  pkl, arrays = state_dict_pickle(state_dict, wrap_model)
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", data_pkl if data_pkl is not None else pkl)
    z.writestr("archive/byteorder", "little")
    for i, array in enumerate(arrays):
      if i != drop_storage:
        z.writestr(f"archive/data/{i}", array.astype(array.dtype.newbyteorder("<")).tobytes())
