"""The temperature ladder of thermodynamic integration and its quadrature rules.

    log p(x) = ∫_0^1 E_{π_t(z|x)}[log p_β(x|z)] dt,    π_t(z|x) ∝ p_β(x|z)^t p_α(z),

estimated on rungs t_i = (i/(N-1))^p by the trapezoid rule, optionally with the Friel et al. (2014)
correction that uses the rung variances V_i = Var_{π_{t_i}}[log p_β(x|z)] (= dE_t/dt).

The adaptive ladder (`adapt_ladder`, design.md §3 "Adaptive ladder") instead re-places the rungs during training
so that each interval carries an equal share of the thermodynamic length ∫_0^1 √V_t dt, estimated from the
rung statistics of the current ladder.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def check_ladder(num_temps: int, power: float) -> None:
    """Raises ValueError naming the field when (num_temps, power) do not define a ladder."""
    if isinstance(num_temps, bool) or not isinstance(num_temps, int) or num_temps < 2:
        raise ValueError(f"ti.num_temps={num_temps!r}: a ladder needs an int of at least 2 rungs (t=0 and t=1)")
    if not (isinstance(power, (int, float)) and float(power) > 0.0 and math.isfinite(power)):
        raise ValueError(f"ti.power={power!r}: the schedule power must be a finite number > 0")


def check_temperatures(temperatures, where: str = "temperatures") -> np.ndarray:
    """A given ladder as a float32 numpy array (N,), or a ValueError naming ``where``: at least 2 finite rungs,
    strictly increasing, t_0 = 0 exactly (its chains skip the generator) and t_{N−1} = 1 (the integral's end)."""
    ts = np.asarray(temperatures, np.float32)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"{where} of shape {ts.shape}: a ladder is a vector of at least 2 rungs")
    if not np.all(np.isfinite(ts)) or ts[0] != 0.0 or ts[-1] != 1.0 or not np.all(np.diff(ts) > 0):
        raise ValueError(f"{where}={[round(float(t), 6) for t in ts]}: a ladder must increase strictly from exactly 0 to "
                         "exactly 1")
    return ts


def power_schedule(num_temps: int, power: float, dtype=jnp.float32) -> Array:
    """t_i = (i/(N-1))^p for i = 0..N-1: t_0 = 0, t_{N-1} = 1, increasing.

    p = 1 is uniform; p > 1 crowds rungs near the prior (t = 0); p < 1 near the posterior (t = 1).
    """
    check_ladder(num_temps, power)
    u = jnp.arange(num_temps, dtype=dtype) / (num_temps - 1)
    return u ** jnp.asarray(power, dtype)


def trapezoid(ts: Array, values: Array, axis: int = 0) -> Array:
    """Σ_{i=1}^{N-1} ½ (t_i − t_{i−1}) (v_i + v_{i−1}), integrating along ``axis`` of ``values``."""
    values = jnp.moveaxis(values, axis, 0)  # (N, ...)
    dt = jnp.diff(ts).reshape((-1,) + (1,) * (values.ndim - 1))
    return jnp.sum(0.5 * dt * (values[1:] + values[:-1]), axis=0)


def trapezoid_weights(ts: Array) -> Array:
    """Weights w_i with Σ_i w_i v_i = trapezoid(ts, v): w_i = ½ (t_{i+1} − t_{i−1}) inside, ½ Δt at the ends."""
    dt = jnp.diff(ts)
    zero = jnp.zeros((1,), ts.dtype)
    return 0.5 * (jnp.concatenate([dt, zero]) + jnp.concatenate([zero, dt]))


def friel_correction(ts: Array, variances: Array, axis: int = 0) -> Array:
    """−Σ_{i=1}^{N-1} (Δt_i² / 12) (V_i − V_{i−1}): the trapezoid's leading error term (Friel et al. 2014)."""
    variances = jnp.moveaxis(variances, axis, 0)
    dt = jnp.diff(ts).reshape((-1,) + (1,) * (variances.ndim - 1))
    return -jnp.sum(dt**2 / 12.0 * (variances[1:] - variances[:-1]), axis=0)


