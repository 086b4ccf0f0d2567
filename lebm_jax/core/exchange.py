"""Replica exchange (parallel tempering) between neighbouring rungs of a temperature ladder.

Rung i of a ladder t_0 < t_1 < … < t_{T−1} holds chains z_i targeting the power posterior

    π_{t_i}(z) ∝ exp(t_i ℓ(z)) p_α(z),        ℓ(z) = log p_β(x | z).

A swap of the states of rungs i and i+1 (same chain, same example) is a Metropolis move on the product
∏_i π_{t_i}: the proposal is symmetric and the prior p_α cancels, so it is accepted with probability

    min(1, exp((t_i − t_{i+1}) (ℓ(z_{i+1}) − ℓ(z_i)))).

Each round proposes a set of disjoint pairs at once, all even pairs (0,1), (2,3), … or all odd pairs
(1,2), (3,4), …, alternating between rounds (docs/design.md §3, "Replica exchange").

Shapes: z is (T, ..., nz) with the rung on axis 0; every other leading index is an independent chain
(a swap only ever exchanges two entries of one chain index). ``ℓ`` is (T, ...). With ``key_axis`` set,
``key`` holds one key per index of that axis of z (e.g. per example) and each index's swap decisions
come from its own key only, as in `lebm_jax.core.langevin.langevin_chain`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lebm_jax.core.langevin import ChainSpec, ChainState, draw, langevin_steps, split_keys

Array = jax.Array


class ExchangeResult(NamedTuple):
    """What a ladder's chains with replica exchange return: a `ChainResult` plus the swap statistics.

    z:            (T, ..., nz) final states, after the last exchange round.
    accept_rate:  (T, ...) Langevin (MALA) acceptance at each rung position, over all steps (1 for ULA).
    grad_norm:    (T, ...) mean over steps of ||∇ log π(z_k)|| at each rung position.
    swap_accept:  (T − 1, ...) fraction of accepted swaps of pair (i, i+1) over the rounds that proposed it;
                  NaN for a pair no round proposed (the odd pairs when there is a single round).
    """

    z: Array
    accept_rate: Array
    grad_norm: Array
    swap_accept: Array


def check_exchange_every(exchange_every: int, num_steps: int, name: str = "exchange_every") -> None:
    """Raises ValueError naming ``name`` unless ``exchange_every`` is an int >= 0 (0: no exchange) that,
    when positive, divides the chain's ``num_steps``."""
    if isinstance(exchange_every, bool) or not isinstance(exchange_every, int) or exchange_every < 0:
        raise ValueError(f"{name}={exchange_every!r} must be an int >= 0 (0: no replica exchange)")
    if exchange_every and num_steps % exchange_every:
        raise ValueError(
            f"{name}={exchange_every!r} must divide the posterior chain's num_steps={num_steps} "
            "(Langevin steps between exchange rounds)"
        )


def num_proposals(num_temps: int, num_rounds: int) -> np.ndarray:
    """(T − 1,) how many of ``num_rounds`` alternating rounds (even pairs first) propose pair (i, i+1)."""
    parity = np.arange(num_temps - 1) % 2
    return (num_rounds - parity + 1) // 2


def _along_rungs(a: Array, ndim: int) -> Array:
    """``a`` of shape (n, ...) with trailing unit axes up to ``ndim`` axes."""
    return a.reshape(a.shape + (1,) * (ndim - a.ndim))


