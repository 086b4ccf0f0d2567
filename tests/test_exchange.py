"""Replica exchange between neighbouring rungs (`lebm_jax.core.exchange`) against exact answers.

On the linear-Gaussian model every rung's power posterior π_t = N(μ_t, Σ_t) is known (docs/design.md §4), so:

- long MALA chains with exchange still sample each rung's π_t (means of ℓ and z, variance of ℓ), for an
  odd and an even number of rungs;
- each pair's observed swap acceptance equals E[min(1, exp((t_i − t_{i+1})(ℓ(z_{i+1}) − ℓ(z_i))))] over
  independent exact draws z_i ~ π_{t_i}, z_{i+1} ~ π_{t_{i+1}}, computed here by a float64 numpy Monte
  Carlo of the closed-form Gaussians;
- in the training regime (short chains from π0) the effect of exchange is measured against the exact E_t;
- exchange_every = 0 is the old code path, bit for bit; the settings are validated; an example's chains
  do not depend on its batch, under jit and shard_map.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lebm_jax.core import exchange
from lebm_jax.core.ladder import power_schedule, trapezoid_weights
from lebm_jax.core.langevin import ChainSpec, langevin_chain, sample_base, split_keys
from lebm_jax.core.objectives import example_keys, make_objective, sample_power_posteriors
from lebm_jax.training import config as config_lib
from lebm_jax.training.step import step_metrics
from config_files import load_config
from mc import check_close, mean_and_se
from test_annealing import SIGMA, SIGMA0, exact_rungs, numpy_matrices, problem


@functools.cache
def small_problem():
    """Five data points of a 2-latent, 6-dimensional linear-Gaussian model (shared: building one takes seconds)."""
    return problem(2, 6, 5)


def exact_power_posteriors(params, x, ts) -> tuple[np.ndarray, np.ndarray]:
    """π_t = N(μ_t, Σ_t) in float64: means (T, B, nz) and covariances (T, nz, nz) (docs/design.md §4)."""
    b, A, W, c = numpy_matrices(params)
    nz = b.shape[0]
    x = np.asarray(x, np.float64)
    means, covs = [], []
    for t in np.asarray(ts, np.float64):
        cov = np.linalg.inv(np.eye(nz) / SIGMA0**2 + A + t / SIGMA**2 * W.T @ W)
        means.append((cov @ (b[:, None] + t / SIGMA**2 * W.T @ (x - c).T)).T)
        covs.append(0.5 * (cov + cov.T))
    return np.array(means), np.array(covs)


def numpy_log_lik(params, x, z) -> np.ndarray:
    """ℓ(z) = log N(x; Wz + c, σ² I) in float64 for z (..., B, nz) against x (B, D)."""
    _, _, W, c = numpy_matrices(params)
    r = np.asarray(x, np.float64) - z @ W.T - c
    d = W.shape[0]
    return -0.5 * d * np.log(2 * np.pi * SIGMA**2) - np.sum(r**2, -1) / (2 * SIGMA**2)


def exact_swap_accept(params, x, ts, n: int = 1_000_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """E[min(1, exp((t_i − t_{i+1})(ℓ(z_{i+1}) − ℓ(z_i))))], z_i ~ π_{t_i} and z_{i+1} ~ π_{t_{i+1}}
    independent, per pair and example (T − 1, B), by float64 Monte Carlo with ``n`` draws; and its SE."""
    rng = np.random.default_rng(seed)
    means, covs = exact_power_posteriors(params, x, ts)
    ts = np.asarray(ts, np.float64)
    num_temps, batch, nz = means.shape
    ell = []
    for i in range(num_temps):
        chol = np.linalg.cholesky(covs[i])
        z = means[i] + rng.standard_normal((n, batch, nz)) @ chol.T  # (n, B, nz)
        ell.append(numpy_log_lik(params, x, z))  # (n, B)
    rates, ses = [], []
    for i in range(num_temps - 1):
        log_alpha = (ts[i] - ts[i + 1]) * (ell[i + 1] - ell[i])
        a = np.exp(np.minimum(log_alpha, 0.0))
        rates.append(a.mean(0))
        ses.append(a.std(0, ddof=1) / np.sqrt(n))
    return np.array(rates), np.array(ses)


@pytest.mark.parametrize("num_temps", [4, 5])
def test_long_chains_with_exchange_sample_every_rung_exactly(num_temps):
    """From π0, 300 MALA steps (s = 0.3) with a swap round every 3 (100 rounds, parities alternating),
    1000 chains per example: per rung, the means of ℓ and z within 5 SE of E_t and μ_t and the variance
    of ℓ within 5 SE of V_t, with an even and an odd number of rungs (p = 2)."""
    model, params, x, _ = problem(2, 8, 2)
    ts = power_schedule(num_temps, 2.0)
    chain = ChainSpec(300, 0.3, "mala")
    s = 1000
    keys = example_keys(jax.random.key(11), x.shape[0])
    res = jax.jit(lambda: sample_power_posteriors(model, chain, params, x, keys, ts, s, prior_rungs=1,
                                                  exchange_every=3))()
    ell = np.asarray(model.log_likelihood(params["gen"], x, res.z), np.float64)  # (T, S, B)
    e_t, v_t = exact_rungs(params, x, ts)
    mu_t, _ = exact_power_posteriors(params, x, ts)
    mean, se = mean_and_se(ell, axis=1)
    check_close(f"exchange T={num_temps}: rung means of ℓ vs E_t", mean, e_t, se, atol=1e-3)
    z = np.asarray(res.z, np.float64)  # (T, S, B, nz)
    mean, se = mean_and_se(z, axis=1)
    check_close(f"exchange T={num_temps}: rung means of z vs μ_t", mean, mu_t, se, atol=1e-4)
    # SE of a variance from S draws: V √((κ − 1)/S); ℓ is a quadratic form in Gaussian z, κ ≤ 9 allowed.
    check_close(f"exchange T={num_temps}: rung variances of ℓ vs V_t", ell.var(1, ddof=1) / v_t, 1.0,
                np.sqrt(8 / s))
    swap = np.mean(np.asarray(res.swap_accept), (1, 2))
    print(f"T={num_temps}: swap acceptance per pair {np.round(swap, 3)}, "
          f"MALA acceptance per rung {np.round(np.mean(np.asarray(res.accept_rate), (1, 2)), 3)}")
    assert res.swap_accept.shape == (num_temps - 1, s, x.shape[0])
    assert np.all(swap > 0.3) and np.all(swap < 1.0)  # swaps happen: the test is not vacuous


def test_swap_acceptance_matches_its_exact_value():
    """Chains started at exact draws of their π_t (so every round is at stationarity), 2 rounds of 5 MALA
    steps: each pair is proposed once per chain, its indicators are independent Bernoulli draws, and
    the observed rate per pair and example lies within 5 binomial SE of the exact expectation."""
    model, params, x, _ = problem(2, 8, 2)
    ts = power_schedule(6, 2.0)
    s, batch, nz = 10_000, x.shape[0], 2
    means, covs = exact_power_posteriors(params, x, ts)
    rng = np.random.default_rng(3)
    chols = np.linalg.cholesky(covs)  # (T, nz, nz)
    eps = rng.standard_normal((len(ts), s, batch, nz))
    z0 = jnp.asarray(means[:, None] + np.einsum("tij,tsbj->tsbi", chols, eps), jnp.float32)  # (T, S, B, nz)
    temps = ts[:, None, None]

    def run(keys):
        return exchange.exchange_chain(
            ChainSpec(10, 0.3, "mala"), keys, z0,
            lambda z: model.log_likelihood(params["gen"], x, z),
            lambda z: model.log_prior(params["ebm"], z),
            ts, exchange_every=5, key_axis=2)

    res = jax.jit(run)(example_keys(jax.random.key(4), batch))
    observed = np.mean(np.asarray(res.swap_accept, np.float64), axis=1)  # (T − 1, B); one proposal per chain
    exact, exact_se = exact_swap_accept(params, x, ts)
    binomial_se = np.sqrt(exact * (1 - exact) / s)
    for i in range(len(ts) - 1):
        print(f"pair ({i},{i + 1}) t = {float(ts[i]):.3f}–{float(ts[i + 1]):.3f}: observed {observed[i]}, "
              f"exact {np.round(exact[i], 4)} (binomial SE {np.round(binomial_se[i], 4)})")
    check_close("swap acceptance vs exact E[min(1, exp(Δt Δℓ))]", observed, exact,
                np.sqrt(binomial_se**2 + exact_se**2))
    np.testing.assert_array_equal(exchange.num_proposals(len(ts), 2), np.ones(len(ts) - 1))
    assert np.all((exact > 0.2) & (exact < 0.95))  # informative rates, neither certain nor rare


def _short_chain_errors(model, params, x, ts, chain, num_chains, exchange_every, seed):
    """|mean of ℓ − E_t| per rung (T,) averaged over examples, and the variance over chain draws (one chain
    per rung, as in training) of the trapezoid log p̂(x) and its bias, averaged over examples."""
    keys = example_keys(jax.random.key(seed), x.shape[0])
    res = jax.jit(lambda: sample_power_posteriors(model, chain, params, x, keys, ts, num_chains, prior_rungs=1,
                                                  exchange_every=exchange_every))()
    ell = np.asarray(model.log_likelihood(params["gen"], x, res.z), np.float64)  # (T, S, B)
    e_t, _ = exact_rungs(params, x, ts)
    w = np.asarray(trapezoid_weights(ts), np.float64)
    log_px = np.einsum("t,tsb->sb", w, ell)  # each chain index s is one independent draw of log p̂(x)
    return (np.mean(np.abs(ell.mean(1) - e_t), 1), float(np.mean(log_px.var(0, ddof=1))),
            float(np.mean(np.abs(log_px.mean(0) - w @ e_t))))


def _print_rungs(title, ts, off, on):
    print(title)
    print("  t_i              " + " ".join(f"{float(t):7.3f}" for t in ts))
    print("  |bias| without   " + " ".join(f"{v:7.2f}" for v in off[0]))
    print("  |bias| with      " + " ".join(f"{v:7.2f}" for v in on[0]))
    print(f"  trapezoid log p̂(x): variance {off[1]:.3g} → {on[1]:.3g} ({off[1] / on[1]:.3g}×), "
          f"|bias| {off[2]:.3g} → {on[2]:.3g} ({off[2] / on[2]:.3g}×)")


def _without_and_with_exchange(power: float, chain: ChainSpec, num_chains: int, title: str, t_min: float):
    """Short chains on 10 rungs of ``power`` from π0, without and with a swap round after every step:
    (errors without, errors with, mask of the rungs t ≥ t_min), printed side by side."""
    model, params, x, _ = problem(4, 16, 2)
    ts = power_schedule(10, power)
    off = _short_chain_errors(model, params, x, ts, chain, num_chains, 0, seed=0)
    on = _short_chain_errors(model, params, x, ts, chain, num_chains, 1, seed=0)
    _print_rungs(title, ts, off, on)
    mask = np.asarray(ts) >= t_min
    print(f"  rungs t ≥ {t_min}: mean |bias| {np.mean(off[0][mask]):.3g} → {np.mean(on[0][mask]):.3g} "
          f"({np.mean(off[0][mask]) / np.mean(on[0][mask]):.3g}×); rung 0: {off[0][0]:.3g} → {on[0][0]:.3g}")
    return off, on, mask


def test_exchange_rescues_rungs_the_shared_step_size_does_not_fit():
    """One MALA step size for the whole ladder (s = 0.3, 40 steps from π0, 10 uniform rungs) suits the
    warm rungs and is far too large for the cold ones (t ≥ 0.5), whose chains reject almost every proposal
    and stay near their π0 start. With a swap round after every step, equilibrated states move up the
    ladder: the cold rungs' bias of the mean of ℓ against E_t, the trapezoid's bias and its variance over
    chain draws all fall by more than 10× (measured: ~2500×, ~280× and ~50×; 12–57× for the variance over
    three other problems and chain seeds)."""
    off, on, cold = _without_and_with_exchange(1.0, ChainSpec(40, 0.3, "mala"), 1000,
                                               "MALA s = 0.3, K = 40, T = 10, p = 1: without / with exchange every step", 0.5)
    assert np.mean(off[0][cold]) > 10 * np.mean(on[0][cold])
    assert off[1] > 10 * on[1] and off[2] > 10 * on[2]
    assert on[2] < 1.0  # within a nat of the exact trapezoid


def test_exchange_with_small_step_ula_moves_the_bias_towards_the_prior_end():
    """The training regime: 20 ULA steps of s = 0.1 from π0, 10 rungs with p = 3, swaps after every
    step. No rung mixes; exchange sorts the unrelaxed states by ℓ, passing low-ℓ ones towards t = 0.
    Measured against the exact E_t: the bias of the mean of ℓ falls by ~1.4× on the rungs t ≥ 0.08 and
    the variance of the trapezoid over chain draws by ~1.4× (1.29–1.45× and 1.37–1.50× over three other
    problems and chain seeds), the trapezoid's bias by only ~1.17×, while the rungs nearest t = 0 get
    worse (rung 0: 2.2–5.3×). Asserted: ≥ 1.2× and ≥ 1.25× reductions, and the rung-0 bias growing."""
    off, on, upper = _without_and_with_exchange(3.0, ChainSpec(20, 0.1, "ula"), 2000,
                                                "ULA s = 0.1, K = 20, T = 10, p = 3: without / with exchange every step", 0.08)
    assert np.mean(off[0][upper]) > 1.2 * np.mean(on[0][upper])
    assert off[1] > 1.25 * on[1]
    assert on[0][0] > off[0][0]


def test_exchange_off_is_the_old_code_path():
    """exchange_every = 0 traces the same computation as a call without the argument and gives bit-identical
    draws (MALA: its accept step included); the objective's default is off."""
    model, params, x5, _ = small_problem()
    x = x5[:3]
    ts = power_schedule(4, 2.0)
    keys = example_keys(jax.random.key(2), x.shape[0])
    mala = ChainSpec(6, 0.2, "mala")

    def old_call():
        return sample_power_posteriors(model, mala, params, x, keys, ts, 2, prior_rungs=1)

    def off_call():
        return sample_power_posteriors(model, mala, params, x, keys, ts, 2, prior_rungs=1, exchange_every=0)

    assert str(jax.make_jaxpr(off_call)()) == str(jax.make_jaxpr(old_call)())  # the same computation
    old, off = jax.jit(lambda: (old_call(), off_call()))()
    assert type(off) is type(old)
    np.testing.assert_array_equal(off.z, old.z)
    np.testing.assert_array_equal(off.accept_rate, old.accept_rate)
    assert make_objective("ti", model, prior_chain=mala, posterior_chain=mala).exchange_every == 0


