"""The FID Inception-v3 in Flax: 2048-d pool3 features, as pytorch-fid and the original TTUR code compute them.

The network is pytorch-fid's `InceptionV3(output_blocks=[3], use_fid_inception=True)`: torchvision's Inception-v3
trunk up to Mixed_7c with the TF-graph quirks of the 2015-12-05 FID model (DESIGN.md §6):

- every conv is BasicConv2d: conv without bias, BatchNorm (eps 1e-3, running statistics), ReLU;
- Mixed_5b-d (A), Mixed_6b-e (C) and Mixed_7b (E_1) average-pool their pool branch 3×3, stride 1, pad 1 **without**
  counting the padding (count_include_pad=False); Mixed_7c (E_2) max-pools it instead;
- the stem max-pools 3×3 stride 2 without padding (ceil_mode False), as do Mixed_6a (B) and Mixed_7a (D);
- features are the mean over the final 8×8 map, (B, 2048).

Input convention. Our images x are NHWC in [-1, 1]; pytorch-fid takes NCHW u in [0, 1] and computes
`2 · bilinear_resize(u, 299) − 1`. Resizing is linear with weights summing to one, so that equals
`bilinear_resize(x, 299)` for u = (x + 1) / 2, which is what `preprocess` does (grey images are repeated to three
channels first). The resize is torch's `F.interpolate(mode='bilinear', align_corners=False)`: half-pixel centres,
two taps per axis, no antialiasing when downsampling (see `resize_bilinear`).

Weights are pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, read without torch (`read_torch_file` parses
both torch serialisation formats with a whitelisting unpickler). `load_fid_params` finds the file (argument,
$LEBM_JAX_INCEPTION_WEIGHTS, the cache) or downloads it once, and checks its SHA-256 against the prefix in its name.

Intermediate maps (e.g. Mixed_7c, (B, 8, 8, 2048) at 299) are available through flax's
`model.apply(params, x, capture_intermediates=True, mutable=["intermediates"])`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import re
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lebm_jax.data.files import CACHE_ENV, cache_dir

Array = jax.Array

INPUT_SIZE = 299
FEATURE_DIM = 2048
BATCH_NORM_EPS = 1e-3
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILE
WEIGHTS_ENV = "LEBM_JAX_INCEPTION_WEIGHTS"

DEFAULT_PRECISION = jax.lax.Precision.HIGHEST  # full float32 convs on GPU/TPU too (no TF32 / bf16 passes)


# ----------------------------------------------------------------------------------------------------------------
# Network


class FrozenBatchNorm(nn.Module):
    """Inference BatchNorm y = (x − mean) / √(var + eps) · scale + bias, running statistics held as parameters.

    Computed as x · a + (bias − mean · a) with a = scale / √(var + eps), as torch's CPU kernel does.
    """

    eps: float = BATCH_NORM_EPS

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        mean = self.param("mean", nn.initializers.zeros, (features,))
        var = self.param("var", nn.initializers.ones, (features,))
        a = scale * jax.lax.rsqrt(var + self.eps)
        return x * a + (bias - mean * a)


class BasicConv2d(nn.Module):
    """Conv (no bias, explicit symmetric padding as torch's `padding=`) → FrozenBatchNorm → ReLU."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: Array) -> Array:
        (ph, pw) = self.padding
        x = nn.Conv(
            self.features,
            self.kernel_size,
            strides=self.strides,
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            precision=self.precision,
            name="conv",
        )(x)
        return nn.relu(FrozenBatchNorm(name="bn")(x))


def avg_pool_3x3_exclude_pad(x: Array) -> Array:
    """3×3 stride-1 average pool with one pixel of padding, dividing by the number of real pixels in each window.

    torch's `F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)` (the TF graph's behaviour):
    a corner output averages 4 pixels, an edge output 6, an interior one 9.
    """
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3(x: Array, stride: int, pad: int) -> Array:
    """3×3 max pool; padding (if any) is −inf, as torch's; output floor((H + 2·pad − 3) / stride) + 1."""
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
    """Mixed_5b-d: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avgpool(exclude pad)→1×1; 224 + pool_features channels."""

    pool_features: int
    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b1 = conv(64, (1, 1), name="branch1x1")(x)
        b5 = conv(48, (1, 1), name="branch5x5_1")(x)
        b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = conv(self.pool_features, (1, 1), name="branch_pool")(avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a (grid reduction 35→17): 3×3/2 | 1×1→3×3→3×3/2 | maxpool 3×3/2; 384 + 96 + in channels."""

    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b3 = conv(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
        bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = conv(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, max_pool_3x3(x, 2, 0)], axis=-1)


# (kernel, padding) of the factorised 7×7 convolutions: a row (1×7) and a column (7×1), each keeping the size
_ROW_7 = {"kernel_size": (1, 7), "padding": (0, 3)}
_COL_7 = {"kernel_size": (7, 1), "padding": (3, 0)}


class InceptionC(nn.Module):
    """Mixed_6b-e: 1×1 | 1×1→1×7→7×1 | 1×1→7×1→1×7→7×1→1×7 | avgpool(exclude pad)→1×1; 768 channels."""

    channels_7x7: int
    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c7 = self.channels_7x7
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b1 = conv(192, (1, 1), name="branch1x1")(x)
        b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = conv(c7, **_ROW_7, name="branch7x7_2")(b7)
        b7 = conv(192, **_COL_7, name="branch7x7_3")(b7)
        bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = conv(c7, **_COL_7, name="branch7x7dbl_2")(bd)
        bd = conv(c7, **_ROW_7, name="branch7x7dbl_3")(bd)
        bd = conv(c7, **_COL_7, name="branch7x7dbl_4")(bd)
        bd = conv(192, **_ROW_7, name="branch7x7dbl_5")(bd)
        bp = conv(192, (1, 1), name="branch_pool")(avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a (grid reduction 17→8): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | maxpool 3×3/2; 320 + 192 + in channels."""

    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b3 = conv(192, (1, 1), name="branch3x3_1")(x)
        b3 = conv(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
        b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = conv(192, **_ROW_7, name="branch7x7x3_2")(b7)
        b7 = conv(192, **_COL_7, name="branch7x7x3_3")(b7)
        b7 = conv(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b/7c: 1×1 | 1×1→(1×3 ‖ 3×1) | 1×1→3×3→(1×3 ‖ 3×1) | pool→1×1; 320 + 768 + 768 + 192 = 2048 channels.

    `pool` is "avg" (exclude pad) for Mixed_7b (FIDInceptionE_1) and "max" for Mixed_7c (FIDInceptionE_2).
    """

    pool: str
    precision: Any = DEFAULT_PRECISION

    def __post_init__(self) -> None:
        if self.pool not in ("avg", "max"):
            raise ValueError(f"pool={self.pool!r} must be 'avg' or 'max'")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = functools.partial(BasicConv2d, precision=self.precision)
        row, col = {"kernel_size": (1, 3), "padding": (0, 1)}, {"kernel_size": (3, 1), "padding": (1, 0)}
        b1 = conv(320, (1, 1), name="branch1x1")(x)
        b3 = conv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([conv(384, **row, name="branch3x3_2a")(b3), conv(384, **col, name="branch3x3_2b")(b3)],
                             axis=-1)
        bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [conv(384, **row, name="branch3x3dbl_3a")(bd), conv(384, **col, name="branch3x3dbl_3b")(bd)], axis=-1
        )
        pooled = avg_pool_3x3_exclude_pad(x) if self.pool == "avg" else max_pool_3x3(x, 1, 1)
        bp = conv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's align_corners=False source taps for one axis: s = max((i + ½) · r − ½, 0) with r = n_in / n_out,
    i0 = ⌊s⌋, i1 = min(i0 + 1, n_in − 1), λ = s − i0; output i is (1 − λ) · x[i0] + λ · x[i1].

    Rounded as torch's float kernel: r in float32, then s from one fused multiply-add (r · (i + ½) − ½ rounded once
    to float32), λ in float32. These taps reproduce F.interpolate's weights exactly on x86 builds of torch.
    """
    ratio = np.float64(np.float32(n_in) / np.float32(n_out))
    s = (ratio * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)  # product exact in float64
    s = np.maximum(s, np.float32(0))
    i0 = np.minimum(np.floor(s).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = np.clip(s - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, i1, lam


def resize_bilinear(images: Array, size: int) -> Array:
    """(B, H, W, C) → (B, size, size, C) as torch's F.interpolate(mode='bilinear', align_corners=False).

    Two taps per axis from `bilinear_taps`, for up- and downsampling alike (no antialiasing filter), applied along
    W and then H, which is torch's association h0λ·(w0λ·x00 + w1λ·x01) + h1λ·(w0λ·x10 + w1λ·x11).
    `jax.image.resize(..., "bilinear", antialias=False)` computes the same map up to float32 rounding (a few
    1e-6 here); with its default antialias=True it low-pass filters when downsampling, which torch does not.
    """
    _, h, w, _ = images.shape
    if (h, w) == (size, size):
        return images  # torch's map is the identity here: s = i
    j0, j1, mu = bilinear_taps(w, size)
    x = images[:, :, j0, :] * (1 - mu)[:, None] + images[:, :, j1, :] * mu[:, None]  # (B, H, size, C)
    i0, i1, lam = bilinear_taps(h, size)
    return x[:, i0] * (1 - lam)[:, None, None] + x[:, i1] * lam[:, None, None]  # (B, size, size, C)


def preprocess(images: Array) -> Array:
    """Images (B, H, W, C ∈ {1, 3}) in [-1, 1] → Inception input (B, 299, 299, 3) float32 in [-1, 1].

    Equals pytorch-fid's `2 · interpolate(u, 299, bilinear) − 1` for its input u = (x + 1) / 2.
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (B, H, W, C) with C in (1, 3), got shape {images.shape}")
    x = resize_bilinear(jnp.asarray(images, jnp.float32), INPUT_SIZE)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    return x


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3: images (B, H, W, C) in [-1, 1] → pool3 features (B, 2048) float32.

    At 299×299: Conv2d_1a (149, 32) → 2a (147, 32) → 2b (147, 64) → maxpool (73) → 3b (73, 80) → 4a (71, 192)
    → maxpool (35) → Mixed_5b-d (35, 256/288/288) → 6a (17, 768) → 6b-e (17, 768) → 7a (8, 1280) → 7b, 7c (8, 2048)
    → mean over the 8×8 map. Parameter names follow the torch state dict (`Mixed_5b/branch1x1/conv/kernel` ↔
    `Mixed_5b.branch1x1.conv.weight`).
    """

    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, images: Array) -> Array:
        p = self.precision
        x = preprocess(images)  # (B, 299, 299, 3)
        x = BasicConv2d(32, (3, 3), strides=(2, 2), precision=p, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), precision=p, name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=(1, 1), precision=p, name="Conv2d_2b_3x3")(x)
        x = max_pool_3x3(x, 2, 0)
        x = BasicConv2d(80, (1, 1), precision=p, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), precision=p, name="Conv2d_4a_3x3")(x)
        x = max_pool_3x3(x, 2, 0)  # (B, 35, 35, 192)
        x = InceptionA(32, precision=p, name="Mixed_5b")(x)
        x = InceptionA(64, precision=p, name="Mixed_5c")(x)
        x = InceptionA(64, precision=p, name="Mixed_5d")(x)
        x = InceptionB(precision=p, name="Mixed_6a")(x)  # (B, 17, 17, 768)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, precision=p, name=name)(x)
        x = InceptionD(precision=p, name="Mixed_7a")(x)  # (B, 8, 8, 1280)
        x = InceptionE("avg", precision=p, name="Mixed_7b")(x)
        x = InceptionE("max", precision=p, name="Mixed_7c")(x)  # (B, 8, 8, 2048)
        return jnp.mean(x, axis=(1, 2))  # adaptive average pool to 1×1


# ----------------------------------------------------------------------------------------------------------------
# Reading torch checkpoint files without torch

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


# ----------------------------------------------------------------------------------------------------------------
# Parameters from the torch state dict

_BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_OPTIONAL_KEYS = re.compile(r"^fc\.(weight|bias)$|\.bn\.num_batches_tracked$")  # classifier head, BN counters


def _param_template() -> dict[tuple[str, ...], tuple[int, ...]]:
    shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))
    return {path: leaf.shape for path, leaf in traverse_util.flatten_dict(shapes["params"]).items()}


def _torch_name(path: tuple[str, ...]) -> str:
    *modules, layer, leaf = path
    torch_leaf = "weight" if layer == "conv" else _BN_NAMES[leaf]
    return ".".join([*modules, layer, torch_leaf])


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    if path[-2] == "conv":
        kh, kw, cin, cout = shape
        return (cout, cin, kh, kw)  # OIHW
    return tuple(shape)


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def fid_params_from_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The torch state dict of the FID Inception → {'params': ...} for FIDInceptionV3 (float32 numpy arrays).

    Conv weights (O, I, kh, kw) become flax kernels (kh, kw, I, O); BN weight, bias, running_mean, running_var
    become scale, bias, mean, var. `fc.*` and `*.num_batches_tracked` may be present and are ignored. Missing or
    unexpected tensors and wrong shapes raise one ValueError that names them all.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}")
    template = _param_template()
    expected = {_torch_name(path): path for path in template}
    missing = sorted(name for name in expected if name not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected and not _OPTIONAL_KEYS.search(str(k)))
    wrong = []
    flat = {}
    for name, path in expected.items():
        if name not in state_dict:
            continue
        value = np.asarray(state_dict[name])
        want = _torch_shape(path, template[path])
        if value.shape != want:
            wrong.append(f"{name} has shape {value.shape}, expected {want}")
            continue
        value = value.astype(np.float32)
        flat[path] = np.ascontiguousarray(value.transpose(2, 3, 1, 0)) if path[-2] == "conv" else value
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_listing(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) of the wrong shape: {_listing(wrong)}")
    if problems:
        raise ValueError("not the FID Inception-v3 state dict: " + "; ".join(problems))
    return {"params": traverse_util.unflatten_dict(flat)}