def swap_round(
    key: Array, z: Array, log_lik: Array, temperatures: Array, parity: int | Array, key_axis: int | None = None
) -> tuple[Array, Array, Array]:
    """One exchange round: each pair (i, i+1) with i % 2 == parity, for each chain independently.

    Args:
      key: PRNG key, or with ``key_axis`` one key per index of that axis of z.
      z: (T, ..., nz) states, or a pytree of arrays with leading shape (T, ...) exchanged together (a state
        and what was computed at it); log_lik: (T, ...) ℓ(z); temperatures: (T,) increasing.
      parity: 0 (pairs (0,1), (2,3), …) or 1 (pairs (1,2), (3,4), …); may be traced.
      key_axis: see ``key`` (an axis of z other than 0 and the last).

    Returns:
      (z, log_lik) with the accepted pairs' states exchanged, and the accept indicators (T − 1, ...),
      False for the pairs this round does not propose.
    """
    num_temps = temperatures.shape[0]
    ts = _along_rungs(temperatures.astype(log_lik.dtype), log_lik.ndim)  # (T, 1, ...)
    log_alpha = (ts[:-1] - ts[1:]) * (log_lik[1:] - log_lik[:-1])  # (T − 1, ...)
    u = draw(jax.random.uniform, key, log_alpha.shape, log_alpha.dtype, key_axis)
    proposed = _along_rungs(jnp.arange(num_temps - 1) % 2 == parity, log_alpha.ndim)
    accepted = proposed & (jnp.log(u) < log_alpha)  # (T − 1, ...)

    # The proposed pairs are disjoint, so a rung takes its upper neighbour's state, its lower
    # neighbour's, or keeps its own.
    none = jnp.zeros_like(accepted[:1])
    from_above = jnp.concatenate([accepted, none])  # (T, ...): rung i takes rung i+1's state
    from_below = jnp.concatenate([none, accepted])  # (T, ...): rung i takes rung i−1's state

    def exchange(a: Array) -> Array:  # (T, ...) or (T, ..., nz)
        above = jnp.concatenate([a[1:], a[-1:]])
        below = jnp.concatenate([a[:1], a[:-1]])
        up, down = _along_rungs(from_above, a.ndim), _along_rungs(from_below, a.ndim)
        return jnp.where(up, above, jnp.where(down, below, a))

    return jax.tree.map(exchange, z), exchange(log_lik), accepted


class LadderParts(NamedTuple):
    """What a rung's log-density is built from at a state z, none of it depending on the rung's temperature:
    ℓ(z), ∇ℓ(z), log p_α(z), ∇ log p_α(z). A state keeps them when a swap moves it to another rung, whose
    log π_t = t ℓ + log p_α and score t ∇ℓ + ∇ log p_α are then rebuilt without evaluating a network."""

    log_lik: Array  # (T, ...)
    lik_score: Array  # (T, ..., nz)
    log_prior: Array  # (T, ...)
    prior_score: Array  # (T, ..., nz)


def _value_and_grad(fn: Callable[[Array], Array], z: Array) -> tuple[Array, Array]:
    value, vjp = jax.vjp(fn, z)
    (grad,) = vjp(jnp.ones_like(value))
    return value, grad