def _exchange_by_hand(model, params, x, keys, ts, chain, exchange_every, prior_rungs):
    """Replica exchange written plainly, as an independent reference: each round runs `langevin_chain` on
    the rungs' log-densities from scratch (every rung evaluated afresh at the segment's start) and then
    evaluates ℓ at every rung for the swap test. The same keys as `exchange.exchange_chain`."""
    k0, k = split_keys(keys, 2, key_axis=0)
    z = sample_base(k0, (len(ts), 1, x.shape[0], model.latent_dim), model.prior_sigma, key_axis=2)
    temps = ts[:, None, None]
    rounds = chain.num_steps // exchange_every
    accepted = []
    for r, kr in enumerate(split_keys(k, rounds, key_axis=0)):
        k_chain, k_swap = split_keys(kr, 2, key_axis=0)
        z = langevin_chain(k_chain, z, lambda v: model.log_power_posterior(params, x, v, temps), exchange_every,
                           chain.step_size, chain.method, key_axis=2).z
        z, _, acc = exchange.swap_round(k_swap, z, model.log_likelihood(params["gen"], x, z), ts, r % 2, key_axis=2)
        accepted.append(acc)
    return z, jnp.stack(accepted)


@pytest.mark.parametrize("method,prior_rungs", [("ula", 1), ("mala", 1), ("mala", 0)])
def test_cached_exchange_chain_equals_the_chain_evaluated_afresh(method, prior_rungs):
    """`exchange_chain` carries ℓ, ∇ℓ, log p_α and ∇ log p_α from step to step and rebuilds a swapped state's
    score at its new rung from them; the plain reference evaluates every rung's log-density again after each
    swap. Same keys: the same swap decisions in every round and the same final states up to float rounding."""
    model, params, x5, _ = small_problem()
    ts = power_schedule(5, 2.0) if prior_rungs else jnp.linspace(0.1, 1.0, 5)
    chain = ChainSpec(12, 0.3, method)
    keys = example_keys(jax.random.key(7), x5.shape[0])
    ref_z, ref_acc = jax.jit(lambda: _exchange_by_hand(model, params, x5, keys, ts, chain, 3, prior_rungs))()
    res = jax.jit(lambda: sample_power_posteriors(model, chain, params, x5, keys, ts, 1, prior_rungs=prior_rungs,
                                                  exchange_every=3))()
    proposals = exchange.num_proposals(len(ts), 4)[:, None, None]
    np.testing.assert_array_equal(res.swap_accept, np.sum(np.asarray(ref_acc), 0) / proposals)
    np.testing.assert_allclose(res.z, ref_z, rtol=1e-4, atol=1e-4)
    assert 0.1 < float(np.mean(res.swap_accept)) < 0.9  # swaps both taken and refused: the rebuild is exercised


