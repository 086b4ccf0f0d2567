"""Writes dicts of numpy arrays in torch's two `torch.save` formats, without torch, for the loader tests.

- zip (torch ≥ 1.6): <root>/data.pkl (protocol 2; each tensor reduces to torch._utils._rebuild_tensor_v2 over a
  persistent id ('storage', torch.<T>Storage, key, 'cpu', numel)), <root>/data/<key> raw little-endian bytes,
  <root>/byteorder, <root>/version.
- legacy (torch < 1.6): pickles of the magic number, protocol 1001, sys info, the object (persistent ids carry a
  sixth field, the view metadata None), the sorted storage keys; then per key an int64 little-endian element count
  and the raw little-endian elements.

torch's globals are written as GLOBAL opcodes by name, so torch need not be importable.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

_STORAGE_NAMES = {
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}


class _Global:
    """A module-level name written by reference (GLOBAL opcode)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle's save_reduce requires a callable; this one is only ever written
        raise TypeError(f"{self.module}.{self.name} is a stand-in and cannot be called")


class _Tensor:
    def __init__(self, key: str, array: np.ndarray):
        self.key = key
        self.array = np.array(array, order="C", copy=True)  # (ascontiguousarray would make a 0-d array 1-d)
        self.storage = _StorageRef(key, self.array)


class _StorageRef:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler: `save` can be overridden
    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
            return
        super().save(obj, save_persistent_id)

    def persistent_id(self, obj):
        if not isinstance(obj, _StorageRef):
            return None
        storage_type = _Global("torch", _STORAGE_NAMES[obj.array.dtype])
        pid = ("storage", storage_type, obj.key, "cpu", obj.array.size)
        return pid + (None,) if self.legacy else pid

    def reducer_override(self, obj):
        if not isinstance(obj, _Tensor):
            return NotImplemented
        a = obj.array
        stride = tuple(s // a.itemsize for s in a.strides)
        args = (obj.storage, 0, tuple(a.shape), stride, False, OrderedDict())
        return _Global("torch._utils", "_rebuild_tensor_v2"), args


def _wrap(state: Mapping[str, np.ndarray], legacy: bool) -> tuple[OrderedDict, list[_Tensor]]:
    tensors = []
    wrapped = OrderedDict()
    for i, (name, value) in enumerate(state.items()):
        key = str(140000000 + 16 * i) if legacy else str(i)  # legacy keys were storage addresses
        tensors.append(_Tensor(key, np.asarray(value)))
        wrapped[name] = tensors[-1]
    return wrapped, tensors


def _little_endian_bytes(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes()


def save_zip(state: Mapping[str, np.ndarray], path, root: str = "archive") -> None:
    wrapped, tensors = _wrap(state, legacy=False)
    buf = io.BytesIO()
    _TorchPickler(buf, legacy=False).dump(wrapped)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/data.pkl", buf.getvalue())
        z.writestr(f"{root}/byteorder", "little")
        for t in tensors:
            z.writestr(f"{root}/data/{t.key}", _little_endian_bytes(t.array))
        z.writestr(f"{root}/version", "3\n")


def save_legacy(state: Mapping[str, np.ndarray], path) -> None:
    wrapped, tensors = _wrap(state, legacy=True)
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
        pickle.dump(sys_info, f, protocol=2)
        _TorchPickler(f, legacy=True).dump(wrapped)
        keys = sorted(t.key for t in tensors)
        pickle.dump(keys, f, protocol=2)
        by_key = {t.key: t for t in tensors}
        for key in keys:
            a = by_key[key].array
            f.write(int(a.size).to_bytes(8, "little", signed=True))
            f.write(_little_endian_bytes(a))
