"""The FID feature function: images (N, H, W, C) in [-1, 1] → (N, 2048) float32 numpy, batched and sharded.

`make_feature_fn(params)` wraps `FIDInceptionV3` (docs/design.md §6) in fixed-size, zero-padded batches so that the
network compiles once per image shape, split over the devices of a 1-D mesh when there is more than one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lebm_jax.measure.inception.network import DEFAULT_PRECISION, FEATURE_DIM, FIDInceptionV3

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