# ----------------------------------------------------------------------------------------------------------------
# Finding, fetching and checking the weight file

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def expected_sha256(path: str | os.PathLike, sha256: str | None = None) -> str | None:
    """The full `sha256` when given, else the hex prefix the file name carries (torch hub: name-<sha256[:8]>.pth)."""
    if sha256:
        return sha256.lower()
    match = _HASH_IN_NAME.search(Path(path).name)
    return match.group(1) if match else None


def check_sha256(path: str | os.PathLike, sha256: str | None = None) -> None:
    """Raises ValueError unless the file's SHA-256 starts with `expected_sha256(path, sha256)` (if there is one)."""
    expected = expected_sha256(path, sha256)
    if expected is None:
        return
    actual = sha256_of(path)
    if not actual.startswith(expected):
        raise ValueError(
            f"{path}: SHA-256 {actual} does not match the expected {expected}; the file is corrupt or not the FID "
            f"Inception weights. Delete it and fetch it again from {FID_WEIGHTS_URL}"
        )


def _missing_weights_message(path: Path, reason: str) -> str:
    return (
        f"FID Inception weights not found at {path} ({reason}). Download {FID_WEIGHTS_URL} and put it at {path}, "
        f"or set {WEIGHTS_ENV}=/path/to/{FID_WEIGHTS_FILE} (the cache directory is ${CACHE_ENV}, else the XDG cache)."
    )


