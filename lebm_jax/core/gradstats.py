"""Variance of the learning gradient: what the study measures (design.md §5).

The learning gradient ĝ(θ; B, ξ) depends on the minibatch B and the MCMC noise ξ. At fixed θ:

- total variance   Var_{B,ξ}[ĝ]: R independent pairs (B_r, ξ_r);
- MCMC variance    E_B Var_ξ[ĝ | B]: M fixed minibatches, R independent ξ each, within-batch variance
                   averaged over the M batches;
- data variance    = total − MCMC (law of total variance: Var_B E_ξ[ĝ | B]).

Each is the unbiased (ddof = 1) per-coordinate variance, averaged over coordinates, reported for the
EBM parameters α ("ebm"), the generator parameters β ("gen") and both ("all"). Also:

- normalised variance (Faghri et al. 2020): Σ_coords Var / ||E ĝ||², the noise-to-signal ratio;
- grad_norm: ||E ĝ||, from the R total draws as sqrt(||ḡ||² − Σ_coords Var / R) (unbiased for the square);
- loss variance: per example, the variance of its loss estimate over MCMC draws, averaged over examples;
- coord_var: the spread of the coordinates of ONE gradient, averaged over draws. It is not the variance
  of an estimator (it is what some published code reports as "gradient variance"); kept only to
  compare with such code.

All draws are computed with vmap (``lax.map`` in chunks of ``chunk`` draws when memory is tight).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from lebm_jax.core.objectives import loss_and_grads

Array = jax.Array
Params = Any
# (params, x (B, ...), key) -> (grads {"ebm": ..., "gen": ...}, per-example losses {"ebm": (B,), "gen": (B,)})
GradFn = Callable[[Params, Array, Array], tuple[Params, dict]]

GROUPS = ("ebm", "gen", "all")


class GradientStatistics(NamedTuple):
    scalars: dict  # "total_var/ebm", "mcmc_var/gen", ... -> scalar
    total_var: Params  # per-coordinate total variance, same tree as the gradient
    mcmc_var: Params  # per-coordinate MCMC variance
    mean_grad: Params  # mean of the R total draws


def objective_grad_fn(objective, temperatures=None) -> GradFn:
    """The GradFn of an objective: its gradients and per-example EBM and generator losses. ``temperatures``
    (ti only; may be traced): the ladder to run on instead of the objective's own (a run's adapted ladder)."""

    def fn(params, x, key):
        res = loss_and_grads(objective, params, x, key, temperatures)
        return res.grads, {"ebm": res.aux.per_example.ebm, "gen": res.aux.per_example.gen}

    return fn


def _map(fn, xs, chunk: int | None):
    """vmap over the leading axis, or lax.map in vmapped chunks of ``chunk``."""
    if chunk is None:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=chunk)


def _group(tree: Params, group: str) -> list[Array]:
    if group == "all":
        return jax.tree.leaves(tree)
    return jax.tree.leaves(tree[group])


def _coord_mean(tree: Params, group: str) -> Array:
    leaves = _group(tree, group)
    return sum(jnp.sum(l) for l in leaves) / sum(l.size for l in leaves)


def _coord_sum(tree: Params, group: str) -> Array:
    return sum(jnp.sum(l) for l in _group(tree, group))


def minibatch(key: Array, data: Array, batch_size: int) -> Array:
    """A minibatch drawn uniformly without replacement: (batch_size, ...)."""
    idx = jax.random.permutation(key, data.shape[0])[:batch_size]
    return data[idx]


def coordinate_spread(grads: Params, group: str) -> Array:
    """Variance across the coordinates of each gradient in a stack (R, ...), averaged over the R draws."""
    leaves = [l.reshape(l.shape[0], -1) for l in _group(grads, group)]
    flat = jnp.concatenate(leaves, axis=1)  # (R, P)
    return jnp.mean(jnp.var(flat, axis=1))


def gradient_statistics(
    grad_fn: GradFn,
    params: Params,
    data: Array,
    key: Array,
    *,
    batch_size: int,
    num_draws: int,
    num_batches: int = 1,
    chunk: int | None = None,
) -> GradientStatistics:
    """Total, MCMC and data variance of the learning gradient at ``params`` (see module docstring).

    Args:
      grad_fn: (params, x, key) -> (grads, per-example losses), e.g. ``objective_grad_fn(objective)``.
      data: (n, ...) the data set minibatches are drawn from.
      batch_size: |B|.
      num_draws: R ≥ 2, draws for the total variance and MCMC draws per fixed batch.
      num_batches: M ≥ 1 fixed batches for the MCMC variance.
      chunk: draws computed at once (None: all R at once).
    Costs R (1 + M) gradient evaluations.
    """
    if num_draws < 2:
        raise ValueError(f"num_draws={num_draws!r}: a variance needs at least 2 draws")
    if num_batches < 1:
        raise ValueError(f"num_batches={num_batches!r} must be >= 1")
    if not 1 <= batch_size <= data.shape[0]:
        raise ValueError(f"batch_size={batch_size!r} must be between 1 and the data size {data.shape[0]}")
    k_total, k_batches, k_mcmc = jax.random.split(key, 3)

    # Total: R independent (B_r, ξ_r).
    total_keys = jax.vmap(jax.random.split)(jax.random.split(k_total, num_draws))  # (R, 2): batch, chains
    xs_total = jax.vmap(lambda k: minibatch(k, data, batch_size))(total_keys[:, 0])  # (R, B, ...)
    # MCMC: M fixed batches, R independent ξ for each.
    batches = jax.vmap(lambda k: minibatch(k, data, batch_size))(jax.random.split(k_batches, num_batches))
    xs_mcmc = jnp.repeat(batches, num_draws, axis=0)  # (M·R, B, ...)
    # All R·(1 + M) gradients in one map: one traced (and compiled) gradient program, not two.
    xs = jnp.concatenate([xs_total, xs_mcmc])
    keys = jnp.concatenate([total_keys[:, 1], jax.random.split(k_mcmc, num_batches * num_draws)])
    grads, losses = _map(lambda a: grad_fn(params, a[0], a[1]), (xs, keys), chunk)
    g_total = jax.tree.map(lambda l: l[:num_draws], grads)  # leaves (R, ...)
    unflat = lambda l: l[num_draws:].reshape((num_batches, num_draws) + l.shape[1:])  # noqa: E731
    g_mcmc, losses = jax.tree.map(unflat, grads), jax.tree.map(unflat, losses)

    total_var = jax.tree.map(lambda g: jnp.var(g, axis=0, ddof=1), g_total)
    mcmc_var = jax.tree.map(lambda g: jnp.mean(jnp.var(g, axis=1, ddof=1), axis=0), g_mcmc)
    mean_grad = jax.tree.map(lambda g: jnp.mean(g, axis=0), g_total)

    scalars = {}
    for group in GROUPS:
        tot, mc = _coord_mean(total_var, group), _coord_mean(mcmc_var, group)
        # ||E ĝ||² without the +tr(Σ)/R bias of ||ḡ||² (clipped at 0; it can dip below when noise dominates)
        sq_norm = jnp.maximum(
            _coord_sum(jax.tree.map(jnp.square, mean_grad), group) - _coord_sum(total_var, group) / num_draws, 0.0
        )
        scalars[f"total_var/{group}"] = tot
        scalars[f"mcmc_var/{group}"] = mc
        scalars[f"data_var/{group}"] = tot - mc
        scalars[f"normalised_var/{group}"] = _coord_sum(total_var, group) / sq_norm
        scalars[f"grad_norm/{group}"] = jnp.sqrt(sq_norm)
        scalars[f"coord_var/{group}"] = coordinate_spread(g_total, group)
    for name in ("ebm", "gen"):
        scalars[f"loss_var/{name}"] = jnp.mean(jnp.var(losses[name], axis=1, ddof=1))  # (M, R, B) -> scalar
    return GradientStatistics(scalars, total_var, mcmc_var, mean_grad)
