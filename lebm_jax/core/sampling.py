"""Sampling from a trained model: prior latents, generated images, posterior inference, TI log-likelihood.

Pure functions of (params, inputs, key); jit them with the model and chain settings closed over
(`lebm_jax.training.trained.Trained` does). Generation follows the paper (design.md §1): z ~ p_α by the
prior chain, then x = g_β(z) with no added noise. `generate` is the one generation path: the sample
grids and `Trained` call it jitted on one device (`jit_generate`), the sample-quality evaluator and the
benchmark split over devices (`make_generate_fn`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lebm_jax.core import annealing, ladder
from lebm_jax.core.devices import AXIS, data_mesh
from lebm_jax.core.langevin import ChainResult, ChainSpec, sample_base
from lebm_jax.core.model import LatentEBM
from lebm_jax.core.objectives import example_keys, sample_power_posteriors

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


def jit_generate(model: LatentEBM, chain: ChainSpec) -> Callable[[Params, Array, int], Array]:
    """`generate` jitted on one device: (params, key, num) -> num images; compiled once per ``num``."""
    return jax.jit(functools.partial(generate, model, chain), static_argnums=2)


def make_generate_fn(model: LatentEBM, chain: ChainSpec, num: int,
                     mesh: jax.sharding.Mesh | None = None) -> Callable[[Params, Array], Array]:
    """Jitted (params, key) -> ``num`` generated images, `generate` split over the devices of ``mesh``.

    Each device runs ``num / devices`` prior chains with the key ``fold_in(key, device index)``; the
    result is sharded over the mesh axis "data". ``mesh`` defaults to all devices.
    """
    mesh = mesh if mesh is not None else data_mesh()
    if num % mesh.size:
        raise ValueError(f"{num} images cannot be split evenly over the {mesh.size} devices")
    per_device = num // mesh.size

    def local(params, key):
        key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
        return generate(model, chain, params, key, per_device)

    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(), P()), out_specs=P(AXIS))
    return jax.jit(fn, out_shardings=NamedSharding(mesh, P(AXIS)))


def posterior_latents(
    model: LatentEBM, chain: ChainSpec, params: Params, x: Array, key: Array, t: float | Array = 1.0
) -> ChainResult:
    """Latents z ~ π_t(z|x) ∝ p_β(x|z)^t p_α(z) for each example: z (B, nz). t = 1 is the posterior."""
    model.check_data(x)
    temps = jnp.reshape(jnp.asarray(t, jnp.float32), (1,))
    res = sample_power_posteriors(model, chain, params, x, example_keys(key, x.shape[0]), temps, 1)
    return jax.tree.map(lambda a: a[0, 0], res)


def ti_log_likelihood(
    model: LatentEBM,
    chain: ChainSpec,
    params: Params,
    x: Array,
    key: Array,
    num_temps: int = 10,
    power: float = 1.0,
    num_chains: int = 1,
    temperatures: Array | None = None,
    exchange_every: int = 0,
) -> dict:
    """Thermodynamic-integration estimate of log p(x) per example: the trapezoid over the ladder
    t_i = (i/(N−1))^p, or over ``temperatures`` (N,) when given (e.g. a run's adapted ladder; it must increase
    from exactly 0 to exactly 1, which `lebm_jax.core.ladder.check_temperatures` checks on the host), with replica exchange between neighbouring rungs after every
    ``exchange_every`` posterior steps when positive (design.md §3).

    Returns {"log_px": (B,), "rung_log_lik": (N, B), "temperatures": (N,)}; with replica exchange also
    "swap_accept": (N − 1, B), each pair's acceptance over rounds and chains; with num_chains ≥ 2 also
    "friel_reliable": (B,) bool (`lebm_jax.core.annealing.friel_reliable`) and the Friel-corrected
    "log_px_friel": (B,), NaN where the rule does not vouch for it (`lebm_jax.core.ladder.ti_estimate`, design.md
    §3, §9). The log p(x) is that of the model with the normalised prior p_α. This is the training estimator on
    a ladder of one's choosing; for the held-out protocol's estimate see `lebm_jax.core.annealing.estimate`.
    """
    model.check_data(x)
    ts = ladder.power_schedule(num_temps, power) if temperatures is None else jnp.asarray(temperatures, jnp.float32)
    res = sample_power_posteriors(model, chain, params, x, example_keys(key, x.shape[0]), ts, num_chains,
                                  prior_rungs=1, exchange_every=exchange_every)  # t_0 = 0
    est = ladder.ti_estimate(ts, model.log_likelihood(params["gen"], x, res.z))  # ℓ: (N, S, B)
    out = {"log_px": est.log_px, "rung_log_lik": est.rung_mean, "temperatures": ts}
    if exchange_every:
        out["swap_accept"] = jnp.mean(res.swap_accept, axis=1)
    if est.log_px_friel is not None:
        reliable = annealing.friel_reliable(est.rung_var)
        out["friel_reliable"] = reliable
        out["log_px_friel"] = jnp.where(reliable, est.log_px_friel, jnp.nan)
    return out
