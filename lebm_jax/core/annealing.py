"""Annealed sweeps through a temperature ladder: thermodynamic integration and annealed importance
sampling (AIS) of log p(x) from the same chains (design.md §9).

Each of S chains per example walks the ladder 0 = t_0 < t_1 < … < t_{N-1} = 1 once:

    z ~ p_α                                  (``prior_steps`` MALA steps on p_α from π0 = N(0, σ0² I))
    ℓ_0 = ℓ(z)                               ℓ(z) = log p_β(x|z)
    for i = 1 .. N-1:
        log w += (t_i − t_{i−1}) ℓ(z)        AIS increment at the state reached at t_{i−1}
        z ← K_i(z)                            ``steps_per_rung`` MALA steps, each leaving π_{t_i} invariant
        ℓ_i = ℓ(z)                           the chain's draw at rung i

- TI: log p̂(x) = trapezoid over t of the rung means E_i = mean_s ℓ_{i,s}. Each rung's chains start
  from the previous rung's (warm start), so a few steps per rung suffice on a fine ladder; what is left
  of the lag makes the estimate too low.
- AIS: log p̂(x) = log mean_s exp(log w_s). E[w] = p(x) exactly for any ladder and any number of steps,
  provided the start is a draw from p_α and every K_i leaves π_{t_i} invariant; so the MALA step size of
  each rung is fixed before the sweep, by a pilot sweep (`tune_step_sizes`), never adapted inside it.
  By Jensen, E[log p̂] ≤ log p(x), by about Var(log w)/(2S).

The two estimates share their chains but not their systematic errors (TI: the trapezoid's
discretisation and the lag; AIS: the Jensen gap), so their paired difference per example is a check on
both. ``ti_half`` (the trapezoid over every other rung, a ladder of (N+1)/2 rungs with the same power)
is the convergence check of the discretisation: for a smooth integrand the full ladder's error is about
a third of the difference.

Given the kernels, an example's draws depend only on its own key, not on the batch it is in (the pilot
pools its acceptance and covariance over the batch). The sweep runs as a Python loop over one compiled
MALA step (`_walk`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lebm_jax.core import ladder
from lebm_jax.core.langevin import draw, sample_base, split_keys
from lebm_jax.core.model import LatentEBM

Array = jax.Array
Params = Any

FRIEL_MAX_RATIO = 3.0  # `friel_reliable`: neighbouring rung variances within this factor of each other


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """Settings of the annealed sweep: the ladders, the MALA chains, the pilot's target acceptance."""

    num_temps: int = 101
    power: float = 4.0
    steps_per_rung: int = 10
    ais_substeps: int = 40  # m: AIS rungs per TI interval, one MALA step at each but the last
    num_chains: int = 4
    prior_steps: int = 100
    target_accept: float = 0.6
    adapt_rate: float = 1.0  # pilot: log s += rate · (acceptance − target) after every rung
    initial_step_size: float = 0.5  # pilot: the first step size (prior stage: in units of σ0; rungs: whitened)

    def ladder(self) -> Array:
        """The TI ladder: N rungs t_i = (i/(N−1))^p."""
        return ladder.power_schedule(self.num_temps, self.power)

    def ais_ladder(self) -> Array:
        """The AIS ladder: (N−1)·m + 1 rungs of the same power; every m-th is a rung of the TI ladder."""
        return ladder.power_schedule((self.num_temps - 1) * self.ais_substeps + 1, self.power)


class StepSizes(NamedTuple):
    """The MALA kernels of a sweep, fixed before it by the pilot: step sizes (in whitened units) and
    preconditioners L (covariance L Lᵀ) for the p_α stage, each AIS rung (step sizes) and each TI interval
    (L); entry 0 unused."""

    prior: Array  # ()
    rungs: Array  # ((N − 1) m + 1,): one per AIS rung
    prior_chol: Array  # (nz, nz)
    rung_chol: Array  # (N, nz, nz): one per TI interval


class SweepResult(NamedTuple):
    """Per-example estimates of log p(x) (all (B,) unless said otherwise).

    ti:            trapezoid over the rung means on the full ladder.
    ti_half:       the same on every other rung (the convergence check).
    ti_chains:     (S, B) the trapezoid of each chain's own draws (its mean over chains is ``ti``).
    ais:           log mean_s exp(log w_s).
    log_weights:   (S, B) AIS log weights.
    ess:           (Σ_s w_s)² / Σ_s w_s², in [1, S]: the effective number of chains of the AIS weights.
    rung_mean:     (N, B) E_i; rung_var: (N, B) V_i, unbiased over the S chains.
    friel:         the Friel et al. (2014) correction −Σ (Δt_i²/12)(V_i − V_{i−1}) on the full ladder.
    friel_reliable: bool, whether `friel_reliable` vouches for the correction on this example.
    accept:        ((N−1)m + 1,) mean MALA acceptance at each AIS rung (entry 0: the prior stage).
    """

    ti: Array
    ti_half: Array
    ti_chains: Array
    ais: Array
    log_weights: Array
    ess: Array
    rung_mean: Array
    rung_var: Array
    friel: Array
    friel_reliable: Array
    accept: Array


