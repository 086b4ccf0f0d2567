"""The temperature ladder of thermodynamic integration and its quadrature rules.

    log p(x) = ∫_0^1 E_{π_t(z|x)}[log p_β(x|z)] dt,    π_t(z|x) ∝ p_β(x|z)^t p_α(z),

estimated on rungs t_i = (i/(N-1))^p by the trapezoid rule, optionally with the Friel et al. (2014)
correction that uses the rung variances V_i = Var_{π_{t_i}}[log p_β(x|z)] (= dE_t/dt).
"""

from __future__ import annotations

import math

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