def test_ti_objective_logs_swap_acceptance_per_pair():
    """The TI objective with exchange logs swap_accept/i for the pair (i, i+1). With exchange_every = K there
    is a single round, of even pairs only: the odd pairs' rate is NaN (never proposed), not 0."""
    model, params, x5, _ = small_problem()
    x = x5[:2]
    objective = make_objective("ti", model, prior_chain=ChainSpec(4, 0.2), posterior_chain=ChainSpec(4, 0.2, "mala"),
                               num_chains=3, num_temps=5, power=2.0, exchange_every=4)
    samples = jax.jit(objective.sample)(params, x, example_keys(jax.random.key(1), x.shape[0]))
    losses, aux = objective.losses(params, x, samples)
    metrics = step_metrics(losses, aux)
    assert [k for k in metrics if k.startswith("swap_accept/")] == [f"swap_accept/{i}" for i in range(4)]
    rate = np.array([float(metrics[f"swap_accept/{i}"]) for i in range(4)])
    assert np.all(np.isnan(rate[1::2])) and np.all((rate[0::2] > 0) & (rate[0::2] <= 1))
    assert np.isfinite(float(losses.gen)) and np.isfinite(float(losses.ebm))
    np.testing.assert_array_equal(exchange.num_proposals(5, 1), [1, 0, 1, 0])
    np.testing.assert_array_equal(exchange.num_proposals(5, 5), [3, 2, 3, 2])