def friel_reliable(rung_var: Array, max_ratio: float = FRIEL_MAX_RATIO, axis: int = 0) -> Array:
    """Whether the Friel correction can be trusted on a ladder, from its rung variances V_i (axis ``axis``).

    The correction is the leading term of the trapezoid's error, which holds only where V_t = dE_t/dt
    changes little across each interval. Rule: every neighbouring pair of rung variances lies within a
    factor ``max_ratio`` (3) of each other. On the linear-Gaussian model's exact E_t and V_t (D = 64 to
    784, N = 5 to 200, p = 0.3 to 6) every ladder that passes has its trapezoid error cut by at least 90%
    by the correction; the coarse ladders where the correction overshoots by orders of magnitude all fail
    (tests/test_annealing.py).
    """
    v = jnp.maximum(jnp.moveaxis(rung_var, axis, 0), jnp.finfo(jnp.result_type(rung_var, jnp.float32)).tiny)
    ratio = jnp.maximum(v[1:] / v[:-1], v[:-1] / v[1:])
    return jnp.all(ratio <= max_ratio, axis=0)


class _State(NamedTuple):
    """Chains and what a MALA step needs of them at any t: π_t's log-density t·ℓ + lp and its score
    t·∇ℓ + ∇lp, so that moving to the next rung costs nothing."""

    z: Array  # (S, B, nz)
    ell: Array  # (S, B) ℓ(z) = log p_β(x|z)
    lp: Array  # (S, B) log p_α(z) + log Z_α
    g_ell: Array  # (S, B, nz) ∇ℓ
    g_lp: Array  # (S, B, nz) ∇lp


def _evaluate(model: LatentEBM, params: Params, x: Array, z: Array, with_lik: bool) -> _State:
    """_State at z; without the likelihood (the prior stage) ℓ and ∇ℓ are zeros and the generator is not run."""
    def grad_of(fn):
        value, vjp = jax.vjp(fn, z)
        return value, vjp(jnp.ones_like(value))[0]

    lp, g_lp = grad_of(lambda zz: model.log_prior(params["ebm"], zz))
    if with_lik:
        ell, g_ell = grad_of(lambda zz: model.log_likelihood(params["gen"], x, zz))
    else:
        ell, g_ell = jnp.zeros_like(lp), jnp.zeros_like(z)
    return _State(z, ell, lp, g_ell, g_lp)


def _whiten(z: Array, chol: Array) -> Array:
    """u = L⁻¹ z for every chain of z (..., nz)."""
    flat = z.reshape(-1, z.shape[-1]).T  # (nz, n)
    return jax.scipy.linalg.solve_triangular(chol, flat, lower=True).T.reshape(z.shape)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _step(model: LatentEBM, with_lik: bool, params: Params, x: Array, st: _State, log_w: Array, t: Array,
          dt: Array, s: Array, chol: Array, keys: Array, index: Array) -> tuple[_State, Array, Array]:
    """The AIS increment log w += dt · ℓ(z), then one MALA step on π_t, preconditioned by L Lᵀ (``chol``).

    The chain moves in u = L⁻¹ z, where the score is Lᵀ∇_z and the proposal u' = u + (s²/2)∇_u log π_t + s ε;
    the Metropolis-Hastings test makes π_t exactly invariant. ``keys`` (B,) per example, folded with the
    step ``index``. Returns (state, log w, mean acceptance).
    """
    log_w = log_w + dt * st.ell
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, index))(keys)
    k_noise, k_accept = split_keys(step_keys, 2, key_axis=0)
    logp = t * st.ell + st.lp
    grad_u = (t * st.g_ell + st.g_lp) @ chol  # Lᵀ ∇_z, chains as rows
    u = _whiten(st.z, chol)
    eps = draw(jax.random.normal, k_noise, u.shape, u.dtype, key_axis=1)
    u_prop = u + 0.5 * s**2 * grad_u + s * eps
    prop = _evaluate(model, params, x, u_prop @ chol.T, with_lik)
    logp_prop = t * prop.ell + prop.lp
    grad_u_prop = (t * prop.g_ell + prop.g_lp) @ chol
    fwd = u_prop - u - 0.5 * s**2 * grad_u  # = s ε
    bwd = u - u_prop - 0.5 * s**2 * grad_u_prop
    log_alpha = logp_prop - logp + (jnp.sum(fwd**2, -1) - jnp.sum(bwd**2, -1)) / (2 * s**2)
    accept = jnp.log(draw(jax.random.uniform, k_accept, log_alpha.shape, u.dtype, key_axis=1)) < log_alpha
    st = jax.tree.map(lambda a, b: jnp.where(accept.reshape(accept.shape + (1,) * (a.ndim - 2)), a, b), prop, st)
    return st, log_w, jnp.mean(accept.astype(u.dtype))


