"""Gradient statistics (lebm_jax.gradstats) against closed-form variances.

Law of the data part. A minibatch B of size |B| is drawn uniformly without replacement from n fixed
points, so the minibatch mean of per-example values v_i has

    Var_B[mean_{b∈B} v_b] = σ²_pop / |B| · (n − |B|) / (n − 1),      σ²_pop = (1/n) Σ_i (v_i − v̄)².

The tests enumerate all C(n, |B|) minibatches, so the whole law of the data part is known exactly (its
variance must equal the formula above; its fourth moment sets the tolerance below).

Sampling error of a variance. For R iid draws of Y with central moments μ2, μ4, the unbiased (ddof 1)
sample variance s² has Var(s²) = μ4/R − μ2²(R − 3)/(R(R − 1)), i.e. 2μ2²/(R − 1) for a Gaussian Y.
With Y = D + E, D the data part and E ~ N(0, v) independent MCMC noise,
μ2 = σ_D² + v and μ4 = μ4_D + 6σ_D² v + 3v². Averages over coordinates are correlated; the standard
error of an average is bounded by the average of the standard errors (used for the "ebm"/"gen"/"all"
scalars).

Toy gradient. Data x_i ∈ R³, ĝ = {"ebm": {"w": mean_B x_b}, "gen": {"u": mean_B x_b[0] + τ_u ε',
"v": v̄ + τ ε}} with ε, ε' ~ N(0, I) fresh per call: total variance σ_D² + noise, MCMC variance = noise
variance (exactly 0 for "w"), data variance = σ_D². Per-example losses "ebm": x_b[0] (no MCMC noise,
loss_var 0) and "gen": x_b[1] + κ η_b (loss_var κ²).

Linear-Gaussian model, vanilla objective. For the EBM bias b of f(z) = bᵀz − ½zᵀAz,
∂loss_E/∂b = mean_{s,b} z⁻ − mean_{s,b} z⁺ with z⁻ ~ N(m0, S0), z⁺ ~ N(μ_1(x_b), Σ_1) (Σ_1 does not
depend on x). With exact samples, per coordinate j:

    MCMC variance = (S0_jj + Σ1_jj) / (|B| S),     data variance = Var_B[mean_B μ_1(x_b)_j]  (law above),

and the mean gradient is m0 − mean_i μ_1(x_i) = −mean_i ∇_b log p(x_i). MALA with 100 steps of 0.4 mixes
in this 2-d problem (posterior std down to ~0.3, means up to a few units from the start), so its samples
are taken as exact; a larger step (0.6) leaves some random models visibly unmixed after 100 steps.
"""

import functools
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lebm_jax.core import gradstats
from lebm_jax.core import linear_gaussian as lg
from lebm_jax.core.langevin import ChainSpec
from lebm_jax.core.objectives import make_objective
from mc import check_close

# ---------------------------------------------------------------- helpers


def subset_means(values: np.ndarray, batch_size: int) -> np.ndarray:
    """Means of values (n, k) over every subset of size batch_size: the exact law of a minibatch mean."""
    idx = np.array(list(itertools.combinations(range(values.shape[0]), batch_size)))  # (C, B)
    return values[idx].mean(axis=1)  # (C, k)


def without_replacement_var(values: np.ndarray, batch_size: int) -> np.ndarray:
    n = values.shape[0]
    return values.var(axis=0) / batch_size * (n - batch_size) / (n - 1)


def variance_se(mu2, mu4, num_draws):
    """Standard error of the ddof-1 sample variance of num_draws iid draws with central moments mu2, mu4."""
    r = num_draws
    return np.sqrt(mu4 / r - mu2**2 * (r - 3) / (r * (r - 1)))


def data_moments(values: np.ndarray, batch_size: int):
    """Variance and fourth central moment of the minibatch mean, per coordinate, by enumeration."""
    means = subset_means(values, batch_size)
    dev = means - means.mean(axis=0)
    mu2 = np.mean(dev**2, axis=0)
    check_close("enumerated Var_B[minibatch mean] = σ²_pop/B (n−B)/(n−1)", mu2,
                without_replacement_var(values, batch_size), atol=1e-12 * (1 + mu2))
    return mu2, np.mean(dev**4, axis=0)


def sum_moments(mu2_d, mu4_d, noise_var):
    """μ2 and μ4 of D + E, E ~ N(0, noise_var) independent of D."""
    return mu2_d + noise_var, mu4_d + 6 * mu2_d * noise_var + 3 * noise_var**2


def f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# ---------------------------------------------------------------- the toy gradient

