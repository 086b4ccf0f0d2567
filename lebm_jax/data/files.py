"""Where the project keeps files it computes or fetches once (weights, reference statistics, classifiers).

The cache directory is ``$LEBM_JAX_CACHE`` when set, else ``$XDG_CACHE_HOME/lebm_jax``, else
``~/.cache/lebm_jax``. Nothing is read from or written to it at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

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
