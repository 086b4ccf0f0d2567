"""Files the project writes: atomic writes, and the cache of things computed or fetched once.

Every file another process may read while it is being written (a run's JSON records, cache entries,
reference statistics) is written to a temporary name in the same folder, synced and renamed into place
(`write_atomic`, `write_json`): a reader sees the old file or the new one, never half of one, and a
process killed mid-write leaves at most a stray ``.*.tmp`` file.

The cache directory is ``$LEBM_JAX_CACHE`` when set, else ``$XDG_CACHE_HOME/lebm_jax``, else
``~/.cache/lebm_jax``. Nothing is read from or written to it at import time.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

CACHE_ENV = "LEBM_JAX_CACHE"


def cache_dir(*parts: str, create: bool = True) -> Path:
    """The cache directory (or a sub-directory of it), created unless ``create`` is False."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = os.path.join(xdg, "lebm_jax") if xdg else os.path.join(Path.home(), ".cache", "lebm_jax")
    path = Path(root, *parts).expanduser()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: str | os.PathLike, write: bytes | Callable[[IO[bytes]], Any]) -> Path:
    """Writes ``path`` all at once: ``write`` is the bytes, or a function that writes to a binary file.

    The content goes to a temporary file beside ``path``, is synced, and replaces ``path`` in one rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, (bytes, bytearray)):
                f.write(write)
            else:
                write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | os.PathLike, payload: Any, indent: int | None = 2) -> Path:
    """``payload`` as JSON (keys sorted, a final newline), written atomically (`write_atomic`)."""
    text = json.dumps(payload, indent=indent, sort_keys=True) + "\n"
    return write_atomic(path, text.encode())


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in ``path``."""
    with open(path) as f:
        return json.load(f)