def download_fid_weights(dest: Path, *, url: str = FID_WEIGHTS_URL, sha256: str | None = None) -> Path:
    """Fetches the weights to `dest` (temp file in the same folder, hash-checked, then renamed); progress on stderr.

    A failed download raises FileNotFoundError saying where to put the file by hand.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or 0)
                done, shown = 0, -1
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    done += len(chunk)
                    percent = 100 * done // total if total else -1
                    if percent != shown and percent % 10 == 0:
                        print(f"\rdownloading {url}: {done >> 20} MiB ({percent}%)", end="", file=sys.stderr)
                        shown = percent
                print(file=sys.stderr)
        except (urllib.error.URLError, OSError) as err:
            raise FileNotFoundError(_missing_weights_message(dest, f"download failed: {err}")) from err
        expected = expected_sha256(dest, sha256)  # the temp file's name carries no hash: take it from dest's
        if expected is not None:
            actual = sha256_of(tmp)
            if not actual.startswith(expected):
                raise ValueError(f"download of {url}: SHA-256 {actual} does not match the expected {expected}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def fid_weights_path(path: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Where the weights are: `path`, else $LEBM_JAX_INCEPTION_WEIGHTS, else cache_dir('weights')/FID_WEIGHTS_FILE,
    fetched there once if absent and `download` is on. A file that cannot be found raises FileNotFoundError."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(_missing_weights_message(path, "no such file was given as path"))
        return path
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise FileNotFoundError(_missing_weights_message(path, f"{WEIGHTS_ENV} names no such file"))
        return path
    path = cache_dir("weights") / FID_WEIGHTS_FILE
    if path.is_file():
        return path
    if not download:
        raise FileNotFoundError(_missing_weights_message(path, "not in the cache and download=False"))
    return download_fid_weights(path)


def load_fid_params(
    path: str | os.PathLike | None = None, *, sha256: str | None = None, download: bool = True
) -> dict[str, Any]:
    """{'params': ...} for FIDInceptionV3 from pytorch-fid's weight file, found by `fid_weights_path`.

    The file's SHA-256 must start with the hex digits in its name (`-6726825d.pth`), or equal `sha256` if given.
    """
    resolved = fid_weights_path(path, download=download)
    check_sha256(resolved, sha256)
    return fid_params_from_state_dict(read_torch_file(resolved))


# ----------------------------------------------------------------------------------------------------------------
# Batched, sharded feature extraction


class InceptionFeatures:
    """images (N, H, W, C) in [-1, 1] (numpy or jax) → (N, 2048) float32 numpy pool3 features.

    Runs in batches of `batch_size` (the last one zero-padded, so every batch has one shape and the network compiles
    once per image shape; `trace_count` counts compilations). With a 1-D mesh the batch is split over its devices
    (NamedSharding) and the parameters are replicated; `batch_size` is rounded up to a multiple of the mesh size.
    """

    def __init__(self, params: Mapping[str, Any], batch_size: int = 64, mesh: Mesh | None = None, *,
                 precision: Any = DEFAULT_PRECISION):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be >= 1")
        if mesh is None and len(jax.local_devices()) > 1:
            mesh = Mesh(np.array(jax.local_devices()), ("data",))
        if mesh is not None and len(mesh.axis_names) != 1:
            raise ValueError(f"mesh must be 1-D (a data axis), got axes {mesh.axis_names}")
        model = FIDInceptionV3(precision=precision)
        self.trace_count = 0

        def forward(p, x):
            self.trace_count += 1  # runs only while tracing
            return model.apply(p, x)

        if mesh is None:
            self._batch_sharding = None
            self._params = jax.device_put(params)
            self._forward = jax.jit(forward)
        else:
            n = mesh.size
            batch_size = -(-batch_size // n) * n
            self._batch_sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
            replicated = NamedSharding(mesh, PartitionSpec())
            self._params = jax.device_put(params, replicated)
            self._forward = jax.jit(forward, in_shardings=(replicated, self._batch_sharding),
                                    out_shardings=self._batch_sharding)
        self.batch_size = batch_size
        self.mesh = mesh

    def __call__(self, images: Any) -> np.ndarray:
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"images must be (N, H, W, C) with C in (1, 3), got shape {images.shape}")
        num = images.shape[0]
        xp = jnp if isinstance(images, jax.Array) else np
        outputs = []
        for start in range(0, num, self.batch_size):
            batch = xp.asarray(images[start : start + self.batch_size], dtype=xp.float32)
            lo, hi = float(batch.min()), float(batch.max())
            if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
                raise ValueError(f"images must lie in [-1, 1]; batch at {start} spans [{lo:.4g}, {hi:.4g}]")
            pad = self.batch_size - batch.shape[0]
            if pad:
                batch = xp.concatenate([batch, xp.zeros((pad,) + batch.shape[1:], xp.float32)])
            batch = jax.device_put(batch, self._batch_sharding) if self._batch_sharding else batch
            outputs.append(self._forward(self._params, batch))  # dispatched asynchronously
        if not outputs:
            return np.zeros((0, FEATURE_DIM), np.float32)
        return np.concatenate([np.asarray(o) for o in outputs])[:num]


def make_feature_fn(params: Mapping[str, Any], batch_size: int = 64, mesh: Mesh | None = None, *,
                    precision: Any = DEFAULT_PRECISION) -> InceptionFeatures:
    """The FID feature function: images (N, H, W, C) in [-1, 1] → (N, 2048) float32 numpy; see InceptionFeatures.

    `mesh` None shards over all local devices when there is more than one.
    """
    return InceptionFeatures(params, batch_size, mesh, precision=precision)