N, BATCH, TAU, TAU_U, KAPPA = 10, 4, 0.7, 0.4, 1.3
TOY_DATA = (np.random.default_rng(7).normal(size=(N, 3)) * [1.0, 2.0, 0.5] + [1.0, -2.0, 0.5]).astype(np.float32)
TOY_PARAMS = {"v_mean": np.array([[0.5, -1.0], [2.0, 0.3]], np.float32)}


def toy_grad_fn(params, x, key):
    k_v, k_u, k_loss = jax.random.split(key, 3)
    m = jnp.mean(x, axis=0)  # (3,)
    grads = {
        "ebm": {"w": m},
        "gen": {
            "u": m[:1] + TAU_U * jax.random.normal(k_u, (1,)),
            "v": params["v_mean"] + TAU * jax.random.normal(k_v, (2, 2)),
        },
    }
    losses = {"ebm": x[:, 0], "gen": x[:, 1] + KAPPA * jax.random.normal(k_loss, (x.shape[0],))}
    return grads, losses


@functools.cache
def toy_law():
    """Exact mean, total / MCMC variance, fourth moment and covariance of the toy gradient, per leaf."""
    data = TOY_DATA.astype(np.float64)
    mu2_d, mu4_d = data_moments(data, BATCH)
    pop_mean = data.mean(axis=0)
    v_mean = TOY_PARAMS["v_mean"].astype(np.float64)
    zero_v = np.zeros((2, 2))
    leaves = {  # leaf: (mean, data variance, data fourth moment, noise variance)
        ("ebm", "w"): (pop_mean, mu2_d, mu4_d, np.zeros(3)),
        ("gen", "u"): (pop_mean[:1], mu2_d[:1], mu4_d[:1], np.full(1, TAU_U**2)),
        ("gen", "v"): (v_mean, zero_v, zero_v, np.full((2, 2), TAU**2)),
    }
    # Covariance of the flattened gradient [w (3), u (1), v (4)]: data part from enumeration, plus noise.
    means = subset_means(data, BATCH)
    flat_data = np.concatenate([means, means[:, :1], np.zeros((means.shape[0], 4))], axis=1)
    cov = np.cov(flat_data, rowvar=False, ddof=0) + np.diag([0, 0, 0, TAU_U**2] + [TAU**2] * 4)
    groups = {"ebm": slice(0, 3), "gen": slice(3, 8), "all": slice(0, 8)}
    flat_mean = np.concatenate([pop_mean, pop_mean[:1], v_mean.ravel()])
    return leaves, cov, flat_mean, groups


@pytest.fixture(scope="module")
def toy_stats():
    r, m = 20000, 8
    run = jax.jit(lambda k: gradstats.gradient_statistics(
        toy_grad_fn, TOY_PARAMS, jnp.asarray(TOY_DATA), k, batch_size=BATCH, num_draws=r, num_batches=m))
    return run(jax.random.key(11)), r, m


def test_toy_per_leaf_variances(toy_stats):
    stats, r, m = toy_stats
    leaves, _, _, _ = toy_law()
    for (group, name), (mean, mu2_d, mu4_d, noise) in leaves.items():
        mu2, mu4 = sum_moments(mu2_d, mu4_d, noise)
        total = stats.total_var[group][name]
        mcmc = stats.mcmc_var[group][name]
        se_total = variance_se(mu2, mu4, r)
        se_mcmc = noise * np.sqrt(2 / (r - 1) / m)  # Gaussian within a batch; M batches averaged
        check_close(f"toy total_var {group}/{name}", total, mu2, se_total)
        check_close(f"toy mcmc_var {group}/{name}", mcmc, noise, se_mcmc, atol=1e-6 * np.max(mu2))
        check_close(f"toy total − mcmc {group}/{name} = data var", total - mcmc, mu2_d,
                    np.sqrt(se_total**2 + se_mcmc**2), atol=1e-6 * np.max(mu2))
        check_close(f"toy mean_grad {group}/{name}", stats.mean_grad[group][name], mean, np.sqrt(mu2 / r))
    # the pure-data leaf has no MCMC noise at all: a fixed batch gives the same gradient every time
    np.testing.assert_allclose(stats.mcmc_var["ebm"]["w"], 0.0, atol=1e-6 * np.max(leaves[("ebm", "w")][1]))
    # the fixture's n and |B| make the without-replacement factor (n−B)/(n−1) = 2/3 matter:
    w_total, w_law = np.asarray(stats.total_var["ebm"]["w"]), leaves[("ebm", "w")][1]
    with_replacement = w_law * (N - 1) / (N - BATCH)
    assert np.all(np.abs(w_total - with_replacement) > 10 * variance_se(w_law, leaves[("ebm", "w")][2], r))