_evaluate_jit = jax.jit(_evaluate, static_argnums=(0, 4))


@jax.jit
def ensemble_chol(z: Array) -> Array:
    """L with L Lᵀ = the within-example covariance of the chains z (S ≥ 2, B, nz), pooled over examples
    and shrunk towards its diagonal by nz/(n + nz) (n = B (S − 1) degrees of freedom)."""
    num_chains, batch, nz = z.shape
    dev = z - jnp.mean(z, axis=0)
    n = batch * (num_chains - 1)
    cov = jnp.einsum("sbi,sbj->ij", dev, dev) / n
    diag = jnp.diag(jnp.diag(cov))
    cov = (n * cov + nz * diag) / (n + nz) + 1e-6 * jnp.eye(nz, dtype=z.dtype)
    return jnp.linalg.cholesky(cov)


SMOOTH_RUNGS = 9  # window of the moving average over rungs of the pilot's log step sizes


def _moving_average(v: Array, width: int) -> Array:
    """Centred moving average of a 1-d array, the ends padded with their edge values."""
    half = min(width // 2, v.shape[0] - 1)
    padded = jnp.concatenate([jnp.repeat(v[:1], half), v, jnp.repeat(v[-1:], half)])
    return jnp.convolve(padded, jnp.ones(2 * half + 1) / (2 * half + 1), mode="valid")


PILOT_CHAINS = 2  # chains per example in the pilot: the fewest that give a within-example covariance


class _Walk(NamedTuple):
    """What a walk through the ladder leaves: the TI rung draws, AIS weights, acceptance, and (pilot) kernels."""

    rung_ell: Array  # (N, S, B): ℓ at t_0 (after the prior stage) and at the end of each TI interval
    log_w: Array  # (S, B)
    accept: Array  # ((N−1)m + 1,): the prior stage's mean acceptance, then each AIS rung's
    step_sizes: Array  # ((N−1)m + 1,): the prior stage's step size, then each AIS rung's (pilot: adapted)
    chols: Array  # (N, nz, nz): the prior stage's L, then the one used in each TI interval (pilot: the
    #               chains' covariance at its start)


def _walk(model: LatentEBM, params: Params, x: Array, keys: Array, spec: SweepSpec, num_chains: int,
          kernels: "StepSizes | None") -> _Walk:
    """The prior stage and the sweep, one compiled MALA step at a time from Python.

    With ``kernels`` None (the pilot) the step size follows the acceptance after every step and the
    preconditioner is re-estimated from the chains at the start of the prior stage's second half and at
    the end of every TI interval; otherwise both are taken from ``kernels`` and held fixed.
    A Python loop over one compiled step: it compiles in seconds on every backend (an unrolled or scanned
    sweep through a conv generator compiles for minutes on CPU, whose loop bodies also run convolutions
    several times slower), for about a tenth of a millisecond of dispatch per step.
    """
    pilot = kernels is None
    nz, m, k = model.latent_dim, spec.ais_substeps, spec.steps_per_rung
    k0, keys = split_keys(keys, 2, key_axis=0)
    z0 = sample_base(k0, (num_chains, keys.shape[0], nz), model.prior_sigma, key_axis=1)
    st = _evaluate_jit(model, params, x, z0, False)
    log_w = jnp.zeros(z0.shape[:-1])
    index = 0

    def adapt(log_s, acc):
        return log_s + spec.adapt_rate * (acc - spec.target_accept)

    # Prior stage: t = 0, no generator.
    if pilot:
        chol = model.prior_sigma * jnp.eye(nz)
        log_s = jnp.log(jnp.float32(spec.initial_step_size))
    else:
        chol, log_s = kernels.prior_chol, jnp.log(kernels.prior)
    zero = np.float32(0.0)
    accepts = []
    for i in range(spec.prior_steps):
        if pilot and i == max(spec.prior_steps // 2, 1):
            chol, log_s = ensemble_chol(st.z), jnp.log(jnp.float32(spec.initial_step_size))
        st, log_w, acc = _step(model, False, params, x, st, log_w, zero, zero, jnp.exp(log_s), chol, keys,
                               np.int32(index))
        index += 1
        accepts.append(acc)
        if pilot:
            log_s = adapt(log_s, acc)
    prior_s, prior_chol = jnp.exp(log_s), chol
    st = _evaluate_jit(model, params, x, st.z, True)
    rung_ell, rung_accept, rung_steps, chols = [st.ell], [jnp.mean(jnp.stack(accepts))], [prior_s], [prior_chol]

    fine = np.asarray(spec.ais_ladder(), np.float32)  # host values: no device op per step to slice them
    steps_fixed = None if pilot else np.asarray(kernels.rungs, np.float32)
    if pilot:
        chol = ensemble_chol(st.z)
    for i in range(1, spec.num_temps):
        if not pilot:
            chol = kernels.rung_chol[i]
        for j in range(1, m + 1):
            f = (i - 1) * m + j  # AIS rung
            t, dt = fine[f], fine[f] - fine[f - 1]
            s = None if pilot else steps_fixed[f]
            acc_sum = zero
            for n in range(k if j == m else 1):
                st, log_w, acc = _step(model, True, params, x, st, log_w, t, dt if n == 0 else np.float32(0),
                                       jnp.exp(log_s) if pilot else s, chol, keys, np.int32(index))
                index += 1
                acc_sum = acc_sum + acc
                if pilot:
                    log_s = adapt(log_s, acc)
            rung_accept.append(acc_sum / (k if j == m else 1))
            rung_steps.append(jnp.exp(log_s) if pilot else s)
        rung_ell.append(st.ell)
        chols.append(chol)
        if pilot:
            chol = ensemble_chol(st.z)
    return _Walk(jnp.stack(rung_ell), log_w, jnp.stack(rung_accept), jnp.stack(rung_steps), jnp.stack(chols))


def tune_step_sizes(model: LatentEBM, params: Params, x: Array, keys: Array, spec: SweepSpec) -> "StepSizes":
    """A pilot sweep (two chains per example, keys ``keys`` (B,)) that adapts, step by step, the MALA step size
    to ``spec.target_accept`` and, at the end of each TI interval, the preconditioner to the chains'
    within-example covariance.

    Returns each AIS rung's step size (the one the pilot had reached after that rung's steps, smoothed over
    neighbouring rungs: the acceptance of one rung is a noisy guide, and a MALA step past its critical size
    is costly) and each TI interval's preconditioner (the one the pilot used there), to be held fixed in
    `sweep`.
    """
    model.check_data(x)
    walk = _walk(model, params, x, keys, spec, PILOT_CHAINS, None)
    rungs = jnp.exp(_moving_average(jnp.log(walk.step_sizes[1:]), SMOOTH_RUNGS))
    # Interval i runs with the L the pilot used there: its chains' covariance at t_{i−1} (walk.chols[i]).
    return StepSizes(walk.step_sizes[0], jnp.concatenate([walk.step_sizes[:1], rungs]), walk.chols[0], walk.chols)


def sweep(model: LatentEBM, params: Params, x: Array, keys: Array, spec: SweepSpec,
          step_sizes: "StepSizes") -> SweepResult:
    """S annealed chains per example through the ladder with fixed kernels: TI and AIS estimates.

    x: (B, *event); keys: (B,) one per example.
    """
    model.check_data(x)
    walk = _walk(model, params, x, keys, spec, spec.num_chains, step_sizes)
    return summarise(spec.ladder(), walk.rung_ell, walk.log_w, walk.accept)


def summarise(ts: Array, ell: Array, log_w: Array, accept: Array) -> SweepResult:
    """The estimates from the draws ℓ (N, S, B) and the AIS log weights (S, B) of a sweep on ladder ``ts``."""
    num_chains = ell.shape[1]
    ti_chains = ladder.trapezoid(ts, ell)  # (S, B)
    rung_mean = jnp.mean(ell, axis=1)
    rung_var = jnp.var(ell, axis=1, ddof=1)
    log_mean_w = jax.nn.logsumexp(log_w, axis=0) - jnp.log(num_chains)
    w = jnp.exp(log_w - jnp.max(log_w, axis=0))
    ess = jnp.sum(w, 0) ** 2 / jnp.sum(w**2, 0)
    return SweepResult(
        ti=jnp.mean(ti_chains, 0),
        ti_half=ladder.trapezoid(ts[::2], rung_mean[::2]),
        ti_chains=ti_chains,
        ais=log_mean_w,
        log_weights=log_w,
        ess=ess,
        rung_mean=rung_mean,
        rung_var=rung_var,
        friel=ladder.friel_correction(ts, rung_var),
        friel_reliable=friel_reliable(rung_var),
        accept=accept,
    )


def estimate(model: LatentEBM, params: Params, x: Array, key: Array, spec: SweepSpec) -> SweepResult:
    """`tune_step_sizes` then `sweep` with independent keys from ``key`` (one key, or one per example)."""
    keys = jax.random.split(key, x.shape[0]) if key.shape == () else key
    k_pilot, k_sweep = split_keys(keys, 2, key_axis=0)
    return sweep(model, params, x, k_sweep, spec, tune_step_sizes(model, params, x, k_pilot, spec))
