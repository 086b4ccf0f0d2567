"""The device mesh of data parallelism, and reading replicated arrays back to the host.

Training and sharded generation run over a 1-D mesh of every device of every process, with one
named axis, "data" (design.md §7): per-device code averages with ``lax.pmean(…, AXIS)``.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

AXIS = "data"


def data_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh over every device of every process, axis "data"."""
    return jax.make_mesh((jax.device_count(),), (AXIS,))


def host_value(tree):
    """A replicated (possibly multi-host) array tree as numpy, from this process's first shard."""
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else a, tree)


def gather(array: jax.Array) -> np.ndarray:
    """A batch-sharded array as one numpy array on every process."""
    if jax.process_count() == 1:
        return np.asarray(array)
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))
