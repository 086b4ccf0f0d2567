"""The held-out log-likelihood protocol on trained digits models (`lebm_jax.measure.loglik`).

Two digits models (vanilla and ti p = 1) are trained for 150 steps; the study's protocol settings
(configs/study_digits.py) then score the same 16 test images for both. TI and AIS, computed from one sweep
but with different systematic errors, agree within 4 standard errors of their paired difference; the
half-ladder check is small against the difference between the two models; the same protocol keys give
the same numbers whichever run calls them; and the training estimators differ from the protocol the way
their construction says: vanilla's posterior log-likelihood lies above log p(x) (by the posterior's KL
from the prior), ti's 10-rung trapezoid at p = 1 below it.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from config_files import load_config

from lebm_jax.data import datasets as data
from lebm_jax.measure.loglik import LogLikelihood, summarise
from lebm_jax.training import build, loop
from lebm_jax.training.checkpoint import Checkpointer, abstract_like
from lebm_jax.training.step import create_train_state

STEPS = 150


@pytest.fixture(scope="module")
def digits():
    return data.load(load_config("digits").data)


def protocol_config():
    return load_config("study_digits").train.loglik


def train_digits(tmp_path_factory, digits, variant: str):
    """150 steps of configs/digits.py at batch 50 with every evaluator off: (config, model, params)."""
    workdir = tmp_path_factory.mktemp(f"loglik_{variant}")
    config = load_config("digits")
    config.update_from_flattened_dict({
        "variant": variant, "batch_size": 50, "num_steps": STEPS, "log_every": 50, "checkpoint_every": STEPS,
        "sample_every": STEPS, "eval.every": 0, "gradstats.every": 0, "loglik.every": 0,
    })
    loop.train_and_evaluate(config, str(workdir), dataset=digits)
    model = build.build_model(config)
    ckpt = Checkpointer(str(workdir), max_to_keep=None, read_only=True)
    template = create_train_state(model, build.make_optimizers(config, 1), jax.random.key(0))
    state = ckpt.restore(STEPS, abstract_like(template), config)
    ckpt.close()
    return config, model, state.params


@pytest.fixture(scope="module")
def scored(tmp_path_factory, digits):
    """variant -> (metrics, per-example sweep results) of the protocol on its trained model."""
    out = {}
    for variant in ("vanilla", "ti"):
        config, model, params = train_digits(tmp_path_factory, digits, variant)
        loglik = protocol_config()
        evaluator = LogLikelihood(loglik, model, build.build_objective(config, model),
                                  digits.test[: loglik.num_examples])
        res, draws = evaluator.estimates(params)
        out[variant] = (summarise(res, draws), res, draws, evaluator, params)
    return out


@pytest.mark.parametrize("variant", ["vanilla", "ti"])
def test_ti_and_ais_agree_on_trained_digits(scored, variant):
    metrics = scored[variant][0]
    diff, se = metrics["ti_minus_ais"], metrics["ti_minus_ais_se"]
    assert abs(diff) <= 4 * se, metrics
    # The paired difference is far more precise than either estimate's spread over images.
    assert se < 0.2 * metrics["ti_se"], metrics
    assert 0.3 <= metrics["accept"] <= 0.9 and metrics["accept_min"] > 0.1, metrics
    assert metrics["ais_ess"] > 0.25, metrics


def test_the_protocol_separates_models_beyond_its_own_errors(scored):
    """The two models' paired difference in log p̂(x) (same images, same keys) against the protocol's
    own error terms: the discretisation check and TI − AIS, each well below it."""
    (m_v, r_v, *_), (m_t, r_t, *_) = scored["vanilla"], scored["ti"]
    delta = np.asarray(r_v.ti, np.float64) - np.asarray(r_t.ti, np.float64)
    paired_se = delta.std(ddof=1) / np.sqrt(delta.size)
    for m in (m_v, m_t):
        assert abs(m["ti_half_diff"]) < max(abs(delta.mean()), 4 * paired_se), (m, delta.mean())


def test_same_keys_same_numbers(scored):
    """The protocol draws from loglik.seed, not the run's key: the evaluator called as the training loop
    calls it gives the fixture's metrics bit for bit."""
    metrics, _, _, evaluator, params = scored["vanilla"]
    assert evaluator(params, jax.random.key(123)) == metrics


def test_training_estimators_fall_where_their_construction_puts_them(scored):
    """vanilla's mean_s log p(x|z⁺) estimates E_post[log p(x|z)] = log p(x) + KL(p(z|x) ‖ p_α) > log p(x);
    ti's trapezoid on 10 uniform rungs (p = 1) misses the steep start of E_t and lies below log p(x).
    Both by many standard errors; the variance over chain draws is positive and finite."""
    m_v, m_t = scored["vanilla"][0], scored["ti"][0]
    assert m_v["train_bias"] > 4 * m_v["train_bias_se"], m_v
    assert m_t["train_bias"] < -4 * m_t["train_bias_se"], m_t
    for m in (m_v, m_t):
        assert 0 < m["train_var"] < np.inf
