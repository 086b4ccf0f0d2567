"""Sampling from a trained model: prior latents, generated images, posterior inference, TI log-likelihood.

Pure functions of (params, inputs, key); jit them with the model and chain settings closed over
(`lebm_jax.api.Trained` does). Generation follows the paper: z ~ p_α by the prior chain, then
x = g_β(z) with no added noise.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lebm_jax.core import ladder
from lebm_jax.core.langevin import ChainResult, sample_base
from lebm_jax.core.model import LatentEBM
from lebm_jax.core.objectives import ChainSpec, example_keys, sample_power_posteriors

Array = jax.Array
Params = Any


def prior_latents(model: LatentEBM, chain: ChainSpec, params: Params, key: Array, num: int) -> ChainResult:
    """``num`` latents z ~ p_α from short-run prior chains started at π0: z (num, nz)."""
    k0, k = jax.random.split(key)
    z0 = sample_base(k0, (num, model.latent_dim), model.prior_sigma)
    return chain.run(k, z0, lambda z: model.log_prior(params["ebm"], z))


def generate(model: LatentEBM, chain: ChainSpec, params: Params, key: Array, num: int) -> Array:
    """``num`` generated data points g_β(z), z ~ p_α: (num, *event_shape)."""
    return model.generate(params["gen"], prior_latents(model, chain, params, key, num).z)


def posterior_latents(
    model: LatentEBM, chain: ChainSpec, params: Params, x: Array, key: Array, t: float | Array = 1.0
) -> ChainResult:
    """Latents z ~ π_t(z|x) ∝ p_β(x|z)^t p_α(z) for each example: z (B, nz). t = 1 is the posterior."""
    model.check_data(x)
    temps = jnp.reshape(jnp.asarray(t, jnp.float32), (1,))
    res = sample_power_posteriors(model, chain, params, x, example_keys(key, x.shape[0]), temps, 1)
    return jax.tree.map(lambda a: a[0, 0], res)


def reconstruct(model: LatentEBM, chain: ChainSpec, params: Params, x: Array, key: Array) -> Array:
    """g_β(z⁺) with z⁺ from the posterior chain: (B, *event_shape)."""
    return model.generate(params["gen"], posterior_latents(model, chain, params, x, key).z)


def ti_log_likelihood(
    model: LatentEBM,
    chain: ChainSpec,
    params: Params,
    x: Array,
    key: Array,
    num_temps: int = 10,
    power: float = 1.0,
    num_chains: int = 1,
) -> dict:
    """Thermodynamic-integration estimate of log p(x) per example (trapezoid over t_i = (i/(N−1))^p).

    Returns {"log_px": (B,), "rung_log_lik": (N, B)} and, with num_chains ≥ 2, the Friel-corrected
    "log_px_friel": (B,). The log p(x) is that of the model with the normalised prior p_α.
    """
    model.check_data(x)
    ts = ladder.power_schedule(num_temps, power)
    res = sample_power_posteriors(model, chain, params, x, example_keys(key, x.shape[0]), ts, num_chains,
                                  prior_rungs=1)  # t_0 = 0
    ell = model.log_likelihood(params["gen"], x, res.z)  # (N, S, B)
    rung = jnp.mean(ell, axis=1)
    out = {"log_px": ladder.trapezoid(ts, rung), "rung_log_lik": rung}
    if num_chains >= 2:
        out["log_px_friel"] = out["log_px"] + ladder.friel_correction(ts, jnp.var(ell, axis=1, ddof=1))
    return out