def test_swap_round_exchanges_only_the_accepted_disjoint_pairs():
    """A swap round by hand: with ℓ increasing along the ladder every proposed swap has log α < 0; with ℓ
    decreasing, log α > 0 and every proposed pair swaps, exactly the pairs of the round's parity."""
    ts = jnp.linspace(0.0, 1.0, 5)
    rung = jnp.arange(5.0).reshape(5, 1, 1)  # (T, 1, 1)
    z = jnp.broadcast_to(rung[..., None], (5, 1, 3, 2))  # (T, S, B, nz): rung i holds i
    ell = jnp.broadcast_to(-rung, (5, 1, 3))  # ℓ decreasing in t: always accepted
    keys = jax.random.split(jax.random.key(0), 3)
    for parity, order in ((0, [1, 0, 3, 2, 4]), (1, [0, 2, 1, 4, 3])):
        z_new, ell_new, accepted = exchange.swap_round(keys, z, ell, ts, parity, key_axis=2)
        np.testing.assert_array_equal(z_new[:, 0, 0, 0], order)
        np.testing.assert_array_equal(ell_new[:, 0, 0], -np.asarray(order, np.float32))
        np.testing.assert_array_equal(accepted[:, 0, 0], np.arange(4) % 2 == parity)
    # ℓ increasing by 50 per rung, Δt = 0.25: α = e^{−12.5} ≈ 4e-6, no swap among these 3 examples
    _, _, accepted = exchange.swap_round(keys, z, jnp.broadcast_to(50 * rung, (5, 1, 3)), ts, 0, key_axis=2)
    assert not np.any(accepted)


