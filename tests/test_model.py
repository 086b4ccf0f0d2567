"""Densities of the latent EBM (lebm_jax.model) against exact answers.

Base density and likelihood are compared with scipy's multivariate normal (constant included). On the
linear-Gaussian model (f(z) = bᵀz − ½zᵀAz, g(z) = Wz + c) every density is Gaussian (docs/design.md §4):

    log p_α(z) + log Z_α = log N(z; m0, S0) + log Z_α,    log Z_α = ½ bᵀS0 b + ½ log det S0 − nz log σ0
    ∇_z log π_t(z|x)     = −P_t (z − μ_t)
    log p(x|z) + log p_α(z) + log Z_α = log N(z; μ_1, Σ_1) + log p(x) + log Z_α

so `log_prior` and `log_power_posterior` differ from the exact log-densities by constants that are known
too. These comparisons are deterministic: the tolerance is float32 round-off, nothing else.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from lebm_jax.core import linear_gaussian as lg
from lebm_jax.core.model import LatentEBM, gaussian_log_likelihood, image_model, log_base_density
from mc import check_close

SIGMA0, SIGMA = 1.7, 0.5  # σ0 ≠ 1 so that a dropped or misplaced σ0 shows
NZ, D = 2, 4
RTOL = 1e-6  # float32 round-off (~8 ulp), relative to the size of the terms that are summed


def f32_slack(*terms):
    """Absolute round-off allowance for a float32 sum of terms of these magnitudes."""
    return RTOL * (1.0 + sum(np.abs(np.asarray(t, np.float64)) for t in terms))


# ---------------------------------------------------------------- base density and likelihood


@pytest.mark.parametrize("lead", [(), (5,), (3, 4)])
@pytest.mark.parametrize("sigma", [1.0, 0.6, 2.5])
def test_log_base_density_matches_scipy(lead, sigma):
    nz = 3
    z = np.random.default_rng(0).normal(scale=2.0, size=lead + (nz,)).astype(np.float32)
    got = log_base_density(jnp.asarray(z), sigma)
    assert got.shape == lead
    exact = multivariate_normal(np.zeros(nz), sigma**2 * np.eye(nz)).logpdf(z.astype(np.float64))
    check_close(f"log π0 vs scipy, σ0={sigma}, lead={lead}", got, exact, atol=f32_slack(exact))


@pytest.mark.parametrize("event_shape", [(5,), (4, 3, 2)])
def test_gaussian_log_likelihood_matches_scipy_with_broadcasting(event_shape):
    rng = np.random.default_rng(1)
    s, b, sigma = 3, 2, 0.3
    x = rng.uniform(-1, 1, size=(b,) + event_shape).astype(np.float32)  # (B, *event)
    mean = rng.uniform(-1, 1, size=(s, b) + event_shape).astype(np.float32)  # (S, B, *event)
    got = gaussian_log_likelihood(jnp.asarray(x), jnp.asarray(mean), sigma, len(event_shape))
    assert got.shape == (s, b)
    d = int(np.prod(event_shape))
    exact = np.array([
        [multivariate_normal(mean[i, j].ravel().astype(np.float64), sigma**2 * np.eye(d)).logpdf(x[j].ravel())
         for j in range(b)]
        for i in range(s)
    ])
    # the terms summed are ||x − mean||²/(2σ²) and (D/2) log(2πσ²); both are O(|exact|)
    check_close(f"log N(x; g, σ²I) vs scipy, event {event_shape}", got, exact, atol=f32_slack(exact, d))


def test_gaussian_log_likelihood_constant_counts_broadcast_entries():
    # A mean that broadcasts along the event axes (one value per image) must still count D = all entries of x.
    x = np.array([[0.1, 0.2, -0.3, 0.5, 0.0]], np.float32)  # (1, 5)
    got = gaussian_log_likelihood(jnp.asarray(x), jnp.zeros((1, 1)), 0.3, 1)
    exact = multivariate_normal(np.zeros(5), 0.09 * np.eye(5)).logpdf(x.astype(np.float64))
    check_close("log N(x; m, σ²I), m broadcast over the event", got, exact, atol=f32_slack(exact))


# ---------------------------------------------------------------- the linear-Gaussian model


@pytest.fixture(scope="module")
def lg_problem():
    model = lg.linear_gaussian_model(latent_dim=NZ, data_dim=D, prior_sigma=SIGMA0, lik_sigma=SIGMA)
    params = model.init(jax.random.key(3))
    x = jax.random.normal(jax.random.key(4), (D,))
    z = 2.0 * jax.random.normal(jax.random.key(5), (50, NZ))  # spread well beyond the prior's bulk
    return model, params, x, z


def log_normalizer(params):
    """log Z_α = ½ bᵀS0 b + ½ log det S0 − nz log σ0 for the quadratic tilt (float64)."""
    m = lg.matrices(params)
    b = np.asarray(m.b, np.float64)
    s0 = np.linalg.inv(np.eye(NZ) / SIGMA0**2 + np.asarray(m.A, np.float64))
    return 0.5 * b @ s0 @ b + 0.5 * np.linalg.slogdet(s0)[1] - NZ * np.log(SIGMA0)


def test_log_prior_is_exact_gaussian_up_to_log_partition(lg_problem):
    model, params, _, z = lg_problem
    prior = lg.prior(params, SIGMA0)
    got = np.asarray(model.log_prior(params["ebm"], z), np.float64)
    exact = multivariate_normal(np.asarray(prior.mean, np.float64), np.asarray(prior.cov, np.float64)).logpdf(
        np.asarray(z, np.float64)
    )
    diff = got - exact  # (50,): log Z_α at every z
    log_z = log_normalizer(params)
    assert abs(log_z) > 0.1  # the check below would not see a missing constant otherwise
    check_close("log p_α(z) − log N(z; m0, S0) = log Z_α", diff, log_z, atol=f32_slack(got, exact))
    check_close("log p_α(z) − log N(z; m0, S0) constant in z", diff - diff.mean(), 0.0, atol=f32_slack(got, exact))


def gaussian_score(z, q):
    """−P(z − μ) for q = N(μ, P⁻¹) in float64, and the size of the terms a float32 score sums."""
    z, mean = np.asarray(z, np.float64), np.asarray(q.mean, np.float64)
    precision = np.linalg.inv(np.asarray(q.cov, np.float64))
    return -(z - mean) @ precision.T, (np.abs(z) + np.abs(mean)) @ np.abs(precision).T


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_power_posterior_score_is_exact(lg_problem, t):
    model, params, x, z = lg_problem
    q = lg.power_posterior(params, x, t, SIGMA0, SIGMA)
    exact, scale = gaussian_score(z, q)  # (50, nz)
    got = model.power_posterior_score(params, x, z, t)
    assert got.shape == z.shape
    check_close(f"∇ log π_t = −P_t(z − μ_t), t={t}", got, exact, atol=f32_slack(scale))


def test_power_posterior_score_broadcasts_temperatures(lg_problem):
    model, params, x, z = lg_problem
    temps = np.array([0.0, 0.3, 1.0])
    zt = jnp.stack([z, -z, 0.5 * z])  # (T, n, nz)
    got = model.power_posterior_score(params, x, zt, jnp.asarray(temps)[:, None])  # t (T, 1) over (T, n)
    assert got.shape == zt.shape
    for i, t in enumerate(temps):
        exact, scale = gaussian_score(zt[i], lg.power_posterior(params, x, t, SIGMA0, SIGMA))
        check_close(f"batched ∇ log π_t, t={t} of (T, n, nz)", got[i], exact, atol=f32_slack(scale))


def test_log_power_posterior_at_one_is_posterior_up_to_constant(lg_problem):
    model, params, x, z = lg_problem
    q = lg.power_posterior(params, x, 1.0, SIGMA0, SIGMA)
    got = np.asarray(model.log_power_posterior(params, x, z, 1.0), np.float64)
    exact = multivariate_normal(np.asarray(q.mean, np.float64), np.asarray(q.cov, np.float64)).logpdf(
        np.asarray(z, np.float64)
    )
    diff = got - exact  # log p(x) + log Z_α at every z
    const = float(lg.log_marginal(params, x, SIGMA0, SIGMA)) + log_normalizer(params)
    slack = f32_slack(got, exact)
    check_close("log π_1(z|x) unnormalised − log N(z; μ1, Σ1) constant in z", diff - diff.mean(), 0.0, atol=slack)
    check_close("... the constant is log p(x) + log Z_α", diff, const, atol=slack)


def test_log_power_posterior_at_zero_is_log_prior(lg_problem):
    model, params, x, z = lg_problem
    np.testing.assert_array_equal(model.log_power_posterior(params, x, z, 0.0), model.log_prior(params["ebm"], z))


# ---------------------------------------------------------------- bad input


def test_wrong_latent_size_names_latent_dim(lg_problem):
    model, params, _, _ = lg_problem
    z = jnp.zeros((3, NZ + 1))
    with pytest.raises(ValueError, match=re.escape(f"latent_dim={NZ}")):
        model.tilt(params["ebm"], z)
    with pytest.raises(ValueError, match=re.escape(f"latent_dim={NZ}")):
        model.generate(params["gen"], z)
    with pytest.raises(ValueError, match=re.escape(f"latent_dim={NZ}")):
        model.tilt(params["ebm"], jnp.zeros(()))


def test_wrong_event_shape_names_event_shape(lg_problem):
    model = lg_problem[0]
    model.check_data(jnp.zeros((3, D)))  # fits
    for bad in [jnp.zeros((3, D + 1)), jnp.zeros((D,)), jnp.zeros((3, 2, D))]:
        with pytest.raises(ValueError, match=re.escape(f"event_shape=({D},)")):
            model.check_data(bad)


def test_image_model_rejects_non_square_and_unsupported_sizes():
    with pytest.raises(ValueError, match=re.escape("image_shape=(32, 30, 3)")):
        image_model((32, 30, 3))
    with pytest.raises(ValueError, match=re.escape("image_size=12")):
        image_model((12, 12, 3))


@pytest.mark.parametrize("field", ["lik_sigma", "prior_sigma"])
@pytest.mark.parametrize("value", [0, -1.0, float("inf")])
def test_latent_ebm_rejects_bad_scales(field, value):
    base = lg.linear_gaussian_model(latent_dim=NZ, data_dim=D)
    kwargs = {"prior_sigma": 1.0, "lik_sigma": 0.3, field: value}
    with pytest.raises(ValueError, match=re.escape(f"{field}={value!r}")):
        LatentEBM(base.tilt_net, base.generator_net, NZ, (D,), **kwargs)


# ---------------------------------------------------------------- the image model


def test_image_model_generates_images_for_any_leading_shape():
    model = image_model((32, 32, 3), latent_dim=16, ngf=8)
    params = model.init(jax.random.key(0))
    z = jax.random.normal(jax.random.key(1), (2, 3, 16))
    x = model.generate(params["gen"], z)
    assert x.shape == (2, 3, 32, 32, 3)
    assert np.all(np.isfinite(x)) and np.all(np.abs(x) <= 1.0)
    # leading axes are a batch: the (1, 2) image is g of the (1, 2) latent alone
    np.testing.assert_allclose(x[1, 2], model.generate(params["gen"], z[1, 2][None])[0], rtol=1e-5, atol=1e-6)
    assert model.tilt(params["ebm"], z).shape == (2, 3)
    ll = model.log_likelihood(params["gen"], x[None], z[None])  # x at its own mean: only the constant
    check_close("image log p(g(z)|z) = −(D/2) log(2πσ²)", ll, -0.5 * 32 * 32 * 3 * np.log(2 * np.pi * 0.3**2),
                atol=f32_slack(0.5 * 3072 * np.log(2 * np.pi * 0.09)))