def corrected_trapezoid(ts: Array, expectations: Array, variances: Array, axis: int = 0) -> Array:
    """Trapezoid estimate of log p(x) plus the Friel et al. (2014) correction."""
    return trapezoid(ts, expectations, axis) + friel_correction(ts, variances, axis)


class TIEstimate(NamedTuple):
    """The thermodynamic-integration estimate of log p(x) from per-chain log-likelihoods on a ladder.

    log_px:       (B,) trapezoid over the rungs of ``integrand`` (by default the rung means E_i).
    rung_mean:    (T, B) E_i = mean over chains of log p_β(x | z_{i,s}).
    rung_var:     (T, B) V_i = unbiased variance over chains; None with one chain per example.
    log_px_friel: (B,) log_px plus the Friel et al. (2014) correction; None with one chain per example.
    """

    log_px: Array
    rung_mean: Array
    rung_var: Array | None
    log_px_friel: Array | None


def ti_estimate(ts: Array, log_lik: Array, extra: Array | None = None) -> TIEstimate:
    """log p̂(x) = Σ_i ½ (t_i − t_{i−1}) (E_i + E_{i−1}) from ``log_lik`` (T, S, B): S chains per rung and example.

    ``extra`` (T, B), if given, is added to the rung means before integrating (the "fisher" gradient's
    covariance term, whose value is 0). With S ≥ 2 chains the rung variances V_i and the Friel-corrected
    estimate log_px − Σ_i (Δt_i² / 12)(V_i − V_{i−1}) come with it (design.md §3).
    """
    rung_mean = jnp.mean(log_lik, axis=1)  # (T, B)
    integrand = rung_mean if extra is None else rung_mean + extra
    log_px = trapezoid(ts, integrand)  # (B,)
    if log_lik.shape[1] < 2:
        return TIEstimate(log_px, rung_mean, None, None)
    rung_var = jnp.var(log_lik, axis=1, ddof=1)  # (T, B)
    return TIEstimate(log_px, rung_mean, rung_var, log_px + friel_correction(ts, rung_var))


def check_adaptation(adapt_every: int, adapt_decay: float) -> None:
    """Raises ValueError naming the field when (ti.adapt_every, ti.adapt_decay) do not define an adaptation."""
    if isinstance(adapt_every, bool) or not isinstance(adapt_every, int) or adapt_every < 0:
        raise ValueError(f"ti.adapt_every={adapt_every!r}: must be an int >= 0 (0: the fixed power ladder)")
    if isinstance(adapt_decay, bool) or not isinstance(adapt_decay, (int, float)) or not 0.0 <= adapt_decay < 1.0:
        raise ValueError(f"ti.adapt_decay={adapt_decay!r}: the moving average's rate must be a number in [0, 1)")


def interval_lengths(ts: Array, rung_mean: Array, rung_var: Array | None = None, substeps: int = 32) -> Array:
    """Estimates of the thermodynamic length ∫_{t_{i−1}}^{t_i} √V_t dt of each interval, (N−1,).

    Without variances: √(Δt_i (E_i − E_{i−1})), i.e. √V_t taken constant on the interval at its exact mean
    (E_i − E_{i−1})/Δt_i (V = dE/dt); Δt_i ΔE_i is the symmetric KL divergence between π_{t_{i−1}} and π_{t_i}.
    With the rung variances V_i: log V interpolated linearly between the rungs (``substeps`` trapezoid
    panels per interval), which follows the near-geometric decay of V_t where it is steep. Negative
    estimates count as 0; NaN stays NaN (the caller's guard).
    """
    dt = jnp.diff(ts)
    if rung_var is None:
        return jnp.sqrt(dt * jnp.maximum(jnp.diff(rung_mean), 0.0))
    tiny = jnp.finfo(rung_var.dtype).tiny
    log_v = jnp.log(jnp.maximum(rung_var, tiny))  # (N,)
    u = jnp.linspace(0.0, 1.0, substeps + 1, dtype=ts.dtype)  # (M + 1,)
    root_v = jnp.exp(0.5 * (log_v[:-1, None] * (1.0 - u) + log_v[1:, None] * u))  # (N − 1, M + 1)
    panels = 0.5 * (root_v[:, 1:] + root_v[:, :-1]) / substeps
    return dt * jnp.sum(panels, axis=1)


