"""The adaptive TI ladder (`ladder.interval_lengths`, `equal_length_ladder`, `adapt_ladder`; design.md §3).

- On the closed form (linear-Gaussian, σ = 0.3, latent dim 16, D ∈ {64, 256, 784}), the placement iterated on
  the exact rung statistics, as training re-estimates them on its current ladder, converges to the ladder of
  equal thermodynamic length ∫√V_t dt of the exact V_t, computed independently on a fine grid in float64.
- Its trapezoid error at N = 10 and 20 is smaller than the uniform ladder's (p = 1) and than the best power
  ladder's over p ∈ {0.25, 0.5, …, 8}.
- In training (the tiny digits config) the ladder is logged, strictly increasing with t_0 = 0 and t_{N−1} = 1,
  changes only at multiples of ``ti.adapt_every``, and a resumed run continues bit for bit; with MALA, two
  chains and replica exchange too.
- Off (the default), the state is a plain `TrainState`; the ladder as an input means the fixed ladder.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from config_files import load_config
from jax.experimental.compilation_cache import compilation_cache
from tiny import tiny_config

from lebm_jax.api import Trained
from lebm_jax.core import ladder, sampling
from lebm_jax.core.langevin import ChainSpec
from lebm_jax.core.objectives import loss_and_grads, make_objective
from lebm_jax.data import datasets as data
from lebm_jax.data.images import to_float
from lebm_jax.measure.base import measure
from lebm_jax.measure.gradient_stats import GradientStats
from lebm_jax.measure.loglik import LogLikelihood, training_estimator
from lebm_jax.training import build, loop
from lebm_jax.training import config as config_lib
from lebm_jax.training.step import TrainState, create_train_state, step_metrics
from lebm_jax.training.writers import read_jsonl
from tests.test_annealing import SIGMA, SIGMA0, numpy_matrices, problem

DIMS = (64, 256, 784)
RUNG_COUNTS = (10, 20)
POWERS = np.arange(0.25, 8.0 + 1e-9, 0.25)
ITERATIONS = 25
# The fixed point of the placement on N rungs is the equal-length ladder of the rung-based length estimate,
# which differs from the continuous one by the estimate's discretisation error (measured: ≤ 4.3e-4 in t from
# the rung means, ≤ 1.3e-3 from the rung variances, ≤ 3% relative at any inner rung); the tolerances leave
# room for that, not for a wrong placement (the power ladders closest to it differ by > 1e-2).
ABS_TOL = {"mean": 1e-3, "variance": 3e-3}
REL_TOL = {"mean": 0.02, "variance": 0.05}


def exact_rungs(params, x, ts) -> tuple[np.ndarray, np.ndarray]:
    """E_t and V_t (T, B) of the linear-Gaussian model in float64 numpy (design.md §4), all t at once."""
    b, A, W, c = numpy_matrices(params)
    nz, d = b.shape[0], W.shape[0]
    x, ts = np.asarray(x, np.float64), np.asarray(ts, np.float64)
    gram = W.T @ W
    cov = np.linalg.inv(np.eye(nz) / SIGMA0**2 + A + ts[:, None, None] / SIGMA**2 * gram)  # (T, nz, nz)
    mu = np.einsum("tij,tbj->tbi", cov, b + ts[:, None, None] / SIGMA**2 * ((x - c) @ W)[None])  # (T, B, nz)
    r = x[None] - mu @ W.T - c  # (T, B, D)
    trace = np.einsum("tij,ji->t", cov, gram)
    mean = -0.5 * d * np.log(2 * np.pi * SIGMA**2) - (np.sum(r**2, -1) + trace[:, None]) / (2 * SIGMA**2)
    a = r @ W / SIGMA**2  # (T, B, nz)
    ms = np.einsum("ij,tjk->tik", gram / (2 * SIGMA**2), cov)
    var = np.einsum("tbi,tij,tbj->tb", a, cov, a) + 2 * np.einsum("tij,tji->t", ms, ms)[:, None]
    return mean, var


def trapezoid_error(params, x, exact, ts) -> float:
    """Mean over the examples of |trapezoid of the exact E_t on ``ts`` − log p(x)|."""
    mean, _ = exact_rungs(params, x, ts)
    return float(np.mean(np.abs(np.sum(0.5 * np.diff(ts)[:, None] * (mean[1:] + mean[:-1]), 0) - exact)))


def reference_ladder(params, x, num_temps: int) -> np.ndarray:
    """Equal shares of ∫_0^1 √V̄_t dt (V̄: the batch mean of the exact V_t) on a fine grid t = u^6, 2001 points."""
    fine = np.linspace(0.0, 1.0, 2001) ** 6
    root = np.sqrt(exact_rungs(params, x, fine)[1].mean(1))
    cum = np.concatenate([[0.0], np.cumsum(0.5 * np.diff(fine) * (root[1:] + root[:-1]))])
    return np.interp(np.linspace(0.0, cum[-1], num_temps), cum, fine)


def iterate_placement(params, x, num_temps: int, statistic: str) -> tuple[np.ndarray, float]:
    """The placement iterated from the uniform ladder on the exact batch-mean rung statistics of the current
    ladder; returns the last ladder and the largest change of its last iteration."""
    ts, change = np.linspace(0.0, 1.0, num_temps), np.inf
    for _ in range(ITERATIONS):
        mean, var = exact_rungs(params, x, ts)
        variance = jnp.asarray(var.mean(1)) if statistic == "variance" else None
        lengths = ladder.interval_lengths(jnp.asarray(ts), jnp.asarray(mean.mean(1)), variance)
        new = np.asarray(ladder.equal_length_ladder(jnp.asarray(ts), lengths))
        assert new[0] == 0.0 and new[-1] == 1.0 and np.all(np.diff(new) > 0)
        ts, change = new, float(np.max(np.abs(new - ts)))
    return ts, change


@pytest.fixture(scope="module")
def closed_form() -> dict:
    """Per (D, N): the reference ladder, the placements from both statistics, and the trapezoid errors."""
    out = {}
    with jax.enable_x64(True):
        for dim in DIMS:
            _, params, x, exact = problem(16, dim, 16)
            for n in RUNG_COUNTS:
                row = {"reference": reference_ladder(params, x, n)}
                for statistic in ("mean", "variance"):
                    row[statistic] = iterate_placement(params, x, n, statistic)
                    row[f"error_{statistic}"] = trapezoid_error(params, x, exact, row[statistic][0])
                powers = [trapezoid_error(params, x, exact, np.linspace(0.0, 1.0, n) ** p) for p in POWERS]
                row["error_p1"] = powers[int(np.argmin(np.abs(POWERS - 1.0)))]
                row["best_p"], row["error_best_p"] = float(POWERS[int(np.argmin(powers))]), float(min(powers))
                out[dim, n] = row
    return out


@pytest.mark.parametrize("statistic", ["mean", "variance"])
def test_placement_converges_to_the_equal_length_ladder_of_the_exact_variance(closed_form, statistic):
    for (dim, n), row in closed_form.items():
        ts, change = row[statistic]
        ref = row["reference"]
        gap, rel = np.max(np.abs(ts - ref)), np.max(np.abs(np.log(ts[1:] / ref[1:])))
        print(f"D={dim:4d} N={n:2d} from rung {statistic}s: max |t − t*| {gap:.2e}, max |log t/t*| {rel:.3f}, "
              f"last change {change:.1e}")
        assert change < 1e-5, "the iteration did not settle"
        assert gap <= ABS_TOL[statistic] and rel <= REL_TOL[statistic]


def test_adapted_trapezoid_beats_the_uniform_and_the_best_power_ladder(closed_form):
    for (dim, n), row in closed_form.items():
        print(f"D={dim:4d} N={n:2d} trapezoid error: p=1 {row['error_p1']:8.3f}  best p={row['best_p']:.2f} "
              f"{row['error_best_p']:7.3f}  adaptive (means) {row['error_mean']:7.3f}  "
              f"(variances) {row['error_variance']:7.3f}")
        for statistic in ("mean", "variance"):
            assert row[f"error_{statistic}"] < row["error_p1"]
            assert row[f"error_{statistic}"] <= row["error_best_p"]


def test_guards_keep_a_ladder():
    ts = ladder.power_schedule(6, 2.0)
    mean = jnp.array([-50.0, -10.0, -5.0, -5.0, -5.5, -4.0])  # a flat and a falling interval: floored
    new = ladder.equal_length_ladder(ts, ladder.interval_lengths(ts, mean))
    assert new[0] == 0.0 and new[-1] == 1.0 and bool(jnp.all(jnp.diff(new) > 0))
    for bad in (jnp.full((5,), jnp.nan), jnp.zeros((5,)), jnp.array([1.0, jnp.inf, 1.0, 1.0, 1.0])):
        np.testing.assert_array_equal(ladder.equal_length_ladder(ts, bad), ts)
    with pytest.raises(ValueError, match="ti.adapt_every"):
        ladder.check_adaptation(-1, 0.9)
    with pytest.raises(ValueError, match="ti.adapt_decay"):
        ladder.check_adaptation(2, 1.0)


def test_config_fields_are_validated():
    config = tiny_config("digits", variant="ti")
    config_lib.validate(config)
    for field, value in (("ti.adapt_every", -1), ("ti.adapt_decay", -0.1), ("ti.adapt_decay", 1.0)):
        bad = tiny_config("digits", variant="ti", **{field: value})
        with pytest.raises(ValueError, match=field.replace(".", r"\.")):
            config_lib.validate(bad)


# ----------------------------------------------------------------------------------------------------
# In training

TIMED = ("steps_per_sec", "time/train_seconds")
EVERY = 2
RUN = {"variant": "ti", "ti.num_temps": 5, "ti.adapt_every": EVERY, "ti.adapt_decay": 0.5, "num_steps": 6,
       "checkpoint_every": 3, "sample_every": 6, "max_to_keep": 5}


def training_rows(workdir) -> list[dict]:
    rows = [r for r in read_jsonl(workdir / "metrics.jsonl") if "loss_gen" in r]
    return [{k: v for k, v in r.items() if k not in TIMED} for r in rows]


def logged_ladders(rows, num_temps: int) -> np.ndarray:
    return np.array([[r[f"rung_t/{i}"] for i in range(num_temps)] for r in rows])


def check_ladders(ladders: np.ndarray) -> None:
    """Row s − 1 is the ladder step s − 1 (0-based) ran on; it may differ from the previous only when s − 1
    is a multiple of EVERY."""
    assert np.all(ladders[:, 0] == 0.0) and np.all(ladders[:, -1] == 1.0)
    assert np.all(np.diff(ladders, axis=1) > 0)
    for n in range(1, ladders.shape[0]):
        if n % EVERY:
            np.testing.assert_array_equal(ladders[n], ladders[n - 1])
    assert not np.array_equal(ladders[0], ladders[-1]), "the ladder never moved"


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent XLA cache for this module's runs (the resumed run and the uninterrupted one compile the
    same program); jax's settings are restored afterwards."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {name: getattr(jax.config, name) for name in names}
    for name, value in zip(names, (str(tmp_path_factory.mktemp("xla_cache")), 0.0, 0), strict=True):
        jax.config.update(name, value)
    compilation_cache.reset_cache()
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def dataset(compile_cache) -> data.ImageData:
    return data.load(load_config("digits").data)


def test_training_logs_a_valid_ladder_and_resumes_exactly(tmp_path, dataset):
    full = loop.train_and_evaluate(tiny_config("digits", **RUN), str(tmp_path / "full"), dataset=dataset)
    rows = training_rows(tmp_path / "full")
    assert [r["step"] for r in rows] == list(range(1, 7))
    check_ladders(logged_ladders(rows, 5))
    after = np.asarray(full.state.ladder.temperatures)  # placed after step 6, for the next step to run on
    assert after[0] == 0.0 and after[-1] == 1.0 and np.all(np.diff(after) > 0)

    part = tmp_path / "part"
    loop.train_and_evaluate(tiny_config("digits", **{**RUN, "num_steps": 3}), str(part), dataset=dataset)
    resumed = loop.train_and_evaluate(tiny_config("digits", **RUN), str(part), dataset=dataset)
    assert int(resumed.state.step) == 6
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(full.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert training_rows(part) == rows


def test_training_with_mala_two_chains_and_exchange(tmp_path, dataset):
    settings = {**RUN, "num_steps": 4, "checkpoint_every": 4, "sample_every": 4, "ti.num_chains": 2,
                "posterior_chain.method": "mala", "ti.exchange_every": 3}
    result = loop.train_and_evaluate(tiny_config("digits", **settings), str(tmp_path), dataset=dataset)
    rows = training_rows(tmp_path)
    check_ladders(logged_ladders(rows, 5))
    assert all(f"swap_accept/{i}" in rows[-1] and f"rung_var/{i}" in rows[-1] for i in range(4))
    assert result.state.ladder.variance.shape == (5,)

    # From Python: the checkpoint's adapted ladder, and the training estimator on it with the run's exchange
    trained = Trained.load(str(tmp_path))
    np.testing.assert_array_equal(trained.ladder, np.asarray(result.state.ladder.temperatures))
    x = dataset.test[:3]
    key = jax.random.key(5)
    est = trained.training_log_likelihood(x, key, num_chains=2)
    np.testing.assert_array_equal(est["temperatures"], trained.ladder)
    assert est["swap_accept"].shape == (4, 3) and est["log_px_friel"].shape == (3,)
    direct = sampling.ti_log_likelihood(trained.model, build.posterior_chain(trained.config),
                                        trained.params, jnp.asarray(to_float(x)), key, num_chains=2,
                                        temperatures=jnp.asarray(trained.ladder), exchange_every=3)
    np.testing.assert_allclose(est["log_px"], direct["log_px"], rtol=1e-5)
    np.testing.assert_array_equal(est["swap_accept"], direct["swap_accept"])
    # overrides: a power ladder, no exchange, ULA; bad ones name the problem
    ula = trained.training_log_likelihood(x, key, power=2.0, exchange_every=0, method="ula")
    np.testing.assert_allclose(ula["temperatures"], (np.arange(5) / 4) ** 2.0, rtol=1e-6)
    assert "swap_accept" not in ula and np.all(np.isfinite(ula["log_px"]))
    with pytest.raises(ValueError, match=r"temperatures=\[0.0, 0.6, 0.5, 1.0\]: a ladder must increase strictly"):
        trained.training_log_likelihood(x, key, temperatures=[0.0, 0.6, 0.5, 1.0])
    with pytest.raises(ValueError, match=r"exchange_every=2 must divide the posterior chain's num_steps=3"):
        trained.training_log_likelihood(x, key, exchange_every=2)
    with pytest.raises(ValueError, match=r"method='hmc' is not one of"):
        trained.training_log_likelihood(x, key, method="hmc")


def test_evaluators_that_run_the_objective_use_the_ladder_they_are_given():
    """The gradient statistics and the protocol's training estimator of an adaptive run get its current ladder
    (through `measure`, as the loop and offline evaluation call them): given the power ladder p = 3, they equal
    the same evaluators of a fixed-ladder objective with p = 3, and the estimator differs on its own p = 1 start (on the
    linear-Gaussian model, whose data the evaluators read as images of shape (D,)); evaluators that do not run
    the objective are called without it."""
    model = problem(2, 6, 1)[0]
    params = model.init(jax.random.key(0))
    chain = ChainSpec(6, 0.2, "mala")
    objective = {p: make_objective("ti", model, prior_chain=chain, posterior_chain=chain, num_temps=5, power=p,
                                   adapt_every=2 if p == 1.0 else 0) for p in (1.0, 3.0)}
    images = np.random.default_rng(0).integers(0, 256, (32, 6), dtype=np.uint8)  # to_float: [-1, 1] data
    cfg = config_lib.base_config().gradstats
    cfg.num_draws = 4
    stats = {p: GradientStats(cfg, objective[p], images, 8) for p in (1.0, 3.0)}
    key = jax.random.key(3)
    p3 = ladder.power_schedule(5, 3.0)
    on_p3, reference = measure(stats[1.0], params, key, p3), measure(stats[3.0], params, key)
    for name in ("total_var/gen", "mcmc_var/gen", "loss_var/gen"):
        np.testing.assert_allclose(on_p3[name], reference[name], rtol=1e-4)
    x = jnp.asarray(to_float(images[:4]))
    estimator = {p: training_estimator(objective[p]) for p in (1.0, 3.0)}
    on_p3 = estimator[1.0](params, x, key, p3)
    np.testing.assert_allclose(on_p3, estimator[3.0](params, x, key), rtol=1e-5)
    assert np.all(np.abs(on_p3 - estimator[1.0](params, x, key)) > 1e-3)
    assert LogLikelihood.reads_ladder and GradientStats.reads_ladder

    calls = []

    class Plain:  # an evaluator that does not run the objective: called as evaluator(params, key)
        def __call__(self, params, key):
            calls.append("plain")
            return {}

    measure(Plain(), params, key, p3)
    assert calls == ["plain"]


def test_off_by_default_the_state_and_the_step_are_those_of_the_fixed_ladder():
    """The default config does not adapt, and its state is a plain `TrainState` with exactly the leaves of
    params, optimiser states, step and guard (the checkpoint tree of before). The off path runs the code of
    before (``temperatures=None`` reaches the same calls); that a tiny ti run's checkpoint SHA-256 and metrics
    equal the parent commit's bit for bit was checked once by hand. Here: the objective given its own power
    ladder as a traced input (the adaptive path) computes the same numbers as the fixed ladder, up to the
    float32 round-off of a differently fused program (MALA with exchange, linear-Gaussian model)."""
    assert config_lib.base_config().ti.adapt_every == 0
    config = tiny_config("digits", variant="ti")
    assert build.initial_ladder(config) is None
    model, optimizers = build.build_model(config), build.make_optimizers(config, 10)
    state = jax.eval_shape(lambda key: create_train_state(model, optimizers, key), jax.random.key(0))  # no compute
    assert type(state) is TrainState
    assert [f.name for f in dataclasses.fields(state)] == ["step", "params", "opt_state", "nonfinite_step"]
    expected = 2 + len(jax.tree.leaves(state.params)) + len(jax.tree.leaves(state.opt_state))
    assert len(jax.tree.leaves(state)) == expected

    lg_model, params, x, _ = problem(4, 16, 8)
    keys = jax.random.split(jax.random.key(3), 8)
    chain = ChainSpec(4, 0.1, "mala")
    objective = make_objective("ti", lg_model, prior_chain=chain, posterior_chain=chain, num_chains=2, num_temps=6,
                               power=3.0, exchange_every=2)
    fixed = jax.jit(lambda p: loss_and_grads(objective, p, x, keys))(params)
    given = jax.jit(lambda p, ts: loss_and_grads(objective, p, x, keys, ts))(params, objective.temperatures)
    for a, b in zip(jax.tree.leaves((fixed.grads, step_metrics(fixed.losses, fixed.aux))),
                    jax.tree.leaves((given.grads, step_metrics(given.losses, given.aux))), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
