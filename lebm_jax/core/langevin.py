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

import dataclasses
from typing import Any, Callable, NamedTuple

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


def split_keys(key: Array, num: int, key_axis: int | None = None) -> Array:
    """``num`` keys from ``key`` along a new leading axis; per-index keys (n,) give (num, n)."""
    if key_axis is None:
        return jax.random.split(key, num)
    return jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, num))(key), 0, 1)


def draw(sampler, key: Array, shape: tuple[int, ...], dtype, key_axis: int | None = None) -> Array:
    """``sampler(key, shape, dtype)``, or with per-index keys (one per entry of axis ``key_axis``)
    the entries along that axis drawn from their own key: their values then do not depend on how
    the axis is split (across devices, say) or on its length."""
    if key_axis is None:
        return sampler(key, shape, dtype)
    sub = shape[:key_axis] + shape[key_axis + 1 :]
    return jnp.moveaxis(jax.vmap(lambda k: sampler(k, sub, dtype))(key), 0, key_axis)


def _check_keys(key: Array, z0: Array, key_axis: int | None) -> None:
    if key_axis is None:
        return
    if not 0 <= key_axis < z0.ndim - 1:
        raise ValueError(f"key_axis={key_axis!r} must index a batch axis of z0 with shape {z0.shape}")
    if key.shape != (z0.shape[key_axis],):
        raise ValueError(f"per-index keys of shape {key.shape} do not match axis {key_axis} of z0 {z0.shape}")


def _step_size(step_size, z0: Array) -> tuple[Array, Array]:
    """Step size as (per-chain s with a trailing unit axis, per-chain s) or two scalars."""
    s = jnp.asarray(step_size, dtype=z0.dtype)
    if s.ndim == 0:
        return s, s
    s = jnp.broadcast_to(s, z0.shape[:-1])  # (...)
    return s[..., None], s


class ChainState(NamedTuple):
    """Where a batch of chains stands between steps: the states and what was computed at them.

    z:      (..., nz) states.
    logp:   (...) log π(z).
    score:  (..., nz) ∇_z log π(z).
    extra:  a pytree of per-chain values (leaves with leading shape (...)) computed with them, carried and,
            under MALA, accepted or rejected together with z (e.g. the parts log π is made of, so that a
            caller can rebuild log π for another target without evaluating the networks again).
    """

    z: Array
    logp: Array
    score: Array
    extra: Any = ()


Evaluate = Callable[[Array], tuple[Array, Array, Any]]  # z -> (log π(z), ∇ log π(z), extra)


def _select(accept: Array, new, old):
    """Per chain, ``new`` where ``accept`` (...) else ``old``, for every leaf (leading shape (...))."""
    return jax.tree.map(lambda a, b: jnp.where(accept.reshape(accept.shape + (1,) * (a.ndim - accept.ndim)), a, b),
                        new, old)


def langevin_steps(
    key: Array,
    state: ChainState,
    evaluate: Evaluate,
    num_steps: int,
    step_size: float | Array,
    method: str = "ula",
    key_axis: int | None = None,
    unroll: int | bool = 1,
) -> tuple[ChainState, Array, Array]:
    """``num_steps`` Langevin steps from ``state`` (its logp, score and extra must be ``evaluate(state.z)``).

    ``evaluate`` is called once per step, at the new (ULA) or proposed (MALA) states, and nowhere else, so a
    caller can chain calls without evaluating anything twice. Arguments as in `langevin_chain`.

    Returns:
      (final ChainState, sum over steps of the accept indicators (...), sum over steps of ||score||).
    """
    s, s_chain = _step_size(step_size, state.z)  # (..., 1) and (...), or scalars
    batch_shape = state.z.shape[:-1]

    def ula_step(carry, k):
        st, acc, gnorm = carry
        eps = draw(jax.random.normal, k, st.z.shape, st.z.dtype, key_axis)
        z_new = st.z + 0.5 * s**2 * st.score + s * eps
        gnorm = gnorm + jnp.linalg.norm(st.score, axis=-1)
        return (ChainState(z_new, *evaluate(z_new)), acc + 1.0, gnorm), None

    def mala_step(carry, k):
        st, acc, gnorm = carry
        k_noise, k_accept = split_keys(k, 2, key_axis)
        eps = draw(jax.random.normal, k_noise, st.z.shape, st.z.dtype, key_axis)
        z_prop = st.z + 0.5 * s**2 * st.score + s * eps
        prop = ChainState(z_prop, *evaluate(z_prop))
        # log q(z | prop) - log q(prop | z), q(b | a) = N(b; a + (s²/2) ∇log π(a), s² I).
        fwd = prop.z - st.z - 0.5 * s**2 * st.score  # = s ε
        bwd = st.z - prop.z - 0.5 * s**2 * prop.score
        log_q_ratio = (jnp.sum(fwd**2, -1) - jnp.sum(bwd**2, -1)) / (2.0 * s_chain**2)
        log_alpha = prop.logp - st.logp + log_q_ratio
        u = draw(jax.random.uniform, k_accept, batch_shape, st.z.dtype, key_axis)
        accept = jnp.log(u) < log_alpha  # (...)
        gnorm = gnorm + jnp.linalg.norm(st.score, axis=-1)
        return (_select(accept, prop, st), acc + accept.astype(st.z.dtype), gnorm), None

    zeros = jnp.zeros_like(state.z[..., 0])  # (...); inherits z's sharding type inside shard_map
    step = mala_step if method == "mala" else ula_step
    keys = split_keys(key, num_steps, key_axis)  # (K,) or (K, n)
    (state, acc, gnorm), _ = jax.lax.scan(step, (state, zeros, zeros), keys, unroll=unroll)
    return state, acc, gnorm


