"""Both objectives against the closed-form answers of the linear-Gaussian model (docs/design.md §4).

The quadratic tilt and linear generator go through the same `Vanilla` / `ThermodynamicIntegration`
code, chains and `loss_and_grads` as the image model. Each estimate is averaged over R independent
draws (vmap); its standard error comes from the spread of those draws. Well-mixed MALA chains make the
samples exact up to Monte Carlo error, so:

- vanilla gradients          → −∇ log p(x)                                    (Fisher's identity)
- TI log p̂(x)                → Σ_i w_i E_{t_i}[ℓ]  (and log p(x) up to the trapezoid's exact error)
- TI pathwise generator grad → −Σ_i w_i E_{t_i}[∇_β ℓ]   (closed-form Gaussian moments)
- TI fisher generator grad   → −∇_β Σ_i w_i E_{t_i}[ℓ]   (and −∇ log p(x) up to the quadrature error)
- both variants' EBM grad    → −∇_α log p(x)
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lebm_jax.core import linear_gaussian as lg
from lebm_jax.core.model import image_model
from lebm_jax.bench.flops import count_flops
from lebm_jax.core.ladder import power_schedule
from lebm_jax.core.langevin import ChainSpec
from lebm_jax.core.objectives import example_keys, loss_and_grads, make_objective, sample_power_posteriors
from mc import check_close, mean_and_se

SIGMA0, SIGMA = 1.0, 0.5
MALA = ChainSpec(num_steps=150, step_size=0.6, method="mala")
R = 16  # independent draws per estimate


@pytest.fixture(scope="module")
def problem():
    model = lg.linear_gaussian_model(latent_dim=2, data_dim=4, prior_sigma=SIGMA0, lik_sigma=SIGMA)
    params = model.init(jax.random.key(0))
    x = 1.5 * jax.random.normal(jax.random.key(1), (3, 4))
    return model, params, x


def exact_grad(fn, params, x):
    """−∇ of the batch mean of fn(params, x_b): the expected loss gradient."""
    return jax.grad(lambda p: -jnp.mean(jax.vmap(lambda xb: fn(p, xb))(x)))(params)


def draws(objective, params, x, seed=0):
    """R independent (grads, losses, aux) from loss_and_grads, stacked on a leading axis."""
    keys = jax.random.split(jax.random.key(seed), R)
    return jax.jit(jax.vmap(lambda k: loss_and_grads(objective, params, x, k)))(keys)


def check_tree(name, stacked, exact, bias=None):
    """Each leaf's mean over draws against ``exact`` within 5 SE (+ a known bias bound)."""
    paths = jax.tree_util.tree_flatten_with_path(exact)[0]
    for (path, ex), est, b in zip(paths, jax.tree.leaves(stacked),
                                  jax.tree.leaves(bias) if bias is not None else [0.0] * len(paths)):
        mean, se = mean_and_se(est)
        leaf = "/".join(str(getattr(k, "key", k)) for k in path if getattr(k, "key", None) != "params")
        check_close(f"{name} {leaf}", mean, ex, se, b)


def log_marginal(p, xb):
    return lg.log_marginal(p, xb, SIGMA0, SIGMA)


def test_vanilla_gradients_match_fisher_identity(problem):
    model, params, x = problem
    obj = make_objective("vanilla", model, prior_chain=MALA, posterior_chain=MALA, num_chains=500)
    res = draws(obj, params, x)
    check_tree("vanilla grad", res.grads, exact_grad(log_marginal, params, x))
    assert np.all(np.asarray(res.aux.batch["posterior_accept"]) > 0.5)


def test_ti_log_likelihood_estimate_within_its_error_bound(problem):
    model, params, x = problem
    obj = make_objective("ti", model, prior_chain=MALA, posterior_chain=MALA, num_chains=200,
                         num_temps=10, power=1.0)
    ts = obj.temperatures
    res = draws(obj, params, x, seed=1)
    trap = jax.vmap(lambda xb: lg.trapezoid_log_lik(params, xb, ts, SIGMA0, SIGMA))(x)
    exact = jax.vmap(lambda xb: log_marginal(params, xb))(x)
    mean, se = mean_and_se(res.aux.batch["log_px"])
    check_close("TI log p̂(x) vs trapezoid of exact E_t", mean, trap, se)
    # against log p(x) itself, the bound adds the trapezoid's (exactly known) quadrature error
    check_close("TI log p̂(x) vs log p(x)", mean, exact, se, np.abs(trap - exact))
    # the loss is −mean log p̂ and the per-rung expectations are the E_i
    np.testing.assert_allclose(res.losses.gen, -np.mean(res.aux.batch["log_px"], axis=1), rtol=1e-5)
    e_exact = jax.vmap(lambda t: jnp.mean(jax.vmap(
        lambda xb: lg.expected_log_lik(params, xb, t, SIGMA0, SIGMA))(x)))(ts)
    mean, se = mean_and_se(res.aux.rungs["rung_log_lik"])
    check_close("TI rung E_i vs exact E_t", mean, e_exact, se)
    # the rung variances V_i (S ≥ 2 chains), averaged over examples, against the exact V_t
    v = jax.vmap(lambda t: jnp.mean(jax.vmap(
        lambda xb: lg.variance_log_lik(params, xb, t, SIGMA0, SIGMA))(x)))(ts)
    mean = np.mean(res.aux.rungs["rung_var"], axis=0)
    check_close("TI rung V_i vs exact V_t (relative)", mean / v, 1.0, bias_bound=0.15)
    assert "log_px_friel" not in res.aux.batch  # never logged unchecked: see the held-out protocol


