"""The FID Inception's weights: pytorch-fid's state dict → Flax params, and finding, fetching and checking the file.

Weights are pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (docs/design.md §6), read without torch
(`read_torch_file`). `load_fid_params` finds the file (argument, $LEBM_JAX_INCEPTION_WEIGHTS, the cache) or
downloads it once, checks its SHA-256 against the prefix in its name, and maps the state dict to parameters of
`FIDInceptionV3` (`fid_params_from_state_dict`).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lebm_jax.data.files import CACHE_ENV, cache_dir, write_atomic
from lebm_jax.measure.inception.network import INPUT_SIZE, FIDInceptionV3
from lebm_jax.measure.inception.torch_file import read_torch_file

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILE
WEIGHTS_ENV = "LEBM_JAX_INCEPTION_WEIGHTS"


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
    """Fetches the weights to `dest`: streamed to a temp file in the same folder, hash-checked, then renamed
    (`write_atomic`); progress on stderr.

    A failed download raises FileNotFoundError saying where to put the file by hand.
    """
    dest = Path(dest)
    expected = expected_sha256(dest, sha256)  # the temp file's name carries no hash: take it from dest's

    def fetch(out: IO[bytes]) -> None:
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                total = int(response.headers.get("Content-Length") or 0)
                done, shown = 0, -1
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    percent = 100 * done // total if total else -1
                    if percent != shown and percent % 10 == 0:
                        print(f"\rdownloading {url}: {done >> 20} MiB ({percent}%)", end="", file=sys.stderr)
                        shown = percent
                print(file=sys.stderr)
        except (urllib.error.URLError, OSError) as err:
            raise FileNotFoundError(_missing_weights_message(dest, f"download failed: {err}")) from err
        if expected is not None:
            actual = digest.hexdigest()
            if not actual.startswith(expected):
                raise ValueError(f"download of {url}: SHA-256 {actual} does not match the expected {expected}")

    return write_atomic(dest, fetch)  # a failed fetch leaves no temp file behind


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

