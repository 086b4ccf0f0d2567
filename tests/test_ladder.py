"""The temperature schedule, the trapezoid rule and thermodynamic integration with exact E_t.

With E_t and V_t = dE_t/dt in closed form (linear-Gaussian model), ∫_0^1 E_t dt must equal log p(x);
the trapezoid's error must fall as 1/N², and the Friel et al. (2014) correction must shrink it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lebm_jax.core import ladder
from lebm_jax.core import linear_gaussian as lg
from mc import check_close

SIGMA0, SIGMA = 1.0, 0.5


@pytest.mark.parametrize("power", [0.1, 0.3, 1.0, 2.0, 3.0, 6.0, 10.0])
@pytest.mark.parametrize("num_temps", [2, 5, 10])
def test_schedule_endpoints_and_order(num_temps, power):
    ts = np.asarray(ladder.power_schedule(num_temps, power))
    assert ts.shape == (num_temps,)
    assert ts[0] == 0.0 and ts[-1] == 1.0
    assert np.all(np.diff(ts) > 0)
    np.testing.assert_allclose(ts, (np.arange(num_temps) / (num_temps - 1)) ** power, rtol=1e-6)


def test_schedule_power_one_is_linspace_and_power_moves_the_rungs():
    np.testing.assert_allclose(ladder.power_schedule(10, 1.0), np.linspace(0, 1, 10), atol=1e-7)
    mid = lambda p: float(ladder.power_schedule(11, p)[5])  # noqa: E731
    assert mid(3.0) < mid(1.0) < mid(0.3)  # p > 1 crowds rungs near t = 0, p < 1 near t = 1


@pytest.mark.parametrize(
    "num_temps, power, field",
    [(1, 1.0, "num_temps=1"), (0, 1.0, "num_temps=0"), (2.5, 1.0, "num_temps=2.5"),
     (10, 0.0, "power=0.0"), (10, -1.0, "power=-1.0"), (10, float("inf"), "power=inf")],
)
def test_bad_ladder_names_the_field(num_temps, power, field):
    with pytest.raises(ValueError, match=field):
        ladder.power_schedule(num_temps, power)


def test_trapezoid_is_exact_on_linear_integrands_and_matches_its_weights():
    ts = ladder.power_schedule(7, 2.5)
    values = jnp.stack([3.0 - 2.0 * ts, 0.5 + ts], axis=1)  # (N, 2): two linear integrands
    np.testing.assert_allclose(ladder.trapezoid(ts, values), [3.0 - 1.0, 0.5 + 0.5], rtol=1e-6)
    np.testing.assert_allclose(ladder.trapezoid(ts, values.T, axis=1), [2.0, 1.0], rtol=1e-6)
    w = ladder.trapezoid_weights(ts)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
    v = jnp.sin(3 * ts)
    np.testing.assert_allclose(jnp.sum(w * v), ladder.trapezoid(ts, v), rtol=1e-6)
    # the sum of the wrong terms (a published bug: Σ Δt_i (E_i + E_{i-1}) without the ½) is not it
    assert abs(float(jnp.sum(jnp.diff(ts) * (v[1:] + v[:-1]))) - float(ladder.trapezoid(ts, v))) > 0.1


def test_friel_correction_is_exact_for_quadratic_integrands():
    # For E(t) = a t² the trapezoid's error on each interval is exactly (Δt²/12)(E'(t_i) − E'(t_{i−1})).
    ts = ladder.power_schedule(4, 1.7)
    e, v = 2.0 * ts**2, 4.0 * ts  # V = dE/dt
    np.testing.assert_allclose(ladder.corrected_trapezoid(ts, e, v), 2.0 / 3.0, rtol=1e-6)
    assert abs(float(ladder.trapezoid(ts, e)) - 2.0 / 3.0) > 1e-2


@pytest.fixture(scope="module")
def exact64():
    """Linear-Gaussian parameters and data in float64, and E_t, V_t, log p(x) as functions of t."""
    with jax.enable_x64(True):
        model = lg.linear_gaussian_model(latent_dim=3, data_dim=5, prior_sigma=SIGMA0, lik_sigma=SIGMA)
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), model.init(jax.random.key(3)))
        x = jnp.asarray(jax.random.normal(jax.random.key(4), (5,)), jnp.float64) * 2.0
        log_px = float(lg.log_marginal(params, x, SIGMA0, SIGMA))
    return params, x, log_px


def _e_and_v(params, x, ts):
    e = jax.vmap(lambda t: lg.expected_log_lik(params, x, t, SIGMA0, SIGMA))(ts)
    v = jax.vmap(lambda t: lg.variance_log_lik(params, x, t, SIGMA0, SIGMA))(ts)
    return e, v


def test_variance_of_log_lik_is_the_derivative_of_its_mean(exact64):
    params, x, _ = exact64
    with jax.enable_x64(True):
        for t in (0.0, 0.3, 1.0):
            de_dt = jax.grad(lambda tt: lg.expected_log_lik(params, x, tt, SIGMA0, SIGMA))(jnp.float64(t))
            v = lg.variance_log_lik(params, x, t, SIGMA0, SIGMA)
            check_close(f"V_t = dE_t/dt at t={t}", v, de_dt, atol=1e-9 * abs(float(v)))


def test_exact_integrand_on_fine_ladder_gives_log_marginal(exact64):
    params, x, log_px = exact64
    errors = {}
    with jax.enable_x64(True):
        for n in (101, 201, 401, 801):
            ts = ladder.power_schedule(n, 1.0, dtype=jnp.float64)
            e, v = _e_and_v(params, x, ts)
            errors[n] = float(ladder.trapezoid(ts, e)) - log_px
            # |trapezoid − integral| ≤ (h²/12) max|E''|, with E'' = dV/dt taken from V's differences (×1.5)
            h = 1.0 / (n - 1)
            bound = 1.5 * h**2 / 12.0 * float(jnp.max(jnp.abs(jnp.diff(v)))) / h
            check_close(f"trapezoid(exact E_t, N={n}) vs log p(x)", float(ladder.trapezoid(ts, e)), log_px,
                        bias_bound=max(bound, 1e-9))
        corrected = float(ladder.corrected_trapezoid(ts, e, v))
    # second-order convergence: halving the spacing divides the error by 4
    for n in (101, 201, 401):
        ratio = errors[n] / errors[2 * n - 1]
        assert 3.8 < ratio < 4.2, (n, ratio)
    assert abs(corrected - log_px) < 1e-2 * abs(errors[801])


@pytest.mark.parametrize("power", [1.0, 3.0, 6.0])
def test_friel_correction_shrinks_error_on_a_coarse_ladder(exact64, power):
    # A leading-order correction: it needs E_t to be resolved by the ladder. With p = 0.3 and N = 6 the first
    # interval (0, 0.58) spans the steep start of E_t and the correction overshoots on this problem.
    params, x, log_px = exact64
    with jax.enable_x64(True):
        ts = ladder.power_schedule(6, power, dtype=jnp.float64)
        e, v = _e_and_v(params, x, ts)
        plain = abs(float(ladder.trapezoid(ts, e)) - log_px)
        corrected = abs(float(ladder.corrected_trapezoid(ts, e, v)) - log_px)
    assert corrected < 0.5 * plain, (power, plain, corrected)