def test_toy_group_scalars(toy_stats):
    stats, r, m = toy_stats
    leaves, cov, flat_mean, groups = toy_law()
    # per-coordinate exact values, flattened in the order of `cov`: w (3), u (1), v (4)
    order = [("ebm", "w"), ("gen", "u"), ("gen", "v")]
    total, noise, se_total, se_mcmc = [], [], [], []
    for key in order:
        _, mu2_d, mu4_d, nv = leaves[key]
        mu2, mu4 = sum_moments(mu2_d, mu4_d, nv)
        total.append(np.ravel(mu2))
        noise.append(np.ravel(nv))
        se_total.append(np.ravel(variance_se(mu2, mu4, r)))
        se_mcmc.append(np.ravel(nv * np.sqrt(2 / (r - 1) / m)))
    total, noise, se_total, se_mcmc = map(np.concatenate, (total, noise, se_total, se_mcmc))
    np.testing.assert_allclose(np.diag(cov), total, rtol=1e-12)  # the two descriptions of the law agree
    sc = stats.scalars
    for group, sl in groups.items():
        t, mc, st, sm = total[sl], noise[sl], se_total[sl], se_mcmc[sl]
        check_close(f"toy total_var/{group}", sc[f"total_var/{group}"], t.mean(), st.mean())
        check_close(f"toy mcmc_var/{group}", sc[f"mcmc_var/{group}"], mc.mean(), sm.mean(), atol=1e-6 * t.mean())
        check_close(f"toy data_var/{group}", sc[f"data_var/{group}"], (t - mc).mean(),
                    np.sqrt(st.mean() ** 2 + sm.mean() ** 2), atol=1e-6 * t.mean())

        # ||E ĝ|| and Σ Var / ||E ĝ||² from the mean of R draws: ||ḡ||² has mean ||μ||² + tr Σ/R (a bias)
        # and variance ≈ 4 μᵀΣμ/R (delta method).
        mu, sig = flat_mean[sl], cov[sl, sl]
        sq_norm, var_sum = mu @ mu, np.trace(sig)
        se_sq = np.sqrt(4 * mu @ sig @ mu / r)
        check_close(f"toy grad_norm/{group}", sc[f"grad_norm/{group}"], np.sqrt(sq_norm),
                    se_sq / (2 * np.sqrt(sq_norm)), var_sum / r / (2 * np.sqrt(sq_norm)))
        exact_nv = var_sum / sq_norm
        rel_se = st.sum() / var_sum + se_sq / sq_norm
        check_close(f"toy normalised_var/{group}", sc[f"normalised_var/{group}"], exact_nv,
                    exact_nv * rel_se, exact_nv * (var_sum / r + se_sq**2 / sq_norm) / sq_norm)
    # per example: "gen" loss has MCMC noise κ² (M·B independent estimates averaged); "ebm" loss none
    check_close("toy loss_var/gen = κ²", sc["loss_var/gen"], KAPPA**2, KAPPA**2 * np.sqrt(2 / (r - 1) / (m * BATCH)))
    check_close("toy loss_var/ebm = 0", sc["loss_var/ebm"], 0.0, atol=1e-6)


# ---------------------------------------------------------------- coord_var: spread of one gradient

OFFSETS = {"ebm": {"a": np.linspace(-10.0, 10.0, 3)}, "gen": {"k": np.linspace(-5.0, 30.0, 6).reshape(2, 3)}}
TAU_C = 0.5


def offset_grad_fn(params, x, key):
    """ĝ = offsets + τ ε: estimator variance τ² per coordinate, coordinate spread ≈ the offsets' spread."""
    keys = jax.random.split(key, 2)
    grads = {
        group: {name: jnp.asarray(off, jnp.float32) + TAU_C * jax.random.normal(k, off.shape)
                for name, off in leaves.items()}
        for (group, leaves), k in zip(OFFSETS.items(), keys)
    }
    zeros = jnp.zeros(x.shape[0])
    return grads, {"ebm": zeros, "gen": zeros}


