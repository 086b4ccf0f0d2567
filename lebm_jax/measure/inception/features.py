"""The FID feature function: images (N, H, W, C) in [-1, 1] → (N, 2048) float32 numpy, batched and sharded.

`make_feature_fn(params)` wraps `FIDInceptionV3` (docs/design.md §6) in fixed-size, zero-padded batches so that the
network compiles once per image shape, split over the devices of a 1-D mesh when there is more than one.

Input range: uint8 in [0, 255] (converted by `to_float`) or floats in [-1, 1] — not pytorch-fid's [0, 1]. The
images are checked on the host before they reach the network (`lebm_jax.data.images.as_model_images`): floats
above 1 ([0, 255]) or below -1, NaN/inf, other dtypes and shapes are a ValueError. Floats with no negative value
look like [0, 1] images but may be bright generated images (which evaluation passes here and must not reject):
they are used as [-1, 1] with a warning, silenced by ``assume_range="[-1, 1]"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lebm_jax.data.images import as_model_images
from lebm_jax.measure.inception.network import DEFAULT_PRECISION, FEATURE_DIM, FIDInceptionV3

class InceptionFeatures:
    """images (N, H, W, C), floats in [-1, 1] or uint8 (numpy or jax) → (N, 2048) float32 numpy pool3 features.

    The input range is checked first (module docstring): [0, 255] floats are a ValueError, [0, 1]-looking
    floats a warning unless ``assume_range="[-1, 1]"``.

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

    def __call__(self, images: Any, *, assume_range: str | None = None) -> np.ndarray:
        # a jax.Array stays on its device: only its min, max (and NaN/inf counts) come to the host
        images = as_model_images(images, "Inception features", assume_range=assume_range, ambiguous="warn")
        num = images.shape[0]
        xp = jnp if isinstance(images, jax.Array) else np
        outputs = []
        for start in range(0, num, self.batch_size):
            batch = images[start : start + self.batch_size]
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
    """The FID feature function: images (N, H, W, C) in [-1, 1] (or uint8) → (N, 2048) float32 numpy; see
    InceptionFeatures (floats in [0, 1] or [0, 255] are not the expected range: convert them first).

    `mesh` None shards over all local devices when there is more than one.
    """
    return InceptionFeatures(params, batch_size, mesh, precision=precision)
