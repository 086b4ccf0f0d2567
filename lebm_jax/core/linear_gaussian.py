"""The exactly solvable latent EBM: quadratic tilt and linear generator.

    f(z) = bᵀz − ½ zᵀAz,  A = CCᵀ,        g(z) = Wz + c

Every quantity the samplers and objectives estimate has a closed form here (docs/design.md §4):

    p_α   = N(m0, S0),     S0 = (I/σ0² + A)⁻¹,  m0 = S0 b
    π_t   = N(μ_t, P_t⁻¹), P_t = S0⁻¹ + (t/σ²) WᵀW,  μ_t = P_t⁻¹ (S0⁻¹ m0 + (t/σ²) Wᵀ(x − c))
    E_t[ℓ] = −(D/2) log(2πσ²) − (||x − Wμ_t − c||² + tr(W P_t⁻¹ Wᵀ)) / (2σ²),   ℓ = log p(x|z)
    log p(x) = log N(x; W m0 + c, W S0 Wᵀ + σ² I) = ∫_0^1 E_t[ℓ] dt

The model plugs into the same `LatentEBM`, samplers and objectives as the image model, so tests of
those pieces against these formulas test the code the image model runs. Functions here take one
data point x of shape (D,); vmap them over a batch.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lebm_jax.core import ladder
from lebm_jax.core import networks
from lebm_jax.core.model import LatentEBM

Array = jax.Array
Params = Any


def linear_gaussian_model(
    latent_dim: int,
    data_dim: int,
    prior_sigma: float = 1.0,
    lik_sigma: float = 0.3,
    init_scale: float = 0.5,
) -> LatentEBM:
    """A `LatentEBM` with the quadratic tilt and the linear generator."""
    return LatentEBM(
        tilt_net=networks.QuadraticTilt(latent_dim=latent_dim, init_scale=init_scale),
        generator_net=networks.LinearGenerator(data_dim=data_dim, init_scale=init_scale),
        latent_dim=latent_dim,
        event_shape=(data_dim,),
        prior_sigma=prior_sigma,
        lik_sigma=lik_sigma,
    )


class Gaussian(NamedTuple):
    mean: Array  # (nz,)
    cov: Array  # (nz, nz)


class Matrices(NamedTuple):
    b: Array
    A: Array
    W: Array
    c: Array


def matrices(params: Params) -> Matrices:
    """(b, A, W, c) from the model's parameters {"ebm": ..., "gen": ...}."""
    b, A = networks.quadratic_tilt_matrices(params["ebm"])
    W, c = networks.linear_generator_matrices(params["gen"])
    return Matrices(b, A, W, c)


def prior(params: Params, sigma0: float) -> Gaussian:
    """p_α = N(m0, S0)."""
    m = matrices(params)
    eye = jnp.eye(m.b.shape[0], dtype=m.b.dtype)
    s0 = jnp.linalg.inv(eye / sigma0**2 + m.A)
    s0 = 0.5 * (s0 + s0.T)
    return Gaussian(s0 @ m.b, s0)


def power_posterior(params: Params, x: Array, t: Array | float, sigma0: float, sigma: float) -> Gaussian:
    """π_t(z|x) = N(μ_t, P_t⁻¹) for one data point x (D,)."""
    m = matrices(params)
    eye = jnp.eye(m.b.shape[0], dtype=m.b.dtype)
    precision = eye / sigma0**2 + m.A + (t / sigma**2) * m.W.T @ m.W  # P_t = S0⁻¹ + (t/σ²) WᵀW
    cov = jnp.linalg.inv(precision)
    cov = 0.5 * (cov + cov.T)
    mean = cov @ (m.b + (t / sigma**2) * m.W.T @ (x - m.c))  # S0⁻¹ m0 = b
    return Gaussian(mean, cov)


def gaussian_expected_log_lik(W: Array, c: Array, q: Gaussian, x: Array, sigma: float) -> Array:
    """E_{z~q}[log N(x; Wz + c, σ² I)] for a Gaussian q."""
    d = x.shape[-1]
    r = x - W @ q.mean - c
    return -0.5 * d * math.log(2 * math.pi * sigma**2) - (r @ r + jnp.trace(W @ q.cov @ W.T)) / (2 * sigma**2)


def expected_log_lik(params: Params, x: Array, t: Array | float, sigma0: float, sigma: float) -> Array:
    """E_t[ℓ] = E_{π_t(z|x)}[log p(x|z)]; differentiable in the parameters through π_t as well."""
    m = matrices(params)
    return gaussian_expected_log_lik(m.W, m.c, power_posterior(params, x, t, sigma0, sigma), x, sigma)


def variance_log_lik(params: Params, x: Array, t: Array | float, sigma0: float, sigma: float) -> Array:
    """V_t = Var_{π_t}[ℓ] = aᵀΣa + 2 tr((MΣ)²), a = Wᵀ(x − Wμ − c)/σ², M = WᵀW/(2σ²)."""
    m = matrices(params)
    q = power_posterior(params, x, t, sigma0, sigma)
    a = m.W.T @ (x - m.W @ q.mean - m.c) / sigma**2
    ms = (m.W.T @ m.W / (2 * sigma**2)) @ q.cov
    return a @ q.cov @ a + 2.0 * jnp.trace(ms @ ms)


def log_marginal(params: Params, x: Array, sigma0: float, sigma: float) -> Array:
    """log p(x) = log N(x; W m0 + c, W S0 Wᵀ + σ² I)."""
    m = matrices(params)
    p = prior(params, sigma0)
    d = x.shape[-1]
    cov = m.W @ p.cov @ m.W.T + sigma**2 * jnp.eye(d, dtype=x.dtype)
    return jax.scipy.stats.multivariate_normal.logpdf(x, m.W @ p.mean + m.c, cov)


def expected_grad_log_lik(params: Params, x: Array, t: Array | float, sigma0: float, sigma: float) -> Params:
    """E_t[∇_β ℓ]: the generator gradient averaged over π_t with π_t held fixed (the pathwise integrand).

    Returned as a full parameter tree; its "ebm" part is zero since ℓ does not depend on α.
    """
    q = jax.lax.stop_gradient(power_posterior(params, x, t, sigma0, sigma))

    def ell(p):
        W, c = networks.linear_generator_matrices(p["gen"])
        return gaussian_expected_log_lik(W, c, q, x, sigma)

    return jax.grad(ell)(params)


def pathwise_gradient(params: Params, x: Array, ts: Array, sigma0: float, sigma: float) -> Params:
    """Σ_i w_i E_{t_i}[∇_β ℓ] with trapezoid weights on the rungs ``ts``: what the pathwise TI
    generator gradient estimates (its expectation) on that ladder. A fine ladder gives ∫_0^1 E_t[∇_β ℓ] dt."""
    grads = jax.vmap(lambda t: expected_grad_log_lik(params, x, t, sigma0, sigma))(ts)  # leaves (N, ...)
    return jax.tree.map(lambda g: ladder.trapezoid(ts, g), grads)


def trapezoid_log_lik(params: Params, x: Array, ts: Array, sigma0: float, sigma: float) -> Array:
    """Σ_i w_i E_{t_i}[ℓ]: the expectation of the sampled TI estimate on the ladder ``ts``.

    Its gradient in the parameters is what the covariance-corrected ("fisher") TI gradient estimates.
    """
    e = jax.vmap(lambda t: expected_log_lik(params, x, t, sigma0, sigma))(ts)
    return ladder.trapezoid(ts, e)