def test_coord_var_is_the_spread_of_one_gradient_not_an_estimator_variance():
    # One draw's spread over P coordinates, c = centred offsets: (1/P)||c + τΠε||², Π the centring
    # projection; mean (||c||² + τ²(P − 1))/P, variance (4τ²||c||² + 2τ⁴(P − 1))/P².
    r = 4000
    data = jnp.zeros((5, 1))
    stats = jax.jit(lambda k: gradstats.gradient_statistics(
        offset_grad_fn, {}, data, k, batch_size=2, num_draws=r))(jax.random.key(3))
    offsets = {"ebm": OFFSETS["ebm"]["a"].ravel(), "gen": OFFSETS["gen"]["k"].ravel()}
    offsets["all"] = np.concatenate([offsets["ebm"], offsets["gen"]])
    for group, off in offsets.items():
        p, c2 = off.size, np.sum((off - off.mean()) ** 2)
        mean = (c2 + TAU_C**2 * (p - 1)) / p
        se = np.sqrt((4 * TAU_C**2 * c2 + 2 * TAU_C**4 * (p - 1)) / p**2 / r)
        spread = stats.scalars[f"coord_var/{group}"]
        check_close(f"coord_var/{group} = spread of one gradient's coordinates", spread, mean, se)
        total = stats.scalars[f"total_var/{group}"]
        check_close(f"total_var/{group} = τ² here", total, TAU_C**2, TAU_C**2 * np.sqrt(2 / (r - 1)))
        assert spread > 50 * total  # the two are different quantities


# ---------------------------------------------------------------- the real objective, linear-Gaussian model

SIGMA0, SIGMA = 1.0, 0.5
N_LG, BATCH_LG, CHAINS, STEPS, STEP_SIZE = 20, 8, 2, 100, 0.4
R_LG, M_LG = 1000, 4


@pytest.fixture(scope="module")
def lg_problem():
    model = lg.linear_gaussian_model(latent_dim=2, data_dim=4, prior_sigma=SIGMA0, lik_sigma=SIGMA)
    params = model.init(jax.random.key(0))
    data = 2.5 * jax.random.normal(jax.random.key(1), (N_LG, 4))
    chain = ChainSpec(STEPS, STEP_SIZE, "mala")
    objective = make_objective("vanilla", model, prior_chain=chain, posterior_chain=chain, num_chains=CHAINS)
    grad_fn = gradstats.objective_grad_fn(objective)

    # exact law of ∂loss_E/∂b
    prior = f64(lg.prior(params, SIGMA0))
    post = f64(jax.vmap(lambda x: lg.power_posterior(params, x, 1.0, SIGMA0, SIGMA))(data))
    np.testing.assert_allclose(post.cov, np.broadcast_to(post.cov[0], post.cov.shape), atol=1e-6)
    mcmc = (np.diag(prior.cov) + np.diag(post.cov[0])) / (BATCH_LG * CHAINS)  # (nz,)
    mu2_d, mu4_d = data_moments(post.mean, BATCH_LG)
    grad_log_px = jax.vmap(jax.grad(lambda p, x: lg.log_marginal(p, x, SIGMA0, SIGMA)), (None, 0))(params, data)
    mean = -np.mean(np.asarray(grad_log_px["ebm"]["params"]["b"], np.float64), axis=0)
    np.testing.assert_allclose(mean, prior.mean - post.mean.mean(axis=0), rtol=1e-4, atol=1e-5)
    law = {"mean": mean, "mcmc": mcmc, "data": mu2_d, "data_mu4": mu4_d}

    run = jax.jit(lambda k: gradstats.gradient_statistics(
        grad_fn, params, data, k, batch_size=BATCH_LG, num_draws=R_LG, num_batches=M_LG))
    return model, params, data, grad_fn, law, run(jax.random.key(2))


def test_vanilla_ebm_bias_variances_match_closed_form(lg_problem):
    _, _, _, _, law, stats = lg_problem
    mcmc, data = law["mcmc"], law["data"]
    total = mcmc + data
    mu2, mu4 = sum_moments(data, law["data_mu4"], mcmc)
    se_total = variance_se(mu2, mu4, R_LG)
    se_mcmc = mcmc * np.sqrt(2 / (R_LG - 1) / M_LG)  # ĝ_b given B is a mean of Gaussian samples
    got_mcmc = stats.mcmc_var["ebm"]["params"]["b"]
    got_total = stats.total_var["ebm"]["params"]["b"]
    check_close("vanilla ∂b mcmc_var = (S0_jj + Σ1_jj)/(B S)", got_mcmc, mcmc, se_mcmc)
    check_close("vanilla ∂b total_var = MCMC + Var_B μ1", got_total, total, se_total)
    check_close("vanilla ∂b total − mcmc = Var_B mean_B μ1", got_total - got_mcmc, data,
                np.sqrt(se_total**2 + se_mcmc**2))
    check_close("vanilla ∂b mean = −mean_i ∇_b log p(x_i)", stats.mean_grad["ebm"]["params"]["b"], law["mean"],
                np.sqrt(total / R_LG))
    # the data part is not negligible here, so a decomposition that lost it would fail above
    assert np.all(data > 10 * np.sqrt(se_total**2 + se_mcmc**2))