def test_bad_exchange_settings_name_the_field():
    model = small_problem()[0]
    mala = ChainSpec(10, 0.2, "mala")
    with pytest.raises(ValueError, match=r"ti.exchange_every=3 must divide the posterior chain's num_steps=10"):
        make_objective("ti", model, prior_chain=mala, posterior_chain=mala, exchange_every=3)
    with pytest.raises(ValueError, match=r"ti.exchange_every=-1 must be an int >= 0"):
        make_objective("ti", model, prior_chain=mala, posterior_chain=mala, exchange_every=-1)
    with pytest.raises(ValueError, match=r"exchange_every=4 must divide"):
        exchange.check_exchange_every(4, 10)
    for value, phrase in ((7, "config.ti.exchange_every=7: must divide posterior_chain.num_steps=20"),
                          (-2, "config.ti.exchange_every=-2: must be an int >= 0")):
        config = load_config("digits")
        config.update_from_flattened_dict({"posterior_chain.num_steps": 20, "ti.exchange_every": value})
        with pytest.raises(ValueError, match=phrase):
            config_lib.validate(config)
    config = load_config("digits")
    config.update_from_flattened_dict({"posterior_chain.num_steps": 20, "ti.exchange_every": 5})
    config_lib.validate(config)
    assert config_lib.base_config().ti.exchange_every == 0


