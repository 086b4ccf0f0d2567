"""Langevin chains against exact answers on Gaussian targets.

For a Gaussian target N(μ, P⁻¹) the ULA recursion z' = z − (s²/2) P (z − μ) + s ε is linear, so the law
of the chain after K steps from z_0 ~ N(0, σ0² I) is known exactly:

    mean_K = μ + M^K (0 − μ),   cov_K = σ0² M^K M^Kᵀ + s² Σ_{j<K} M^j M^jᵀ,   M = I − (s²/2) P.

That pins down the step convention to the last factor of two; MALA must instead match the target.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lebm_jax.core import linear_gaussian as lg
from lebm_jax.core.langevin import langevin_chain, sample_base
from mc import check_close, moment_estimates

SIGMA0, SIGMA = 1.0, 0.5
TEMPS = (0.0, 0.3, 1.0)


def ula_law(mu, precision, s, num_steps, sigma0):
    """Exact mean and covariance of ULA after K steps on N(mu, precision⁻¹), started at N(0, σ0² I)."""
    d = mu.shape[0]
    m = np.eye(d) - 0.5 * s**2 * precision
    mk = np.linalg.matrix_power(m, num_steps)
    cov, power = sigma0**2 * mk @ mk.T, np.eye(d)
    for _ in range(num_steps):
        cov += s**2 * power @ power.T
        power = m @ power
    return mu + mk @ (-mu), cov


@pytest.fixture(scope="module")
def problem():
    model = lg.linear_gaussian_model(latent_dim=2, data_dim=4, prior_sigma=SIGMA0, lik_sigma=SIGMA)
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (4,))
    targets = []
    for t in TEMPS:
        q = lg.power_posterior(params, x, t, SIGMA0, SIGMA)
        targets.append((np.asarray(q.mean, np.float64), np.asarray(q.cov, np.float64)))
    return model, params, x, targets


def run_rungs(problem, method, step_size, num_steps, num_chains, seed):
    """All three temperatures as one batched chain: z (T, n, nz)."""
    model, params, x, _ = problem
    ts = jnp.asarray(TEMPS)[:, None]  # (T, 1) against chains (T, n)
    z0 = sample_base(jax.random.key(seed), (len(TEMPS), num_chains, model.latent_dim), SIGMA0)
    log_prob = lambda z: model.log_power_posterior(params, x, z, ts)  # noqa: E731
    run = jax.jit(lambda k: langevin_chain(k, z0, log_prob, num_steps, step_size, method))
    return run(jax.random.key(seed + 1))


def check_moments(name, z, mean, cov, bias_mean=0.0, bias_cov=0.0):
    m_hat, m_se, c_hat, c_se = moment_estimates(z)
    check_close(f"{name} mean", m_hat, mean, m_se, bias_mean)
    check_close(f"{name} cov", c_hat, cov, c_se, bias_cov)


def test_ula_step_convention_one_dimension():
    # Target N(0, 1) with s = 1: the stationary variance of z' = (1 − s²/2) z + s ε is 1/(1 − s²/4) = 4/3.
    z0 = jnp.zeros((20000, 1))
    res = langevin_chain(jax.random.key(0), z0, lambda z: -0.5 * jnp.sum(z**2, -1), 100, 1.0, "ula")
    mean, var = ula_law(np.zeros(1), np.eye(1), 1.0, 100, 0.0)
    check_moments("ULA s=1 on N(0,1) (law: var 4/3)", res.z, mean, var)
    assert abs(float(var[0, 0]) - 4 / 3) < 1e-9
    np.testing.assert_array_equal(res.accept_rate, 1.0)


def test_ula_matches_its_exact_law_at_each_temperature(problem):
    s, k = 0.3, 40
    res = run_rungs(problem, "ula", s, k, 8000, seed=10)
    for i, (t, (mu, cov)) in enumerate(zip(TEMPS, problem[3])):
        law_mean, law_cov = ula_law(mu, np.linalg.inv(cov), s, k, SIGMA0)
        check_moments(f"ULA s={s} K={k} law, t={t}", res.z[i], law_mean, law_cov)


def test_ula_small_step_matches_power_posterior(problem):
    s, k = 0.08, 2500
    res = run_rungs(problem, "ula", s, k, 4000, seed=20)
    for i, (t, (mu, cov)) in enumerate(zip(TEMPS, problem[3])):
        law_mean, law_cov = ula_law(mu, np.linalg.inv(cov), s, k, SIGMA0)
        # Tolerance: MC error plus ULA's exactly known step-size and burn-in bias (small here).
        check_moments(f"ULA s={s} target, t={t}", res.z[i], mu, cov,
                      np.abs(law_mean - mu), np.abs(law_cov - cov))
        assert np.max(np.abs(law_cov - cov)) < 0.02 * np.max(np.abs(cov))


def test_mala_matches_power_posterior(problem):
    res = run_rungs(problem, "mala", 0.6, 300, 4000, seed=30)
    for i, (t, (mu, cov)) in enumerate(zip(TEMPS, problem[3])):
        check_moments(f"MALA s=0.6 target, t={t}", res.z[i], mu, cov)
    acc = np.asarray(res.accept_rate)
    assert 0.3 < acc.mean() < 1.0
    assert np.all(np.isfinite(res.grad_norm)) and np.all(res.grad_norm > 0)


def test_mala_corrects_a_step_that_biases_ula(problem):
    s = 1.0  # ULA's stationary covariance is far from the target at this step; MALA's is exact
    mu, cov = problem[3][2]
    law_mean, law_cov = ula_law(mu, np.linalg.inv(cov), s, 400, SIGMA0)
    assert np.max(np.abs(law_cov - cov)) > 0.1 * np.max(np.abs(cov))
    res = run_rungs(problem, "mala", s, 400, 4000, seed=40)
    check_moments(f"MALA s={s} target, t=1", res.z[2], mu, cov)


def test_chain_is_vmappable_and_chains_are_independent():
    log_prob = lambda z: -0.5 * jnp.sum(z**2, -1)  # noqa: E731
    z0 = jnp.ones((3, 2))
    keys = jax.random.split(jax.random.key(0), 5)
    run = lambda k: langevin_chain(k, z0, log_prob, 10, 0.3, "mala").z  # noqa: E731
    batched = jax.jit(jax.vmap(run))(keys)  # (5, 3, 2)
    for i in range(5):
        np.testing.assert_allclose(batched[i], run(keys[i]), rtol=1e-5, atol=1e-6)
    # a chain's path does not depend on the state of the other chains (same noise, other rows moved)
    moved = z0.at[1:].set(5.0)
    a = langevin_chain(keys[0], z0, log_prob, 10, 0.3, "mala").z
    b = langevin_chain(keys[0], moved, log_prob, 10, 0.3, "mala").z
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(a[1:], b[1:])


def test_per_chain_step_sizes_match_separate_runs():
    # Scalar step sizes per group of chains, given as an array broadcastable to the batch shape.
    log_prob = lambda z: -0.5 * jnp.sum(z**2, -1)  # noqa: E731
    z0 = jnp.zeros((2, 4000, 1))
    res = langevin_chain(jax.random.key(0), z0, log_prob, 200, jnp.array([[0.5], [1.5]]), "ula")
    for i, s in enumerate((0.5, 1.5)):
        mean, var = ula_law(np.zeros(1), np.eye(1), s, 200, 0.0)
        check_moments(f"ULA per-chain step s={s}", res.z[i], mean, var)


def test_bad_method_names_the_field():
    with pytest.raises(ValueError, match="method='hmc'"):
        langevin_chain(jax.random.key(0), jnp.zeros((2, 2)), lambda z: -jnp.sum(z**2, -1), 5, 0.1, "hmc")