def test_data_variance_matches_between_batch_anova(lg_problem):
    """Var_B E_ξ[ĝ | B] estimated without gradstats: M' batches of our own, R' MCMC draws each,
    between-batch variance of the batch means minus (within-batch variance)/R' (one-way ANOVA)."""
    _, params, data, grad_fn, law, stats = lg_problem
    num_batches, draws = 600, 4
    rng = np.random.default_rng(5)
    idx = np.stack([rng.choice(N_LG, BATCH_LG, replace=False) for _ in range(num_batches)])
    xs = jnp.repeat(data[idx], draws, axis=0)  # (M'·R', B, D)
    keys = jax.random.split(jax.random.key(6), num_batches * draws)
    g = jax.jit(jax.vmap(lambda x, k: grad_fn(params, x, k)[0]["ebm"]["params"]["b"]))(xs, keys)
    g = np.asarray(g, np.float64).reshape(num_batches, draws, -1)  # (M', R', nz)

    batch_means = g.mean(axis=1)  # (M', nz)
    within = g.var(axis=1, ddof=1)  # (M', nz)
    dev = batch_means - batch_means.mean(axis=0)
    between = batch_means.var(axis=0, ddof=1)
    anova = between - within.mean(axis=0) / draws
    # SE: the sample variance of the M' iid batch means, plus the mean within-batch term (bounded by the sum)
    se_anova = variance_se(np.mean(dev**2, 0), np.mean(dev**4, 0), num_batches) + within.std(0, ddof=1) / np.sqrt(
        num_batches) / draws
    check_close("ANOVA Var_B E[ĝ_b|B] vs closed form", anova, law["data"], se_anova)

    mu2, mu4 = sum_moments(law["data"], law["data_mu4"], law["mcmc"])
    se_lib = np.sqrt(variance_se(mu2, mu4, R_LG) ** 2 + (law["mcmc"] * np.sqrt(2 / (R_LG - 1) / M_LG)) ** 2)
    data_var = stats.total_var["ebm"]["params"]["b"] - stats.mcmc_var["ebm"]["params"]["b"]
    check_close("gradstats total − mcmc vs ANOVA (∂b)", data_var, anova, np.sqrt(se_lib**2 + se_anova**2))
    # and the within-batch variance is the MCMC variance
    check_close("ANOVA within-batch var vs (S0_jj + Σ1_jj)/(B S)", within.mean(0), law["mcmc"],
                law["mcmc"] * np.sqrt(2 / (draws - 1) / num_batches))


def test_chunked_draws_are_identical():
    # lax.map in chunks of 3 (not a divisor of R = 10: the remainder path runs too) must use the same keys,
    # batches and draws as one vmap over all R. The two programs are compiled differently, so the
    # reductions over the draws may round differently: allow a few float32 ulps (and 1e-12 for the "w" MCMC
    # variance, which is round-off around 0), and check that another
    # key moves the results by far more than that.
    def stats_fn(chunk):
        return jax.jit(lambda k: gradstats.gradient_statistics(
            toy_grad_fn, TOY_PARAMS, jnp.asarray(TOY_DATA), k, batch_size=BATCH, num_draws=10, num_batches=2,
            chunk=chunk))

    run_whole, run_chunked = stats_fn(None), stats_fn(3)
    whole, chunked, other = run_whole(jax.random.key(9)), run_chunked(jax.random.key(9)), run_whole(jax.random.key(10))
    same = lambda a, b: np.testing.assert_allclose(a, b, rtol=4e-7, atol=1e-12)  # noqa: E731
    for field in ("total_var", "mcmc_var", "mean_grad", "scalars"):
        jax.tree.map(same, getattr(chunked, field), getattr(whole, field))
    rel = lambda a, b: np.max(np.abs(a - b) / np.abs(b))  # noqa: E731
    assert min(jax.tree.leaves(jax.tree.map(rel, other.total_var, whole.total_var))) > 1e-3


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"num_draws": 1}, "num_draws=1"),
        ({"num_draws": 0}, "num_draws=0"),
        ({"batch_size": N + 1}, f"batch_size={N + 1}"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"num_batches": 0}, "num_batches=0"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, pattern):
    args = {"batch_size": BATCH, "num_draws": 10, **kwargs}
    with pytest.raises(ValueError, match=re.escape(pattern)):
        gradstats.gradient_statistics(toy_grad_fn, TOY_PARAMS, jnp.asarray(TOY_DATA), jax.random.key(0), **args)