@pytest.mark.parametrize("power", [0.3, 3.0])
def test_ti_pathwise_gradient_matches_closed_form(problem, power):
    model, params, x = problem
    obj = make_objective("ti", model, prior_chain=MALA, posterior_chain=MALA, num_chains=200,
                         num_temps=10, power=power, gradient="pathwise")
    ts = obj.temperatures
    res = draws(obj, params, x, seed=2)
    pathwise = jax.tree.map(
        lambda *g: -jnp.mean(jnp.stack(g), 0),
        *[lg.pathwise_gradient(params, x[b], ts, SIGMA0, SIGMA) for b in range(x.shape[0])])
    check_tree(f"TI pathwise p={power} gen grad", res.grads["gen"], pathwise["gen"])
    # the EBM trains in this variant too: its gradient is the exact −∇_α log p(x)
    check_tree(f"TI pathwise p={power} ebm grad", res.grads["ebm"], exact_grad(log_marginal, params, x)["ebm"])
    # and the pathwise gradient is not the likelihood gradient: far outside the Monte Carlo error
    exact = exact_grad(log_marginal, params, x)["gen"]["params"]["W"]
    mean, se = mean_and_se(res.grads["gen"]["params"]["W"])
    assert np.max(np.abs(mean - exact) / se) > 20


def test_ti_fisher_gradient_matches_exact_gradient(problem):
    model, params, x = problem
    obj = make_objective("ti", model, prior_chain=MALA, posterior_chain=MALA, num_chains=200,
                         num_temps=20, power=2.0, gradient="fisher")
    ts = obj.temperatures
    res = draws(obj, params, x, seed=3)
    on_ladder = exact_grad(lambda p, xb: lg.trapezoid_log_lik(p, xb, ts, SIGMA0, SIGMA), params, x)
    exact = exact_grad(log_marginal, params, x)
    check_tree("TI fisher gen grad vs ∇ trapezoid", res.grads["gen"], on_ladder["gen"])
    quadrature = jax.tree.map(lambda a, b: jnp.abs(a - b), on_ladder["gen"], exact["gen"])
    check_tree("TI fisher gen grad vs ∇ log p(x)", res.grads["gen"], exact["gen"], quadrature)
    check_tree("TI fisher ebm grad", res.grads["ebm"], exact["ebm"])
    # the covariance term changes the gradient, not the loss value
    np.testing.assert_allclose(res.losses.gen, -np.mean(res.aux.batch["log_px"], axis=1), rtol=1e-5)