def langevin_chain(
    key: Array,
    z0: Array,
    log_prob_fn: LogProbFn,
    num_steps: int,
    step_size: float | Array,
    method: str = "ula",
    key_axis: int | None = None,
    unroll: int | bool = 1,
) -> ChainResult:
    """Runs ``num_steps`` Langevin steps from ``z0`` targeting exp(log_prob_fn).

    Args:
      key: PRNG key; one stream per step, shared by all chains (their noise is independent). With
        ``key_axis`` set, an array of keys, one per index of that batch axis of ``z0``: each
        index's chains then draw only from their own key (e.g. one key per data example, so the
        chains of an example do not depend on the batch or device it is in).
      z0: (..., nz) initial states.
      log_prob_fn: (..., nz) -> (...) unnormalised log-density of each chain's target.
      num_steps: number of steps K (static).
      step_size: s, a scalar or an array broadcastable to the chains' batch shape ``z0.shape[:-1]``.
      method: "ula" (unadjusted) or "mala" (Metropolis-adjusted).
      key_axis: see ``key``.
      unroll: steps unrolled per loop iteration (``lax.scan``'s ``unroll``; True: all). On the CPU
        backend XLA runs convolutions inside a loop body many times slower than unrolled ones (20×
        for the digits generator; partial unrolling does not help), so chains through a conv
        generator are best fully unrolled there (`lebm_jax.core.backend.chain_unroll`).

    Returns:
      ChainResult with the final states (not differentiated through: callers treat samples as
      constants) and per-chain diagnostics.
    """
    _check(z0, num_steps, method)
    _check_keys(key, z0, key_axis)
    vs = value_and_score(log_prob_fn)

    def evaluate(z):
        return (*vs(z), ())

    state, acc, gnorm = langevin_steps(key, ChainState(z0, *evaluate(z0)), evaluate, num_steps, step_size, method,
                                       key_axis, unroll)
    n = max(num_steps, 1)
    return ChainResult(jax.lax.stop_gradient(state.z), acc / n, gnorm / n)


def sample_base(
    key: Array, shape: tuple[int, ...], sigma: float, dtype=jnp.float32, key_axis: int | None = None
) -> Array:
    """Draws z_0 ~ π0 = N(0, σ0² I) with the given (..., nz) shape (per-index keys: see `draw`)."""
    return sigma * draw(jax.random.normal, key, shape, dtype, key_axis)


@dataclasses.dataclass(frozen=True)
class ChainSpec:
    """Settings of one short-run chain (K steps of size s, ULA or MALA) and the chain they run.

    ``unroll`` is how the loop is compiled (`lebm_jax.core.backend.chain_unroll` picks it), not a
    property of the chain: any value gives the same draws up to float rounding.
    """

    num_steps: int
    step_size: float
    method: str = "ula"
    unroll: int | bool = 1  # steps per loop iteration, see langevin_chain

    def validate(self, name: str) -> "ChainSpec":
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 0:
            raise ValueError(f"{name}.num_steps={self.num_steps!r} must be an int >= 0")
        if not (isinstance(self.step_size, (int, float)) and self.step_size > 0):
            raise ValueError(f"{name}.step_size={self.step_size!r} must be a number > 0")
        if self.method not in METHODS:
            raise ValueError(f"{name}.method={self.method!r} is not one of {METHODS}")
        return self

    def run(self, key: Array, z0: Array, log_prob_fn: LogProbFn, key_axis: int | None = None) -> ChainResult:
        return langevin_chain(
            key, z0, log_prob_fn, self.num_steps, self.step_size, self.method, key_axis, self.unroll
        )