def exchange_chain(
    chain: ChainSpec,
    key: Array,
    z0: Array,
    log_lik_fn: Callable[[Array], Array],
    log_prior_fn: Callable[[Array], Array],
    temperatures: Array,
    exchange_every: int,
    key_axis: int | None = None,
    prior_rungs: int = 0,
) -> ExchangeResult:
    """The ladder's Langevin chains with a replica-exchange round after every ``exchange_every`` steps.

    Rung i targets log π_i(z) = t_i ℓ(z) + log p_α(z). ``chain.num_steps`` K is split into K / exchange_every
    rounds of ``exchange_every`` Langevin steps (``chain``'s method, ULA or MALA) followed by one
    `swap_round`; rounds alternate between even and odd pairs, even first.

    Cost: each step evaluates ℓ and log p_α with their gradients at the new (or proposed) states, keeping
    them apart (`LadderParts`), and the chain carries them from step to step, so a round's swap test reads
    the ℓ of the segment's last step and a swapped state's score at its new rung is t ∇ℓ + ∇ log p_α, with
    no network call. The only extra work over independent chains is at the ``prior_rungs`` leading rungs
    with t = 0 exactly, whose steps skip the generator: their ℓ and ∇ℓ are computed once per round, before
    the swap (a fraction prior_rungs / ((T − prior_rungs) · exchange_every) of the chains' generator work).

    Args:
      chain: the Langevin settings; ``exchange_every`` must divide its num_steps.
      key: PRNG key, or one per index of axis ``key_axis`` of z0; each round's Langevin and swap keys
        are split from it, so with per-example keys an example's chains depend on its key only.
      z0: (T, ..., nz) initial states, rung on axis 0.
      log_lik_fn: (R, ..., nz) -> (R, ...) ℓ(z) for any number R of rungs' states (the quantity the
        temperatures multiply; it must not depend on the rung).
      log_prior_fn: (R, ..., nz) -> (R, ...) log p_α(z) (+ a constant).
      temperatures: (T,) increasing; the first ``prior_rungs`` must be exactly 0 (the caller vouches for it).
      exchange_every: Langevin steps per round, >= 1.
      key_axis: see ``key``.
      prior_rungs: see Cost.
    """
    check_exchange_every(exchange_every, chain.num_steps)
    if exchange_every < 1:
        raise ValueError(f"exchange_every={exchange_every!r}: replica exchange needs at least 1 step per round")
    num_temps = temperatures.shape[0]
    if z0.shape[0] != num_temps:
        raise ValueError(f"z0 of shape {z0.shape} must have one rung per temperature ({num_temps}) on axis 0")
    if not 0 <= prior_rungs <= num_temps:
        raise ValueError(f"prior_rungs={prior_rungs} must be in [0, {num_temps}]")
    num_rounds = chain.num_steps // exchange_every
    unroll = chain.unroll
    seg_unroll = unroll if isinstance(unroll, bool) else min(unroll, exchange_every)
    # Rounds per loop iteration: as many as the chain unrolls steps (all of them when it is fully unrolled).
    rounds_unroll = num_rounds if unroll is True else int(unroll) // exchange_every
    rounds_unroll = max(1, rounds_unroll)
    ts = _along_rungs(temperatures.astype(z0.dtype), z0.ndim - 1)  # (T, 1, ...)

    def combine(parts: LadderParts) -> tuple[Array, Array]:  # each rung's log π_t and score
        return (ts * parts.log_lik + parts.log_prior,
                ts[..., None] * parts.lik_score + parts.prior_score)

    def evaluate(z):  # (T, ..., nz) -> (log π, score, parts); the prior rungs' ℓ and ∇ℓ are left at 0
        ll, gl = _value_and_grad(log_lik_fn, z[prior_rungs:])
        if prior_rungs:
            ll = jnp.concatenate([jnp.zeros((prior_rungs,) + ll.shape[1:], ll.dtype), ll])
            gl = jnp.concatenate([jnp.zeros((prior_rungs,) + gl.shape[1:], gl.dtype), gl])
        lp, gp = _value_and_grad(log_prior_fn, z)
        parts = LadderParts(ll, gl, lp, gp)
        return (*combine(parts), parts)

    def one_round(carry, xs):
        state, acc, gnorm, swaps = carry
        k, parity = xs
        k_chain, k_swap = split_keys(k, 2, key_axis)
        state, a, g = langevin_steps(k_chain, state, evaluate, exchange_every, chain.step_size, chain.method,
                                     key_axis, seg_unroll)
        parts = state.extra
        if prior_rungs:  # the t = 0 rungs' ℓ, needed by the swap test and by a state that moves up
            ll0, gl0 = _value_and_grad(log_lik_fn, state.z[:prior_rungs])
            parts = parts._replace(log_lik=jnp.concatenate([ll0, parts.log_lik[prior_rungs:]]),
                                   lik_score=jnp.concatenate([gl0, parts.lik_score[prior_rungs:]]))
        (z, parts), _, accepted = swap_round(k_swap, (state.z, parts), parts.log_lik, temperatures, parity, key_axis)
        state = ChainState(z, *combine(parts), parts)
        return (state, acc + a, gnorm + g, swaps + accepted.astype(swaps.dtype)), None

    zeros = jnp.zeros_like(z0[..., 0])  # (T, ...); inherits z0's sharding type inside shard_map
    init = (ChainState(z0, *evaluate(z0)), zeros, zeros, zeros[1:])
    round_keys = split_keys(key, num_rounds, key_axis)  # (R,) or (R, n)
    parities = jnp.arange(num_rounds) % 2
    (state, acc, gnorm, swaps), _ = jax.lax.scan(one_round, init, (round_keys, parities), unroll=rounds_unroll)
    n = max(chain.num_steps, 1)
    proposals = _along_rungs(jnp.asarray(num_proposals(num_temps, num_rounds)), swaps.ndim)  # (T − 1, 1, ...)
    # A pair no round proposed has no rate: NaN (selected, since XLA may fold a division by a NaN constant).
    swap_accept = jnp.where(proposals > 0, swaps / jnp.maximum(proposals, 1).astype(swaps.dtype), jnp.nan)
    return ExchangeResult(jax.lax.stop_gradient(state.z), acc / n, gnorm / n, swap_accept)
