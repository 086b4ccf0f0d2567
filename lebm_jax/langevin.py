"""Short-run Langevin chains as pure functions.

One chain function serves every distribution in the project: the prior, the posterior and each rung
of the temperature ladder differ only in the log-density passed in. A sampler knows nothing about
networks, data sets or configs.

Step convention (Pang et al. 2020), noise on every step:

    z_{k+1} = z_k + (s²/2) ∇_z log π(z_k) + s ε_k,    ε_k ~ N(0, I).

``ula`` uses the update as it stands (unadjusted Langevin); ``mala`` treats it as a proposal and
adds the Metropolis-Hastings test, which makes π exactly invariant.

Shapes: ``z`` is ``(..., nz)``; every leading index is an independent chain. ``log_prob_fn`` maps
``(..., nz) -> (...)``, one log-density per chain, and must not mix chains (the score of chain i is
taken as the gradient of the *sum* of log-densities, which is exact only when chains do not
interact).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
LogProbFn = Callable[[Array], Array]

METHODS = ("ula", "mala")


class ChainResult(NamedTuple):
    """Final state of a batch of chains and cheap per-chain diagnostics.

    z:            (..., nz) final states.
    accept_rate:  (...) fraction of accepted proposals per chain (1 for ULA).
    grad_norm:    (...) mean over steps of ||∇ log π(z_k)||.
    """

    z: Array
    accept_rate: Array
    grad_norm: Array


def value_and_score(log_prob_fn: LogProbFn) -> Callable[[Array], tuple[Array, Array]]:
    """Returns z -> (log π(z) per chain, ∇_z log π(z)) from one backward pass over all chains."""

    def fn(z: Array) -> tuple[Array, Array]:
        logp, vjp = jax.vjp(log_prob_fn, z)
        (score,) = vjp(jnp.ones_like(logp))
        return logp, score

    return fn


def _check(z0: Array, num_steps: int, method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps={num_steps!r} must be a non-negative int")
    if jnp.ndim(z0) < 1:
        raise ValueError(f"z0 must have a trailing latent axis, got shape {jnp.shape(z0)}")


def _step_size(step_size, z0: Array) -> tuple[Array, Array]:
    """Step size as (per-chain s with a trailing unit axis, per-chain s) or two scalars."""
    s = jnp.asarray(step_size, dtype=z0.dtype)
    if s.ndim == 0:
        return s, s
    s = jnp.broadcast_to(s, z0.shape[:-1])  # (...)
    return s[..., None], s


def langevin_chain(
    key: Array,
    z0: Array,
    log_prob_fn: LogProbFn,
    num_steps: int,
    step_size: float | Array,
    method: str = "ula",
) -> ChainResult:
    """Runs ``num_steps`` Langevin steps from ``z0`` targeting exp(log_prob_fn).

    Args:
      key: PRNG key; one stream per step, shared by all chains (their noise is independent).
      z0: (..., nz) initial states.
      log_prob_fn: (..., nz) -> (...) unnormalised log-density of each chain's target.
      num_steps: number of steps K (static).
      step_size: s, a scalar or an array broadcastable to the chains' batch shape ``z0.shape[:-1]``.
      method: "ula" (unadjusted) or "mala" (Metropolis-adjusted).

    Returns:
      ChainResult with the final states (not differentiated through: callers treat samples as
      constants) and per-chain diagnostics.
    """
    _check(z0, num_steps, method)
    s, s_chain = _step_size(step_size, z0)  # (..., 1) and (...), or scalars
    vs = value_and_score(log_prob_fn)
    batch_shape = z0.shape[:-1]

    logp0, score0 = vs(z0)

    def ula_step(carry, k):
        z, _, score, acc, gnorm = carry
        eps = jax.random.normal(k, z.shape, z.dtype)
        z_new = z + 0.5 * s**2 * score + s * eps
        _, score_new = vs(z_new)
        gnorm = gnorm + jnp.linalg.norm(score, axis=-1)
        return (z_new, logp0, score_new, acc + 1.0, gnorm), None

    def mala_step(carry, k):
        z, logp, score, acc, gnorm = carry
        k_noise, k_accept = jax.random.split(k)
        eps = jax.random.normal(k_noise, z.shape, z.dtype)
        prop = z + 0.5 * s**2 * score + s * eps
        logp_prop, score_prop = vs(prop)
        # log q(z | prop) - log q(prop | z), q(b | a) = N(b; a + (s²/2) ∇log π(a), s² I).
        fwd = prop - z - 0.5 * s**2 * score  # = s ε
        bwd = z - prop - 0.5 * s**2 * score_prop
        log_q_ratio = (jnp.sum(fwd**2, -1) - jnp.sum(bwd**2, -1)) / (2.0 * s_chain**2)
        log_alpha = logp_prop - logp + log_q_ratio
        u = jax.random.uniform(k_accept, batch_shape, z.dtype)
        accept = jnp.log(u) < log_alpha  # (...)
        z = jnp.where(accept[..., None], prop, z)
        logp = jnp.where(accept, logp_prop, logp)
        new_score = jnp.where(accept[..., None], score_prop, score)
        gnorm = gnorm + jnp.linalg.norm(score, axis=-1)
        return (z, logp, new_score, acc + accept.astype(z.dtype), gnorm), None

    zeros = jnp.zeros(batch_shape, z0.dtype)
    init = (z0, logp0, score0, zeros, zeros)
    step = mala_step if method == "mala" else ula_step
    keys = jax.random.split(key, num_steps)
    (z, _, _, acc, gnorm), _ = jax.lax.scan(step, init, keys)
    n = max(num_steps, 1)
    return ChainResult(jax.lax.stop_gradient(z), acc / n, gnorm / n)


def sample_base(key: Array, shape: tuple[int, ...], sigma: float, dtype=jnp.float32) -> Array:
    """Draws z_0 ~ π0 = N(0, σ0² I) with the given (..., nz) shape."""
    return sigma * jax.random.normal(key, shape, dtype)
