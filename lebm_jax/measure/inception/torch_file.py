"""Reading `torch.save` files without torch: both serialisation formats, through a whitelisting unpickler.

- zip (torch ≥ 1.6): <root>/data.pkl plus one raw record <root>/data/<key> per storage;
- legacy (torch < 1.6, the format of pytorch-fid's released weights): pickles of magic number, protocol, sys info,
  the object and the storage keys, then the storages' raw bytes.

Only tensors, storages and (ordered) dicts are unpickled; tensors become numpy arrays (`read_torch_file`).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_TORCH_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "UntypedStorage": np.dtype(np.uint8),
}


class _StorageType:
    """Stands for torch.<Name>Storage in a pickle: only its element type matters."""

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype


class _Storage:
    """A flat storage: `data` (1-D, native byte order) is filled when its bytes have been read."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: np.ndarray | None = None


class _StorageView:
    """Legacy-format view of elements [offset, offset + numel) of a root storage."""

    def __init__(self, root: _Storage, offset: int, numel: int):
        self.root, self.offset, self.numel = root, offset, numel
        self.dtype = root.dtype

    @property
    def data(self) -> np.ndarray | None:
        return None if self.root.data is None else self.root.data[self.offset : self.offset + self.numel]


class _TensorRef:
    """A tensor to build once storages are read: elements of `storage` at offset + Σ index · stride."""

    def __init__(self, storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def materialise(self) -> np.ndarray:
        flat = self.storage.data
        if flat is None:
            raise ValueError("a tensor refers to a storage whose bytes are not in the file")
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if self.offset < 0 or last >= flat.size or any(s < 0 for s in self.stride):
            raise ValueError(
                f"tensor of size {self.size}, stride {self.stride}, offset {self.offset} does not fit its storage of "
                f"{flat.size} elements (corrupt file?)"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], shape=self.size, strides=[s * flat.itemsize for s in self.stride]
        )
        return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """torch._utils._rebuild_tensor / _rebuild_tensor_v2 (requires_grad, hooks and metadata do not matter)."""
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    """torch._utils._rebuild_parameter(data, requires_grad, backward_hooks): a Parameter is its data here."""
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch checkpoint's object graph, allowing only tensors, storages and (ordered) dicts."""

    def __init__(self, file: BinaryIO, load_storage: Callable[[tuple], Any]):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only tensors and dicts of tensors can be read"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and _ascii(pid[0]) == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        return self._load_storage(pid[1:])


def _ascii(value: Any) -> Any:
    return value.decode("ascii") if isinstance(value, bytes) else value


def _storage_type(value: Any) -> _StorageType:
    if not isinstance(value, _StorageType):
        raise pickle.UnpicklingError(f"storage type {value!r} is not a torch storage class")
    return value


def _materialise(obj: Any) -> Any:
    """Replaces every _TensorRef in nested dicts, lists and tuples by its numpy array."""
    if isinstance(obj, _TensorRef):
        return obj.materialise()
    if isinstance(obj, dict):
        for k, v in obj.items():
            obj[k] = _materialise(v)
        return obj
    if isinstance(obj, list):
        return [_materialise(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v) for v in obj)
    return obj


def _read_zip(path: Path) -> Any:
    """torch ≥ 1.6 `torch.save`: <root>/data.pkl plus one raw record <root>/data/<key> per storage."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: a torch zip checkpoint has one <root>/data.pkl, found {pickles}")
        root = pickles[0].split("/")[0]
        names = set(archive.namelist())
        byteorder = "little"
        if f"{root}/byteorder" in names:
            byteorder = archive.read(f"{root}/byteorder").decode("ascii").strip()
        storages: dict[str, _Storage] = {}

        def load_storage(fields: tuple) -> _Storage:
            storage_type, key, _location, numel = fields[:4]
            key = str(_ascii(key))
            if key not in storages:
                dtype = _storage_type(storage_type).dtype
                raw = archive.read(f"{root}/data/{key}")
                numel = int(numel)
                if len(raw) < numel * dtype.itemsize:
                    raise ValueError(f"{path}: storage {key} has {len(raw)} bytes, expected {numel * dtype.itemsize}")
                storage = _Storage(key, dtype, numel)
                data = np.frombuffer(raw, dtype.newbyteorder("<" if byteorder == "little" else ">"), count=numel)
                storage.data = data.astype(dtype)  # native byte order, writable copy
                storages[key] = storage
            return storages[key]

        with archive.open(pickles[0]) as f:
            obj = _TorchUnpickler(f, load_storage).load()
    return _materialise(obj)


def _read_legacy(path: Path) -> Any:
    """torch < 1.6 `torch.save`: pickles of magic number, protocol, sys info, the object, the sorted storage keys;
    then each storage as an 8-byte little-endian element count followed by its raw little-endian elements."""
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except Exception as err:
            raise ValueError(f"{path} is neither a torch zip checkpoint nor a legacy torch file ({err})") from err
        if magic != _TORCH_LEGACY_MAGIC:
            raise ValueError(f"{path} is neither a torch zip checkpoint nor a legacy torch file (bad magic number)")
        protocol = pickle.load(f)
        if protocol != _TORCH_LEGACY_PROTOCOL:
            raise ValueError(f"{path}: unsupported legacy torch protocol version {protocol!r}")
        sys_info = pickle.load(f)
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise ValueError(f"{path} was written on a big-endian machine, which is not supported")
        roots: dict[str, _Storage] = {}
        views: dict[str, _StorageView] = {}

        def load_storage(fields: tuple) -> Any:
            storage_type, key, _location, numel, view = fields
            key = str(_ascii(key))
            if key not in roots:
                roots[key] = _Storage(key, _storage_type(storage_type).dtype, int(numel))
            if view is None:
                return roots[key]
            view_key, offset, view_numel = view
            view_key = str(_ascii(view_key))
            if view_key not in views:
                views[view_key] = _StorageView(roots[key], int(offset), int(view_numel))
            return views[view_key]

        obj = _TorchUnpickler(f, load_storage).load()
        keys = [str(_ascii(k)) for k in pickle.load(f)]
        for key in keys:
            if key not in roots:
                raise ValueError(f"{path}: storage {key} is listed but no tensor uses it")
            storage = roots[key]
            header = f.read(8)
            if len(header) != 8:
                raise ValueError(f"{path}: file ends before storage {key}")
            numel = int.from_bytes(header, "little", signed=True)
            raw = f.read(numel * storage.dtype.itemsize)
            if numel != storage.numel or len(raw) != numel * storage.dtype.itemsize:
                raise ValueError(
                    f"{path}: storage {key} is truncated or has {numel} elements, expected {storage.numel}"
                )
            storage.data = np.frombuffer(raw, storage.dtype.newbyteorder("<")).astype(storage.dtype)
    return _materialise(obj)


def read_torch_file(path: str | os.PathLike) -> Any:
    """Reads a `torch.save` file (zip or legacy format) without torch; tensors become numpy arrays.

    Only tensors, storages and (ordered) dicts are unpickled; any other global raises pickle.UnpicklingError.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    return _read_legacy(path)

