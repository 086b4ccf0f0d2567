"""Held-out metrics: how well the model explains test images it never trained on.

- ``recon_mse``: mean squared error per pixel of g_β(z⁺) against x, z⁺ from the posterior chain (the
  scale Pang et al. Table 2 report);
- ``posterior_log_lik``: mean log p_β(x|z⁺), constant included;
- ``log_px`` (with ``eval.heldout_log_px``): the mean TI estimate of log p(x) on the run's own ladder
  (``config.ti``: num_temps, power), `lebm_jax.core.sampling.ti_log_likelihood` (design.md §3).
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

    def __init__(self, model: LatentEBM, posterior_chain: ChainSpec, test_images: np.ndarray, every: int,
                 ti_ladder: tuple[int, float] | None = None):
        """``test_images``: uint8 (M, H, W, C); ``ti_ladder``: (num_temps, power) for log_px, or None."""
        self.every = every
        self.info = {"num_images": int(test_images.shape[0])}
        self._x = jnp.asarray(to_float(test_images))

        @jax.jit
        def fn(params, x, key):
            k_post, k_ti = jax.random.split(key)
            z = sampling.posterior_latents(model, posterior_chain, params, x, k_post).z
            recon = model.generate(params["gen"], z)
            out = {
                "recon_mse": jnp.mean((recon - x) ** 2),
                "posterior_log_lik": jnp.mean(model.log_likelihood(params["gen"], x, z)),
            }
            if ti_ladder is not None:
                est = sampling.ti_log_likelihood(model, posterior_chain, params, x, k_ti, *ti_ladder)
                out["log_px"] = jnp.mean(est["log_px"])
            return out

        self._fn = fn

    @staticmethod
    def schedule(config: ml_collections.ConfigDict) -> int:
        return config.sample_every  # with the sample grids

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, context: Context) -> "Heldout":
        ladder = (config.ti.num_temps, config.ti.power) if config.eval.heldout_log_px else None
        return cls(context.model, context.objective.posterior_chain, context.data.test[: config.num_heldout],
                   cls.schedule(config), ladder)

    def __call__(self, params: Params, key: jax.Array) -> dict[str, float]:
        return {name: float(v) for name, v in host_value(self._fn(params, self._x, key)).items()}
