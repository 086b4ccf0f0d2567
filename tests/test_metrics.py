"""Sample-quality metrics (lebm_jax.metrics) against exact answers.

Fréchet distance. Diagonal covariances: FD = ||Δμ||² + Σ_i (√a_i − √b_i)². 2×2: Σ1 Σ2 has the eigenvalues
λ1, λ2 of Σ1^{1/2} Σ2 Σ1^{1/2}, so tr (Σ1 Σ2)^{1/2} = √λ1 + √λ2 = (tr Σ1Σ2 + 2 √(det Σ1 det Σ2))^{1/2}.
Rank one, Σ1 = vvᵀ, Σ2 = wwᵀ: Σ^{1/2} = vvᵀ/||v||, so tr (Σ1 Σ2)^{1/2} = |vᵀw| and FD = ||v||² + ||w||² − 2|vᵀw|.
In d = 1 with n iid N(μ, σ²) draws, s the (n − 1) sample standard deviation, E s = c4(n) σ with
c4(n) = √(2/(n−1)) Γ(n/2)/Γ((n−1)/2), so

    E FD(sample, truth) = σ²/n + 2σ²(1 − c4),     E FD(sample, sample') = 2σ²/n + 2σ²(1 − c4²).

FID∞ in d = 1: a random subset of size N of an iid sample is an iid sample of size N, so each FD_N has the
expectation above and the OLS intercept, linear in the FD_N, has expectation Σ_i w_i E FD_{N_i} (w the OLS
intercept weights): close to 0, since E FD_N = 3σ²/(2N) + O(1/N²).

Cubic-kernel MMD². For independent X ~ N(a, A), Y ~ N(b, B) in R^d, u = XᵀY: given X, u ~ N(Xᵀb, XᵀBX), so

    E u = aᵀb,   E u² = (aᵀb)² + bᵀAb + aᵀBa + tr AB,
    E u³ = (aᵀb)³ + 3 aᵀb (bᵀAb + aᵀBa + tr AB) + 6 aᵀBAb,

E k(X, Y) = 1 + 3 E u/d + 3 E u²/d² + E u³/d³, and MMD² = E k(X, X') + E k(Y, Y') − 2 E k(X, Y).

Bootstrap SE of the FD against fixed reference statistics N(μ_r, diag b), generated N(μ_g, diag a), n rows: by
the delta method (Δμ̂ ~ N(Δμ, diag a/n); the sample variances â_i have variance 2a_i²/(n − 1) and, to first
order, only the diagonal of Σ̂ moves tr (Σ̂ Σ_r)^{1/2} = Σ_i √(â_i b_i) + O(off-diagonal²)),

    Var FD ≈ (4/n) Σ_i Δμ_i² a_i + Σ_i (1 − √(b_i/a_i))² · 2a_i²/(n − 1),

and to second order, with c_i = √(a_i b_i) (tr Σ̂/n from the mean; Jensen on √â_i; the off-diagonal entries' shift
of the eigenvalues of Σ_r^{1/2} Σ̂ Σ_r^{1/2}),

    E FD − FD_exact ≈ Σ_i a_i/n + Σ_i c_i/(2(n − 1)) + Σ_{i<j} c_i c_j/((n − 1)(c_i + c_j)).

OLS: with K sizes, x = 1/N and iid N(0, σ²) noise, Var(intercept) = σ²(1/K + x̄²/Σ(x − x̄)²); the reported
se² = s²(1/K + x̄²/Σ(x − x̄)²) has s² ~ σ² χ²_{K−2}/(K − 2): mean Var(intercept), variance 2Var²/(K − 2).
"""

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.special
import scipy.stats

from lebm_jax.measure import metrics
from mc import check_close, mean_and_se

# ---------------------------------------------------------------- helpers


def random_spd(rng, d, cond=10.0):
    """A random symmetric positive-definite matrix with eigenvalues spread over [1, cond]."""
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (q * np.geomspace(1.0, cond, d)) @ q.T


def gaussian(rng, n, mu, sigma):
    return mu + rng.normal(size=(n, len(mu))) @ np.linalg.cholesky(sigma).T


