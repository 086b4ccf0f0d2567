"""The temperature ladder of thermodynamic integration and its quadrature rules.

    log p(x) = ∫_0^1 E_{π_t(z|x)}[log p_β(x|z)] dt,    π_t(z|x) ∝ p_β(x|z)^t p_α(z),

estimated on rungs t_i = (i/(N-1))^p by the trapezoid rule, optionally with the Friel et al. (2014)
correction that uses the rung variances V_i = Var_{π_{t_i}}[log p_β(x|z)] (= dE_t/dt).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


def check_ladder(num_temps: int, power: float) -> None:
    """Raises ValueError naming the field when (num_temps, power) do not define a ladder."""
    if isinstance(num_temps, bool) or not isinstance(num_temps, int) or num_temps < 2:
        raise ValueError(f"ti.num_temps={num_temps!r}: a ladder needs an int of at least 2 rungs (t=0 and t=1)")
    if not (isinstance(power, (int, float)) and float(power) > 0.0 and math.isfinite(power)):
        raise ValueError(f"ti.power={power!r}: the schedule power must be a finite number > 0")


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