def equal_length_ladder(ts: Array, lengths: Array, floor: float = 1e-3) -> Array:
    """The rungs that split the thermodynamic length into N−1 equal shares, from the current rungs ``ts``
    (N,) and the estimated lengths of their intervals (N−1,) (`interval_lengths`).

    The density √V_t is taken constant inside each current interval, so the cumulative length is piecewise
    linear in t and inverting it is linear interpolation. Guards: the density is floored at ``floor`` times
    its mean over [0, 1], so every interval keeps some rungs' worth of weight; t_0 = 0 and t_{N−1} = 1
    exactly; if any length is NaN or infinite, the total is not positive, or the result is not strictly
    increasing, the current ladder ``ts`` is returned unchanged.
    """
    dt = jnp.diff(ts)
    total = jnp.sum(lengths)
    usable = jnp.all(jnp.isfinite(lengths)) & (total > 0)
    safe = jnp.where(usable, lengths, dt)
    safe = jnp.maximum(safe, floor * jnp.sum(safe) * dt)  # the floored density, times Δt_i
    cum = jnp.concatenate([jnp.zeros((1,), ts.dtype), jnp.cumsum(safe)])  # (N,) strictly increasing
    targets = cum[-1] * jnp.arange(ts.shape[0], dtype=ts.dtype) / (ts.shape[0] - 1)
    new = jnp.interp(targets, cum, ts)
    new = new.at[0].set(0.0).at[-1].set(1.0)
    ok = usable & jnp.all(jnp.diff(new) > 0)
    return jnp.where(ok, new, ts)


class AdaptiveLadder(NamedTuple):
    """The adaptive ladder carried in the train state (design.md §3, "Adaptive ladder").

    temperatures: (N,) the rungs the next step runs on; t_0 = 0, t_{N−1} = 1.
    log_lik:      (N,) exponential moving average of the batch-mean rung means Ê_i since the last placement,
                  weighted (not yet divided by ``weight``).
    variance:     (N,) the same for the batch-mean rung variances V̂_i (zeros with one chain per example).
    weight:       () the moving average's total weight 1 − decay^n after n steps (its bias correction).
    """

    temperatures: Array
    log_lik: Array
    variance: Array
    weight: Array


def initial_adaptive_ladder(num_temps: int, power: float) -> AdaptiveLadder:
    """Starts from the power ladder t_i = (i/(N−1))^p with an empty average."""
    ts = power_schedule(num_temps, power)
    return AdaptiveLadder(ts, jnp.zeros_like(ts), jnp.zeros_like(ts), jnp.zeros((), ts.dtype))


def adapt_ladder(state: AdaptiveLadder, step: Array, rung_mean: Array, rung_var: Array | None, every: int,
                 decay: float) -> AdaptiveLadder:
    """One training step's update: fold the step's rung statistics (N,) into the moving average, and when
    ``step + 1`` is a multiple of ``every`` place new rungs at equal thermodynamic length from it
    (`interval_lengths` with the variances when given, `equal_length_ladder`) and restart the average.

    The ladder a step runs on therefore changes only at steps that are multiples of ``every``.
    """
    keep = jnp.asarray(decay, rung_mean.dtype)
    log_lik = keep * state.log_lik + (1 - keep) * rung_mean
    variance = state.variance if rung_var is None else keep * state.variance + (1 - keep) * rung_var
    weight = keep * state.weight + (1 - keep)
    due = (step + 1) % every == 0
    var_mean = None if rung_var is None else variance / weight
    placed = equal_length_ladder(state.temperatures, interval_lengths(state.temperatures, log_lik / weight, var_mean))
    zero = jnp.zeros_like(weight)
    return AdaptiveLadder(
        temperatures=jnp.where(due, placed, state.temperatures),
        log_lik=jnp.where(due, jnp.zeros_like(log_lik), log_lik),
        variance=jnp.where(due, jnp.zeros_like(variance), variance),
        weight=jnp.where(due, zero, weight),
    )