def sqrtm_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """The Fréchet distance as pytorch-fid computes it: tr of scipy.linalg.sqrtm(Σ1 Σ2), the real part,
    with eps·I added to both covariances when the square root is not finite."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(covmean)):
        offset = eps * np.eye(sigma1.shape[0])
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(np.real(covmean)))


def c4(n):
    return np.sqrt(2.0 / (n - 1)) * np.exp(scipy.special.gammaln(n / 2) - scipy.special.gammaln((n - 1) / 2))


def cubic_kernel_mean(a, A, b, B):
    """E k(X, Y), X ~ N(a, A), Y ~ N(b, B) independent, k(x, y) = (xᵀy/d + 1)³ (module docstring)."""
    d = len(a)
    m1 = a @ b
    quad = b @ A @ b + a @ B @ a + np.trace(A @ B)
    m2 = m1**2 + quad
    m3 = m1**3 + 3 * m1 * quad + 6 * a @ B @ A @ b
    return 1 + 3 * m1 / d + 3 * m2 / d**2 + m3 / d**3


def exact_mmd2(a, A, b, B):
    return cubic_kernel_mean(a, A, a, A) + cubic_kernel_mean(b, B, b, B) - 2 * cubic_kernel_mean(a, A, b, B)


def ols_intercept_weights(sizes):
    """w with intercept = w · values for the OLS line in 1/N."""
    design = np.stack([np.ones(len(sizes)), 1.0 / np.asarray(sizes, np.float64)], axis=1)
    return np.linalg.pinv(design)[0]


# ---------------------------------------------------------------- feature statistics and Fréchet distance


def test_feature_statistics_are_float64_mean_and_unbiased_covariance():
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    mu, sigma = metrics.feature_statistics(x)
    assert mu.dtype == sigma.dtype == np.float64
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mu, x64.mean(0), rtol=1e-14)
    np.testing.assert_allclose(sigma, (x64 - x64.mean(0)).T @ (x64 - x64.mean(0)) / 49, rtol=1e-12, atol=1e-15)


def test_frechet_distance_diagonal_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 4.0, 7), rng.uniform(0.1, 4.0, 7)
    mu1, mu2 = rng.normal(size=7), rng.normal(size=7)
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    fd = metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert isinstance(fd, float)
    check_close("FD diagonal covariances", fd, exact, atol=1e-12 * exact)


def test_frechet_distance_non_commuting_2x2_closed_form():
    s1 = np.array([[2.0, 0.7], [0.7, 0.5]])
    s2 = np.array([[0.3, -0.4], [-0.4, 1.9]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = np.array([0.5, -1.0]), np.array([1.5, 0.25])
    tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    exact = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    check_close("FD 2x2 non-commuting closed form", metrics.frechet_distance(mu1, s1, mu2, s2), exact,
                atol=1e-12 * exact)


def test_frechet_distance_matches_scipy_sqrtm_when_well_conditioned():
    rng = np.random.default_rng(2)
    d = 8
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    fd = metrics.frechet_distance(mu1, s1, mu2, s2)
    ref = sqrtm_frechet_distance(mu1, s1, mu2, s2)
    check_close("FD vs scipy sqrtm (κ = 10, d = 8), relative", fd, ref, atol=1e-8 * ref)
    tr_sqrtm = np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2)))
    check_close("tr (Σ1Σ2)^½ vs tr sqrtm(Σ1Σ2), relative", metrics.trace_sqrt_product(s1, s2), tr_sqrtm,
                atol=1e-10 * tr_sqrtm)


def test_frechet_distance_matches_pytorch_fid_on_feature_like_statistics():
    # a decaying spectrum like pool3 features' (eigenvalues over ~4 decades), two nearby distributions
    rng = np.random.default_rng(3)
    d, n = 128, 600
    mix = np.linalg.qr(rng.normal(size=(d, d)))[0] * np.sqrt(np.geomspace(1.0, 1e-4, d))
    x = rng.normal(size=(n, d)) @ mix.T
    y = (rng.normal(size=(n, d)) * 1.1 + 0.02) @ mix.T
    mu1, s1 = metrics.feature_statistics(x)
    mu2, s2 = metrics.feature_statistics(y)
    fd, ref = metrics.frechet_distance(mu1, s1, mu2, s2), sqrtm_frechet_distance(mu1, s1, mu2, s2)
    check_close("FD vs pytorch-fid's sqrtm, feature-like d = 128, relative", fd, ref, atol=1e-3 * ref)


def test_frechet_distance_of_identical_statistics_is_zero():
    rng = np.random.default_rng(4)
    for n, d in ((500, 64), (20, 64)):  # full rank, and rank 19 < d
        x = rng.normal(size=(n, d)).astype(np.float32) * np.linspace(0.1, 3.0, d, dtype=np.float32)
        mu, sigma = metrics.feature_statistics(x)
        check_close(f"FD(X, X) = 0, n = {n}, d = {d}", metrics.frechet_distance(mu, sigma, mu, sigma), 0.0,
                    atol=1e-8)


def test_frechet_distance_rank_deficient_is_finite_and_exact_where_known():
    rng = np.random.default_rng(5)
    # exactly singular, diagonal: (√1 − √4)² + (√0 − √9)² = 10
    fd = metrics.frechet_distance(np.zeros(2), np.diag([1.0, 0.0]), np.zeros(2), np.diag([4.0, 9.0]))
    check_close("FD singular diagonal = 10", fd, 10.0, atol=1e-12)
    # rank one, not commuting: ||v||² + ||w||² − 2|vᵀw|
    v, w = rng.normal(size=5), rng.normal(size=5)
    exact = v @ v + w @ w - 2 * abs(v @ w)
    fd = metrics.frechet_distance(np.zeros(5), np.outer(v, v), np.zeros(5), np.outer(w, w))
    check_close("FD rank-one covariances", fd, exact, atol=1e-10 * (v @ v + w @ w))
    # fewer samples than dimensions: finite, real, non-negative, symmetric
    mu1, s1 = metrics.feature_statistics(rng.normal(size=(10, 32)))
    mu2, s2 = metrics.feature_statistics(rng.normal(size=(12, 32)) + 0.1)
    fd12, fd21 = metrics.frechet_distance(mu1, s1, mu2, s2), metrics.frechet_distance(mu2, s2, mu1, s1)
    assert np.isfinite(fd12) and fd12 >= 0 and isinstance(fd12, float)
    check_close("FD(a, b) = FD(b, a), n < d", fd12, fd21, atol=1e-10 * fd12)


def test_frechet_distance_sampling_bias_in_one_dimension():
    rng = np.random.default_rng(6)
    n, reps, mu, sigma = 10, 3000, 1.5, 2.0
    truth = (np.array([mu]), np.array([[sigma**2]]))
    to_truth, between = [], []
    for _ in range(reps):
        s1 = metrics.feature_statistics(rng.normal(mu, sigma, (n, 1)))
        s2 = metrics.feature_statistics(rng.normal(mu, sigma, (n, 1)))
        to_truth.append(metrics.frechet_distance(*s1, *truth))
        between.append(metrics.frechet_distance(*s1, *s2))
    m, se = mean_and_se(to_truth)
    check_close("E FD(sample, truth) = σ²/n + 2σ²(1 − c4)", m, sigma**2 / n + 2 * sigma**2 * (1 - c4(n)), se)
    m, se = mean_and_se(between)
    check_close("E FD(sample, sample') = 2σ²/n + 2σ²(1 − c4²)", m,
                2 * sigma**2 / n + 2 * sigma**2 * (1 - c4(n) ** 2), se)


def test_fd_bootstrap_se_matches_the_spread_over_independent_generated_sets():
    rng = np.random.default_rng(22)
    a, b = np.array([1.0, 2.0, 0.5, 3.0]), np.array([1.5, 1.0, 1.0, 2.0])  # generated, reference variances
    mu_g, mu_r = np.array([0.5, 0.0, -0.3, 1.0]), np.zeros(4)
    n, reps, sets, resamples = 1000, 400, 40, 20
    exact = np.sum((mu_g - mu_r) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # the populations' FD, 1.749
    delta_sd = np.sqrt(4 / n * np.sum((mu_g - mu_r) ** 2 * a) + np.sum((1 - np.sqrt(b / a)) ** 2 * 2 * a**2 / (n - 1)))
    fds, ses = [], []
    for r in range(reps):
        x = mu_g + rng.normal(size=(n, 4)) * np.sqrt(a)
        fds.append(metrics.frechet_distance(*metrics.feature_statistics(x), mu_r, np.diag(b)))
        if r < sets:
            ses.append(metrics.frechet_distance_se(x, mu_r, np.diag(b), resamples, seed=r))
    fds, ses = np.array(fds), np.array(ses)
    spread = fds.std(ddof=1)  # 0.124
    spread_se = spread / np.sqrt(2 * (reps - 1))
    c = np.sqrt(a * b)
    bias = a.sum() / n + c.sum() / (2 * (n - 1)) + sum(
        c[i] * c[j] / ((n - 1) * (c[i] + c[j])) for i in range(4) for j in range(i + 1, 4))  # 0.013
    check_close("E FD over generated sets = exact FD + its O(1/n) bias", fds.mean(), exact + bias,
                spread / np.sqrt(reps))
    check_close("SD of FD over independent sets = delta-method SD", spread, delta_sd, spread_se)
    m, m_se = mean_and_se(ses**2)
    check_close("E bootstrap SE² = Var FD over independent sets", m, spread**2, np.hypot(m_se, 2 * spread * spread_se))
    assert 1 / 1.5 < np.sqrt(m) / spread < 1.5
    # deterministic in the seed; another seed resamples differently
    x = mu_g + rng.normal(size=(n, 4)) * np.sqrt(a)
    one = metrics.frechet_distance_se(x, mu_r, np.diag(b), resamples, seed=3)
    assert metrics.frechet_distance_se(x, mu_r, np.diag(b), resamples, seed=3) == one
    assert metrics.frechet_distance_se(x, mu_r, np.diag(b), resamples, seed=4) != one
    with pytest.raises(ValueError, match="num_resamples=1"):
        metrics.frechet_distance_se(x, mu_r, np.diag(b), 1)


# ---------------------------------------------------------------- KID


def test_mmd2_unbiased_matches_double_loop():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(9, 3)) + 0.5
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / (9 * 8)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(9)) / (7 * 9)
    exact = xx + yy - 2 * xy
    for block in (1024, 2):
        check_close(f"mmd2_unbiased vs double loop (block {block}), relative", metrics.mmd2_unbiased(x, y, block=block),
                    exact, atol=1e-10 * abs(exact))


def test_kid_is_unbiased_for_one_distribution():
    rng = np.random.default_rng(8)
    mu, sigma = np.array([0.5, -0.3, 1.0, 0.0]), random_spd(rng, 4, cond=3.0)
    u, biased, kid = [], [], []
    for _ in range(300):
        x, y = gaussian(rng, 30, mu, sigma), gaussian(rng, 50, mu, sigma)
        u.append(metrics.mmd2_unbiased(x, y))
        kx, ky, kxy = [(a @ b.T / 4 + 1) ** 3 for a, b in ((x, x), (y, y), (x, y))]
        biased.append(kx.mean() + ky.mean() - 2 * kxy.mean())  # the V-statistic, keeping i = j
        kid.append(metrics.kernel_inception_distance(x, y, num_subsets=4, subset_size=20, seed=len(kid))[0])
    m, se = mean_and_se(u)
    check_close("E mmd2_unbiased = 0, one distribution", m, 0.0, se)
    m, se = mean_and_se(kid)
    check_close("E KID (subsets of 20) = 0, one distribution", m, 0.0, se)
    b, b_se = mean_and_se(biased)
    assert b > 10 * b_se  # the test can see a bias of the size of the diagonal terms


def test_cubic_kernel_mmd2_of_shifted_gaussians():
    rng = np.random.default_rng(9)
    a, A = np.array([0.3, -0.2]), np.array([[1.0, 0.3], [0.3, 0.5]])
    b, B = np.array([1.1, 0.2]), np.array([[0.7, -0.2], [-0.2, 1.2]])
    # the kernel moments, against an independent Monte Carlo estimate over 400k pairs
    x, y = gaussian(rng, 400_000, a, A), gaussian(rng, 400_000, b, B)
    kxy = (np.sum(x * y, axis=1) / 2 + 1) ** 3
    check_close("E k(X, Y) analytic vs 400k pairs", kxy.mean(), cubic_kernel_mean(a, A, b, B),
                kxy.std(ddof=1) / np.sqrt(len(kxy)))
    exact = exact_mmd2(a, A, b, B)
    vals = [metrics.mmd2_unbiased(gaussian(rng, 40, a, A), gaussian(rng, 25, b, B)) for _ in range(400)]
    m, se = mean_and_se(vals)
    check_close("E mmd2_unbiased = analytic MMD², shifted Gaussians", m, exact, se)
    assert exact > 10 * se


def test_kid_subsets_cover_the_smaller_set():
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(12, 3)) + 1.0
    mean, std = metrics.kernel_inception_distance(x, y, num_subsets=3, subset_size=1000)
    # subsets capped at 12 rows are permutations of the whole sets: every subset gives the full-set value
    check_close("KID with subset_size > n = mmd2 of the full sets", mean, metrics.mmd2_unbiased(x, y),
                atol=1e-12 * abs(mean))
    assert std < 1e-12 * abs(mean)


# ---------------------------------------------------------------- FID∞ / KID∞


def test_extrapolation_is_exact_without_noise():
    sizes = metrics.extrapolation_sizes(2000)
    a, b = 3.25, -41.0
    fit = metrics.extrapolate_to_infinity(sizes, a + b / sizes)
    check_close("OLS intercept, no noise", fit.intercept, a, atol=1e-12 * abs(a))
    check_close("OLS slope, no noise", fit.slope, b, atol=1e-10 * abs(b))
    assert fit.standard_error < 1e-12


def test_extrapolation_standard_error_is_calibrated():
    rng = np.random.default_rng(11)
    sizes = metrics.extrapolation_sizes(1000)
    x = 1.0 / sizes
    a, b, noise, reps = 2.0, -300.0, 0.01, 4000
    var_a = noise**2 * (1 / len(x) + x.mean() ** 2 / np.sum((x - x.mean()) ** 2))
    fits = np.array([metrics.extrapolate_to_infinity(sizes, a + b * x + noise * rng.normal(size=len(x)))
                     for _ in range(reps)])
    est, se = fits[:, 0], fits[:, 1]
    check_close("OLS intercept mean = a", est.mean(), a, np.sqrt(var_a / reps))
    check_close("Var(OLS intercept) = σ²(1/K + x̄²/Sxx)", est.var(ddof=1), var_a, var_a * np.sqrt(2 / (reps - 1)))
    check_close("E se² = Var(intercept)", np.mean(se**2), var_a, var_a * np.sqrt(2 / ((len(x) - 2) * reps)))
    covered = np.abs(est - a) <= scipy.stats.t.ppf(0.975, len(x) - 2) * se
    check_close("95% t-interval coverage", covered.mean(), 0.95, np.sqrt(0.95 * 0.05 / reps))


def test_fid_infinity_of_the_reference_gaussian_is_near_zero():
    rng = np.random.default_rng(12)
    n, reps, mu, sigma = 1000, 800, 0.5, 1.5
    sizes = metrics.extrapolation_sizes(n)
    expected = ols_intercept_weights(sizes) @ (sigma**2 / sizes + 2 * sigma**2 * (1 - c4(sizes)))
    ref = (np.array([mu]), np.array([[sigma**2]]))
    inf, full = [], []
    for r in range(reps):
        x = rng.normal(mu, sigma, (n, 1))
        inf.append(metrics.fid_infinity(x, *ref, seed=r).intercept)
        full.append(metrics.frechet_distance(*metrics.feature_statistics(x), *ref))
    m, se = mean_and_se(inf)
    check_close("E FID∞ = Σ w_i E FD_{N_i} (d = 1, exact)", m, expected, se)
    check_close("E FID∞ ≈ 0 (d = 1)", m, 0.0, se, bias_bound=abs(expected))
    m_full, se_full = mean_and_se(full)
    check_close("E FD_n = σ²/n + 2σ²(1 − c4(n))", m_full, sigma**2 / n + 2 * sigma**2 * (1 - c4(n)), se_full)
    assert m_full - m > 5 * (se + se_full)  # the extrapolation removes the 1/n bias


def test_kid_infinity_of_one_distribution_is_near_zero():
    rng = np.random.default_rng(13)
    mu, sigma = np.array([0.5, -0.3, 1.0, 0.0]), random_spd(rng, 4, cond=3.0)
    vals = [metrics.kid_infinity(gaussian(rng, 300, mu, sigma), gaussian(rng, 200, mu, sigma), seed=r).intercept
            for r in range(30)]
    m, se = mean_and_se(vals)
    check_close("E KID∞ = 0, one distribution", m, 0.0, se)


def test_infinity_fits_use_the_per_size_metrics():
    rng = np.random.default_rng(14)
    x, y = rng.normal(size=(60, 3)), rng.normal(size=(40, 3)) + 0.3
    sizes = [12, 20, 30, 45, 60]
    mu, sigma = metrics.feature_statistics(y)
    subsets = metrics._subsets(60, np.asarray(sizes), 5)
    fds = [metrics.frechet_distance(*metrics.feature_statistics(x[i]), mu, sigma) for i in subsets]
    kids = [metrics.mmd2_unbiased(x[i], y) for i in subsets]
    for name, got, values in (("fid_infinity", metrics.fid_infinity(x, mu, sigma, sizes, seed=5), fds),
                              ("kid_infinity", metrics.kid_infinity(x, y, sizes, seed=5, block=7), kids)):
        want = metrics.extrapolate_to_infinity(sizes, values)
        check_close(f"{name} = OLS of the per-size values", np.array(got), np.array(want),
                    atol=1e-10 * np.abs(np.array(want)).max())


def test_extrapolation_sizes():
    sizes = metrics.extrapolation_sizes(50_000)
    assert sizes[0] == 10_000 and sizes[-1] == 50_000 and len(sizes) == 15
    np.testing.assert_allclose(np.diff(1.0 / sizes), np.diff(1.0 / sizes)[0], rtol=0.01)  # even in 1/N
    assert len(metrics.extrapolation_sizes(10)) >= 5  # small sets: sizes from 2 up
    assert metrics.extrapolation_sizes(10_000, min_size=4096)[0] == 4096  # FID∞: N ≥ 2d for d = 2048
    for n in (3, 5):
        with pytest.raises(ValueError, match=">= 5 distinct sample sizes"):
            metrics.fid_infinity(np.random.default_rng(0).normal(size=(n, 2)), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="between 2 and the 20 samples"):
        metrics.extrapolation_sizes(20, sizes=[5, 10, 15, 20, 25])
    with pytest.raises(ValueError, match=">= 5 distinct"):
        metrics.extrapolation_sizes(20, sizes=[5, 10, 10, 15, 20])
    with pytest.raises(ValueError, match=">= 3 points"):
        metrics.extrapolate_to_infinity([10, 20], [1.0, 2.0])


# ---------------------------------------------------------------- precision and recall


def test_precision_recall_identical_and_disjoint_sets():
    x = np.random.default_rng(15).normal(size=(200, 5)).astype(np.float32)
    assert metrics.precision_recall(x, x.copy()) == (1.0, 1.0)
    assert metrics.precision_recall(x, x + 1000.0) == (0.0, 0.0)


def test_precision_recall_hand_computed():
    # 1-d, k = 3. Real 0, 1, 2, 3, 10: 3rd-nearest-other distances 3, 2, 2, 3, 9.
    # Generated 0.2, 0.3, 0.5, 0.6, 1.5 and a far cluster 50, 50.1, 50.3, 50.6: distances 0.4, 0.3, 0.3, 0.4, 1.2,
    # 0.6, 0.5, 0.3, 0.6. Precision: the five near points lie in real balls (e.g. 1.5 in 0's ball of radius 3), the
    # cluster in none: 5/9. Recall: 0 (0.2's ball), 1 and 2 (1.5's ball, radius 1.2) are covered; 3 is 1.5 from
    # 1.5 and 2.4 from 0.6, 10 is far from all: 3/5.
    real = np.array([0.0, 1.0, 2.0, 3.0, 10.0])[:, None]
    gen = np.array([0.2, 0.3, 0.5, 0.6, 1.5, 50.0, 50.1, 50.3, 50.6])[:, None]
    np.testing.assert_allclose(metrics.knn_radii(real), np.array([3, 2, 2, 3, 9.0]) ** 2, rtol=1e-12)
    np.testing.assert_allclose(metrics.knn_radii(gen), np.array([0.4, 0.3, 0.3, 0.4, 1.2, 0.6, 0.5, 0.3, 0.6]) ** 2,
                               rtol=1e-9)
    precision, recall = metrics.precision_recall(real, gen, k=3)
    assert precision == pytest.approx(5 / 9, abs=1e-15) and recall == pytest.approx(3 / 5, abs=1e-15)


def test_precision_recall_blocked_matches_brute_force():
    rng = np.random.default_rng(16)
    real = rng.normal(size=(300, 8))
    gen = rng.normal(size=(250, 8)) + 0.6
    # brute force: all pairwise distances at once
    rr = scipy.spatial.distance.cdist(real, real)
    gg = scipy.spatial.distance.cdist(gen, gen)
    gr = scipy.spatial.distance.cdist(gen, real)
    r_real, r_gen = np.sort(rr, axis=1)[:, 3], np.sort(gg, axis=1)[:, 3]
    want = (np.mean(np.any(gr <= r_real[None], axis=1)), np.mean(np.any(gr <= r_gen[:, None], axis=0)))
    assert 0.2 < want[0] < 0.95 and 0.2 < want[1] < 0.95  # a case where both are informative
    for block in (1024, 64, 7):
        assert metrics.precision_recall(real, gen, k=3, block=block) == want


# ---------------------------------------------------------------- reference statistics cache


class Counter:
    def __init__(self, features):
        self.features, self.calls = features, 0

    def __call__(self):
        self.calls += 1
        return self.features


def test_reference_statistics_subsample_is_deterministic_and_capped():
    x = np.random.default_rng(17).normal(size=(50, 3)).astype(np.float32)
    a = metrics.ReferenceStatistics.from_features(x, "k", max_features=20)
    b = metrics.ReferenceStatistics.from_features(x, "k", max_features=20)
    np.testing.assert_array_equal(a.features, b.features)
    assert a.features.shape == (20, 3) and a.num_examples == 50
    mu, sigma = metrics.feature_statistics(x)  # μ and Σ from all 50 rows
    np.testing.assert_array_equal(a.mu, mu)
    np.testing.assert_array_equal(a.sigma, sigma)
    # a smaller cap takes a prefix of the same subsample
    np.testing.assert_array_equal(metrics.ReferenceStatistics.from_features(x, "k", 7).features, a.features[:7])


def test_cache_computes_once_then_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("LEBM_JAX_CACHE", str(tmp_path))
    key = "mnist-test-28x28x1-classifier"
    compute = Counter(np.random.default_rng(18).normal(size=(40, 4)).astype(np.float32))
    first = metrics.cached_reference_statistics(key, compute, max_features=30)
    second = metrics.cached_reference_statistics(key, compute, max_features=30)
    assert compute.calls == 1
    files = list((tmp_path / "reference_stats").iterdir())
    assert [f.name for f in files] == [metrics.cache_file_name(key)]  # no temporary files left
    for field in ("mu", "sigma", "features"):
        np.testing.assert_array_equal(getattr(second, field), getattr(first, field))
    assert (second.num_examples, second.key) == (40, key)
    # fewer features asked: a prefix of the cache; more: recomputed
    fewer = metrics.cached_reference_statistics(key, compute, max_features=10)
    np.testing.assert_array_equal(fewer.features, first.features[:10])
    assert compute.calls == 1
    metrics.cached_reference_statistics(key, compute, max_features=40)
    assert compute.calls == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_cache_recomputes_a_corrupt_file(tmp_path, caplog, damage):
    compute = Counter(np.random.default_rng(19).normal(size=(30, 3)))
    first = metrics.cached_reference_statistics("cifar10-train", compute, directory=tmp_path)
    path = tmp_path / metrics.cache_file_name("cifar10-train")
    data = path.read_bytes()
    path.write_bytes({"garbage": b"not an npz" * 10, "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with caplog.at_level(logging.WARNING):
        again = metrics.cached_reference_statistics("cifar10-train", compute, directory=tmp_path)
    assert compute.calls == 2 and "unreadable" in caplog.text
    np.testing.assert_array_equal(again.sigma, first.sigma)
    metrics.ReferenceStatistics.load(path)  # rewritten whole


def test_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    x = np.random.default_rng(20).normal(size=(30, 3))
    path = tmp_path / "stats.npz"
    metrics.ReferenceStatistics.from_features(x, "old").save(path)

    def interrupted(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        metrics.ReferenceStatistics.from_features(x + 1, "new").save(path)
    monkeypatch.undo()
    assert metrics.ReferenceStatistics.load(path).key == "old"
    assert os.listdir(tmp_path) == ["stats.npz"]


def test_cache_file_names_are_safe_and_distinct():
    keys = ("a/b", "a_b", "a b", "../../etc/passwd", "", "mnist-test-28x28x1-inception")
    names = [metrics.cache_file_name(k) for k in keys]
    assert len(set(names)) == len(names)
    for name in names:
        assert Path(name).name == name and not name.startswith(".") and name.endswith(".npz")
        assert all(c.isalnum() or c in "._-" for c in name)
    assert names[-1].startswith("mnist-test-28x28x1-inception-")


# ---------------------------------------------------------------- the logged scalars


def test_metric_names():
    assert metrics.metric_name("fd", "inception") == "fid"
    assert metrics.metric_name("fd_inf_se", "inception") == "fid_inf_se"
    assert metrics.metric_name("kid_std", "inception") == "kid_std"
    assert metrics.metric_name("fd", "classifier") == "fd_classifier"
    assert metrics.metric_name("fd_inf", "classifier") == "fd_inf_classifier"
    assert metrics.metric_name("recall", "classifier") == "recall_classifier"
    with pytest.raises(ValueError, match="feature_space"):
        metrics.metric_name("fd", "Inception v3")


def test_sample_quality_scalars():
    rng = np.random.default_rng(21)
    ref = metrics.ReferenceStatistics.from_features(rng.normal(size=(80, 4)).astype(np.float32), "ref", 50)
    gen = (rng.normal(size=(60, 4)) * 1.2 + 0.3).astype(np.float32)
    kw = dict(kid_subsets=5, kid_subset_size=30, infinity=True)
    inception = metrics.sample_quality(gen, ref, "inception", **kw)
    classifier = metrics.sample_quality(gen, ref, "classifier", **kw)
    base = ["kid", "kid_std", "precision", "recall", "kid_inf", "kid_inf_se"]
    assert set(inception) == {"fid", "fid_inf", "fid_inf_se", *base}
    assert set(classifier) == {"fd_classifier", "fd_inf_classifier", "fd_inf_se_classifier",
                               *(f"{b}_classifier" for b in base)}
    assert not any("fid" in name for name in classifier)
    assert all(isinstance(v, float) and np.isfinite(v) for v in inception.values())
    assert list(classifier.values()) == list(inception.values())  # same numbers, other names
    mu, sigma = metrics.feature_statistics(gen)
    check_close("sample_quality fid = frechet_distance", inception["fid"],
                metrics.frechet_distance(mu, sigma, ref.mu, ref.sigma), atol=1e-12 * inception["fid"])
    kid = metrics.kernel_inception_distance(gen, ref.features, 5, 30, 0)
    assert (inception["kid"], inception["kid_std"]) == kid
    assert set(metrics.sample_quality(gen, ref, "inception", kid_subsets=2, kid_subset_size=10)) == {
        "fid", "kid", "kid_std", "precision", "recall"}  # fd_bootstrap = 0: no standard error
    kw = dict(kid_subsets=2, kid_subset_size=10, fd_bootstrap=7, seed=3)
    inception, classifier = (metrics.sample_quality(gen, ref, space, **kw) for space in ("inception", "classifier"))
    assert inception["fid_se"] == classifier["fd_se_classifier"] == metrics.frechet_distance_se(
        gen, ref.mu, ref.sigma, 7, seed=3)
    assert 0 < inception["fid_se"] < inception["fid"]