def test_an_examples_chains_do_not_depend_on_its_batch_under_jit_and_shard_map():
    """Per-example keys: the same example, with the same key, in a batch of 5 (jit) and in a batch of 3
    (jit ∘ shard_map over the batch axis) gets the same ladder chains and swap decisions."""
    model, params, x5, _ = small_problem()
    ts = power_schedule(5, 2.0)
    keys5 = example_keys(jax.random.key(9), 5)
    chain = ChainSpec(12, 0.3, "mala")

    def draws(x, keys):
        res = sample_power_posteriors(model, chain, params, x, keys, ts, 4, prior_rungs=1, exchange_every=3)
        return res.z, res.swap_accept  # (T, S, B, nz), (T − 1, S, B)

    whole = jax.jit(draws)(x5, keys5)
    mesh = jax.make_mesh((1,), ("data",))
    batch_axis = P(None, None, "data")
    sharded = jax.jit(jax.shard_map(draws, mesh=mesh, in_specs=(P("data"), P("data")),
                                    out_specs=(batch_axis, batch_axis)))
    rows = np.array([4, 0, 2])
    on_mesh = NamedSharding(mesh, P("data"))
    z, swaps = sharded(jax.device_put(x5[rows], on_mesh), jax.device_put(keys5[rows], on_mesh))
    np.testing.assert_allclose(z, whole[0][:, :, rows], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(swaps, whole[1][:, :, rows])
    assert float(np.mean(whole[1])) > 0.1  # swaps were accepted
