"""Gradient statistics as an evaluator: the variance of the learning gradient at the current parameters.

Total, MCMC and data variance for the EBM, the generator and both; normalised variance; gradient norm;
variance of the per-example loss (for ``ti``: of −log p̂(x)); `lebm_jax.core.gradstats`, design.md §5.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lebm_jax.core import gradstats
from lebm_jax.core.objectives import Objective
from lebm_jax.data.images import to_float
from lebm_jax.measure.base import Context

Params = Any


class GradientStats:
    """`gradstats.gradient_statistics` of an objective at given parameters.

    Minibatches are drawn from the training images, kept on the device as uint8 and converted per batch.
    Costs R·(1 + M) gradient evaluations (R = num_draws, M = num_batches); compiled once.
    """

    name = "gradstats"
    prefix = "gradstats/"

    def __init__(self, gradstats_config: ml_collections.ConfigDict, objective: Objective,
                 train_images: np.ndarray, batch_size: int):
        cfg = gradstats_config
        self.every = cfg.every
        self.info = {"num_draws": cfg.num_draws, "num_batches": cfg.num_batches, "batch_size": batch_size}
        def stats(params, data, key, temperatures):
            grad_fn = gradstats.objective_grad_fn(objective, temperatures)

            def from_uint8(params, x, key):
                return grad_fn(params, to_float(x), key)

            return gradstats.gradient_statistics(
                from_uint8, params, data, key, batch_size=batch_size, num_draws=cfg.num_draws,
                num_batches=cfg.num_batches, chunk=cfg.chunk or None,
            ).scalars

        self._data = jnp.asarray(train_images)
        self._fn = jax.jit(stats)

    @staticmethod
    def schedule(config: ml_collections.ConfigDict) -> int:
        return config.gradstats.every

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, context: Context) -> "GradientStats":
        return cls(config.gradstats, context.objective, context.data.train, config.batch_size)

    reads_ladder = True  # the loop passes an adaptive run's current ladder as ``temperatures``

    def __call__(self, params: Params, key: jax.Array, temperatures: jax.Array | None = None) -> dict[str, float]:
        """At ``params``, on the run's current ladder ``temperatures`` when it adapts (else the config's)."""
        params = jax.device_put(jax.device_get(params), self._data.sharding)  # one device, whatever the mesh
        if temperatures is not None:
            temperatures = jax.device_put(jax.device_get(temperatures), self._data.sharding)
        out = jax.device_get(self._fn(params, self._data, key, temperatures))
        return {name: float(v) for name, v in out.items()}