@pytest.mark.parametrize("variant, extra", [("vanilla", {}), ("ti", {"gradient": "fisher", "num_chains": 3})])
def test_each_gradient_part_is_the_gradient_of_its_own_loss(problem, variant, extra):
    model, params, x = problem
    obj = make_objective(variant, model, prior_chain=MALA, posterior_chain=MALA, **extra)
    key = jax.random.key(5)
    res = jax.jit(lambda p: loss_and_grads(obj, p, x, key))(params)
    samples = jax.jit(lambda p: obj.sample(p, x, key))(params)
    g_ebm = jax.jit(jax.grad(lambda p: obj.losses(p, x, samples)[0].ebm))(params)
    g_gen = jax.jit(jax.grad(lambda p: obj.losses(p, x, samples)[0].gen))(params)
    chex.assert_trees_all_close(res.grads["ebm"], g_ebm["ebm"], rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(res.grads["gen"], g_gen["gen"], rtol=1e-5, atol=1e-6)
    # loss_E does not touch β and loss_G does not touch α
    chex.assert_trees_all_equal(g_ebm["gen"], jax.tree.map(jnp.zeros_like, params["gen"]))
    chex.assert_trees_all_equal(g_gen["ebm"], jax.tree.map(jnp.zeros_like, params["ebm"]))


def test_bad_objective_settings_name_the_field(problem):
    model, params, x = problem
    chains = dict(prior_chain=MALA, posterior_chain=MALA)
    with pytest.raises(ValueError, match="variant='vanila'"):
        make_objective("vanila", model, **chains)
    with pytest.raises(ValueError, match="ti.num_chains=1"):
        make_objective("ti", model, gradient="fisher", **chains)
    with pytest.raises(ValueError, match="ti.gradient='exact'"):
        make_objective("ti", model, gradient="exact", **chains)
    with pytest.raises(ValueError, match="ti.num_temps=1"):
        make_objective("ti", model, num_temps=1, **chains)
    with pytest.raises(ValueError, match="ti.power=0"):
        make_objective("ti", model, power=0, **chains)
    with pytest.raises(ValueError, match="prior_chain.step_size=-0.1"):
        make_objective("vanilla", model, prior_chain=ChainSpec(10, -0.1), posterior_chain=MALA)
    with pytest.raises(ValueError, match="posterior_chain.method='hmc'"):
        make_objective("vanilla", model, prior_chain=MALA, posterior_chain=ChainSpec(10, 0.1, "hmc"))
    obj = make_objective("vanilla", model, **chains)
    with pytest.raises(ValueError, match=r"data shape \(3, 5\).*event_shape=\(4,\)"):
        loss_and_grads(obj, params, jnp.zeros((3, 5)), jax.random.key(0))
    with pytest.raises(ValueError, match=r"latent shape \(7, 3\).*latent_dim=2"):
        model.tilt(params["ebm"], jnp.zeros((7, 3)))


@pytest.mark.parametrize("variant", ["vanilla", "ti"])
def test_image_model_step_is_finite_and_compiles_once(variant):
    model = image_model((16, 16, 1), latent_dim=8, ngf=4, ebm_hidden=16)
    params = model.init(jax.random.key(0))
    obj = make_objective(variant, model, prior_chain=ChainSpec(5, 0.4), posterior_chain=ChainSpec(4, 0.1),
                         num_temps=4, power=2.0)

    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(p, x, key):
        return loss_and_grads(obj, p, x, key)

    for i in range(3):
        x = jax.random.uniform(jax.random.key(10 + i), (5, 16, 16, 1), minval=-1, maxval=1)
        res = step(params, x, jax.random.key(i))
        assert np.isfinite(res.losses.ebm) and np.isfinite(res.losses.gen)
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(res.grads))
    assert res.aux.per_example.gen.shape == (5,)
    if variant == "ti":
        assert res.aux.rungs["rung_log_lik"].shape == (4,) and res.aux.batch["log_px"].shape == (5,)
        assert res.aux.rungs["rung_accept"].shape == (4,)
    with pytest.raises(ValueError, match=r"data shape \(5, 16, 16, 3\)"):
        loss_and_grads(obj, params, jnp.zeros((5, 16, 16, 3)), jax.random.key(0))


@pytest.mark.parametrize("method", ["ula", "mala"])
def test_prior_rungs_skip_the_generator_and_leave_the_chains_unchanged(method):
    # The t = 0 rung's chains, run without the generator, are the chains run with 0 · log p(x|z): same keys,
    # same draws (MALA's accept step included), for 3/4 of the generator's work with 4 rungs.
    model = image_model((16, 16, 1), latent_dim=8, ngf=4, ebm_hidden=16)
    params = model.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (5, 16, 16, 1), minval=-1, maxval=1)
    keys = example_keys(jax.random.key(2), 5)
    ts = power_schedule(4, 2.0)
    chain = ChainSpec(6, 0.1, method)

    def run(prior_rungs):
        return sample_power_posteriors(model, chain, params, x, keys, ts, 2, prior_rungs=prior_rungs)

    full, skipped = run(0), run(1)
    assert full.z.shape == skipped.z.shape == (4, 2, 5, 8)
    np.testing.assert_allclose(skipped.z, full.z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(skipped.accept_rate, full.accept_rate, atol=1e-6)
    assert float(jnp.max(jnp.abs(full.z[0] - full.z[1]))) > 0.1  # the rungs really differ
    conv = [count_flops(jax.make_jaxpr(lambda k=k: run(k))()).conv for k in (0, 1)]  # all in the generator
    assert conv[1] == pytest.approx(3 / 4 * conv[0], rel=1e-12)
    with pytest.raises(ValueError, match="prior_rungs=5"):
        run(5)


@pytest.mark.parametrize("variant", ["vanilla", "ti"])
def test_per_example_keys_make_samples_independent_of_the_batch_split(problem, variant):
    # One key per example: an example's chains do not depend on which other examples share its batch
    # (what makes a step on 4 devices equal to the same global batch on 1 device).
    model, params, x = problem
    ula = ChainSpec(num_steps=20, step_size=0.3)
    obj = make_objective(variant, model, prior_chain=ula, posterior_chain=MALA, num_chains=2, num_temps=3)
    keys = jax.random.split(jax.random.key(7), x.shape[0])
    whole = obj.sample(params, x, keys)
    parts = [obj.sample(params, x[i:i + 1], keys[i:i + 1]) for i in range(x.shape[0])]
    for name in ("z_prior", "z_posterior"):  # (S, B, nz) and (T, S, B, nz)
        joined = jnp.concatenate([getattr(p, name) for p in parts], axis=-2)  # batch axis is next to the latent axis
        np.testing.assert_allclose(getattr(whole, name), joined, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"key of shape \(2,\)"):
        obj.sample(params, x, keys[:2])
