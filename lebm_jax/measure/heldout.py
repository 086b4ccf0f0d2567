"""Held-out metrics: how well the model explains test images it never trained on.

- ``recon_mse``: mean squared error per pixel of g_β(z⁺) against x, z⁺ from the posterior chain (the
  scale Pang et al. Table 2 report);
- ``posterior_log_lik``: mean log p_β(x|z⁺), constant included.

The held-out log-likelihood log p(x) is the common protocol's (`lebm_jax.measure.loglik`), the same for
every run, never the run's own training ladder.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lebm_jax.core import sampling
from lebm_jax.core.devices import host_value
from lebm_jax.core.langevin import ChainSpec
from lebm_jax.core.model import LatentEBM
from lebm_jax.data.images import to_float
from lebm_jax.measure.base import Context

Params = Any


class Heldout:
    """Held-out metrics of the first ``num_heldout`` test images (see the module docstring)."""

    name = "heldout"
    prefix = "heldout/"

    def __init__(self, model: LatentEBM, posterior_chain: ChainSpec, test_images: np.ndarray, every: int):
        """``test_images``: uint8 (M, H, W, C)."""
        self.every = every
        self.info = {"num_images": int(test_images.shape[0])}
        self._x = jnp.asarray(to_float(test_images))

        @jax.jit
        def fn(params, x, key):
            k_post, _ = jax.random.split(key)  # the second key was the run's own TI ladder's, kept for equal draws
            z = sampling.posterior_latents(model, posterior_chain, params, x, k_post).z
            recon = model.generate(params["gen"], z)
            return {
                "recon_mse": jnp.mean((recon - x) ** 2),
                "posterior_log_lik": jnp.mean(model.log_likelihood(params["gen"], x, z)),
            }

        self._fn = fn

    @staticmethod
    def schedule(config: ml_collections.ConfigDict) -> int:
        return config.sample_every  # with the sample grids

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, context: Context) -> "Heldout":
        return cls(context.model, context.objective.posterior_chain, context.data.test[: config.num_heldout],
                   cls.schedule(config))

    def __call__(self, params: Params, key: jax.Array) -> dict[str, float]:
        return {name: float(v) for name, v in host_value(self._fn(params, self._x, key)).items()}
