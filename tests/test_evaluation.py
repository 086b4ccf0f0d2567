"""Evaluators: the classifier feature space ranks real images above degraded ones, reference statistics
never come from another extractor, gradient statistics and sample quality are logged during a short
digits run (finite, positive, MCMC variance below total variance), and experiments.evaluate writes every
metric of a checkpoint.
"""

import json
import math
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from lebm_jax.data import datasets as data
from lebm_jax.measure import features as feature_spaces
from lebm_jax.measure.base import Context
from lebm_jax.measure.heldout import Heldout
from lebm_jax.measure.registry import build_evaluators
from lebm_jax.measure import metrics
from lebm_jax.core import sampling
from lebm_jax.training import build, loop, offline
from lebm_jax.training.writers import read_jsonl

from config_files import REPO, load_config


@pytest.fixture(scope="module")
def digits():
    return data.load(load_config("digits").data)


@pytest.fixture(scope="module")
def classifier_space(digits):
    return feature_spaces.feature_space("classifier", digits)


def test_classifier_space_ranks_real_images_above_degraded_ones(digits, classifier_space):
    """Held-out digits against the training split's statistics, then the same digits blurred (σ = 1 px)
    and with strong noise (σ = 0.5): each must score clearly worse, and the names must say which feature
    space they come from.

    Measured: test FD 16.6, KID 17.5, precision/recall 0.76/0.77; blurred FD 76, recall 0.14; noisy FD 66.
    """
    assert classifier_space.name == "classifier"
    assert classifier_space.info["classifier_test_accuracy"] >= 0.95
    ref = feature_spaces.reference_statistics(classifier_space, digits, max_reference=10_000)
    assert ref.num_examples == digits.train.shape[0]

    rng = np.random.default_rng(0)
    test = data.to_float(digits.test)
    blurred = data.to_float(
        np.stack([gaussian_filter(im.astype(float), (1, 1, 0)) for im in digits.test]).round().astype(np.uint8)
    )
    noisy = np.clip(test + 0.5 * rng.standard_normal(test.shape).astype(np.float32), -1, 1)
    scores = [
        metrics.sample_quality(classifier_space.features(x), ref, "classifier", kid_subsets=10, kid_subset_size=200)
        for x in (test, blurred, noisy)
    ]
    assert set(scores[0]) == {"fd_classifier", "kid_classifier", "kid_std_classifier", "precision_classifier",
                              "recall_classifier"}
    fd = [s["fd_classifier"] for s in scores]
    kid = [s["kid_classifier"] for s in scores]
    assert fd[0] < 40 and min(fd[1:]) > 3 * fd[0], fd
    assert min(kid[1:]) > 3 * kid[0], kid
    assert scores[0]["precision_classifier"] > 0.6 and scores[0]["recall_classifier"] > 0.6, scores[0]
    assert scores[1]["recall_classifier"] < scores[0]["recall_classifier"]


def test_reference_statistics_are_keyed_by_the_extractor(digits, tmp_path, monkeypatch):
    """Two extractors of one name but different identity (e.g. a retrained classifier) must never share
    cached statistics; the same extractor loads them from the cache."""
    monkeypatch.setenv("LEBM_JAX_CACHE", str(tmp_path))
    calls = []

    def space(identity, scale):
        def features(x):
            calls.append(identity)
            return scale * x.reshape(len(x), -1)[:, :8].astype(np.float32)

        return feature_spaces.FeatureSpace("classifier", features, identity, {})

    a = feature_spaces.reference_statistics(space("a", 1.0), digits, max_reference=200)
    b = feature_spaces.reference_statistics(space("b", 3.0), digits, max_reference=200)
    a2 = feature_spaces.reference_statistics(space("a", 1.0), digits, max_reference=200)
    assert calls == ["a", "b"]  # the third call read the cache
    np.testing.assert_allclose(b.mu, 3.0 * a.mu, rtol=1e-6)
    np.testing.assert_array_equal(a2.sigma, a.sigma)


def test_feature_space_auto(digits, monkeypatch, tmp_path):
    """auto: the classifier when no Inception weights are on disk (it never downloads), none without labels."""
    monkeypatch.setenv("LEBM_JAX_CACHE", str(tmp_path))
    monkeypatch.delenv("LEBM_JAX_INCEPTION_WEIGHTS", raising=False)
    sentinel = feature_spaces.FeatureSpace("classifier", lambda x: x, "sentinel", {})
    monkeypatch.setattr(feature_spaces, "_classifier_space", lambda d: sentinel)
    assert feature_spaces.feature_space("auto", digits) is sentinel
    unlabelled = data.ImageData("npz", digits.train, digits.test, None, None)
    assert feature_spaces.feature_space("auto", unlabelled) is None
    assert feature_spaces.feature_space("none", digits) is None
    assert not (tmp_path / "weights").exists() or not any((tmp_path / "weights").iterdir())


def test_generate_fn_is_the_prior_sampler_with_a_per_device_key():
    config = load_config("digits")
    config.update_from_flattened_dict({"model.ngf": 4, "model.generator_widths": (), "model.latent_dim": 4,
                                       "prior_chain.num_steps": 3})
    model = build.build_model(config)
    chain = build.chain_spec(config.prior_chain, through_generator=False)
    params = model.init(jax.random.key(0))
    key = jax.random.key(1)
    got = sampling.make_generate_fn(model, chain, 6)(params, key)
    assert got.shape == (6, 16, 16, 1)
    want = sampling.generate(model, chain, params, jax.random.fold_in(key, 0), 6)  # one device: index 0
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# During training, and after it

RUN_STEPS = 4


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, digits):
    """4 steps of a small digits model with sample quality and gradient statistics at steps 0, 2 and 4."""
    workdir = tmp_path_factory.mktemp("eval_run")
    config = load_config("digits")
    config.update_from_flattened_dict({
        "model.latent_dim": 8, "model.ngf": 4, "model.generator_widths": (), "model.ebm_hidden": 16,
        "prior_chain.num_steps": 10,
        "posterior_chain.num_steps": 8, "ti.num_temps": 3, "batch_size": 32, "num_heldout": 64,
        "num_samples": 4, "num_steps": RUN_STEPS, "log_every": 2, "checkpoint_every": RUN_STEPS,
        "sample_every": RUN_STEPS, "eval.every": 2, "eval.num_samples": 300, "eval.batch_size": 100,
        "eval.kid_subsets": 5, "eval.kid_subset_size": 100, "gradstats.every": 2, "gradstats.num_draws": 12,
        "gradstats.num_batches": 2, "loglik.every": RUN_STEPS, "loglik.num_examples": 16, "loglik.num_temps": 5,
        "loglik.ais_substeps": 2, "loglik.steps_per_rung": 3, "loglik.num_chains": 2, "loglik.prior_steps": 10,
        "loglik.train_draws": 2,
    })
    loop.train_and_evaluate(config, str(workdir), dataset=digits)
    return workdir, config


def test_short_run_logs_gradient_statistics_and_sample_quality(short_run):
    workdir, config = short_run
    rows = read_jsonl(workdir / "metrics.jsonl")
    grads = {r["step"]: r for r in rows if "gradstats/total_var/all" in r}
    quality = {r["step"]: r for r in rows if "eval/fd_classifier" in r}
    assert sorted(grads) == sorted(quality) == [0, 2, 4]
    for step, row in grads.items():
        for group in ("ebm", "gen", "all"):
            total, mcmc = row[f"gradstats/total_var/{group}"], row[f"gradstats/mcmc_var/{group}"]
            assert math.isfinite(total) and math.isfinite(mcmc) and total > 0 and mcmc > 0, (step, group, row)
            # inf when the noise hides the mean gradient: ||E ĝ||² is then estimated as 0
            assert row[f"gradstats/normalised_var/{group}"] > 0 and row[f"gradstats/grad_norm/{group}"] >= 0
        # law of total variance: the MCMC part is below the total (here the data part is most of it)
        assert row["gradstats/mcmc_var/all"] < row["gradstats/total_var/all"], (step, row)
        assert row["gradstats/loss_var/gen"] > 0 and row["gradstats/loss_var/ebm"] > 0
    for row in quality.values():
        assert all(math.isfinite(row[f"eval/{k}_classifier"]) for k in ("fd", "kid", "precision", "recall"))
        assert not any(k.startswith("eval/fid") for k in row)
    assert quality[RUN_STEPS]["time/eval_seconds"] > quality[0]["time/eval_seconds"] > 0
    train_rows = [r for r in rows if "time/train_seconds" in r]
    assert train_rows and train_rows[-1]["time/train_seconds"] > 0


@pytest.fixture(scope="module")
def evaluated(short_run, digits):
    """experiments.evaluate's work on the short run's last checkpoint: (results, path of its JSON file)."""
    workdir, config = short_run
    return offline.evaluate_checkpoint(str(workdir), num_samples=config.eval.num_samples, dataset=digits)


def test_evaluate_writes_every_metric_beside_the_checkpoint(short_run, evaluated):
    workdir, config = short_run
    results, path = evaluated
    assert path == os.path.join(str(workdir), "evaluation", f"step_{RUN_STEPS:07d}.json")
    with open(path) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(results))
    expected = {"heldout/recon_mse", "heldout/posterior_log_lik", "loglik/ti", "loglik/ais", "eval/fd_classifier",
                "eval/kid_classifier", "eval/precision_classifier", "eval/recall_classifier",
                "eval/fd_inf_classifier", "eval/fd_inf_se_classifier", "eval/kid_inf_classifier",
                "eval/classifier_test_accuracy", "gradstats/total_var/all", "gradstats/mcmc_var/gen"}
    assert expected <= set(saved), expected - set(saved)
    assert saved["step"] == RUN_STEPS and saved["eval/feature_space"] == "classifier"
    assert all(math.isfinite(v) for v in saved.values() if isinstance(v, float))
    # the protocol's estimates come with their standard errors (their accuracy: tests/test_annealing.py,
    # tests/test_loglik.py)
    assert saved["loglik/ti_se"] > 0 and saved["loglik/ais_se"] > 0 and saved["loglik/ti_minus_ais_se"] > 0


def test_offline_evaluation_reproduces_what_training_logged(short_run, evaluated):
    """The same evaluators, called with the same keys: every metric logged at the checkpoint's step during
    training (held-out, sample quality, gradient statistics) comes back from the checkpoint offline."""
    workdir, config = short_run
    results, _ = evaluated
    logged = {}
    for row in read_jsonl(workdir / "metrics.jsonl"):
        if row["step"] == RUN_STEPS:
            logged.update({k: v for k, v in row.items()
                           if k.split("/")[0] in ("heldout", "eval", "gradstats", "loglik")})
    groups = {name.split("/")[0] for name in logged}
    assert groups == {"heldout", "eval", "gradstats", "loglik"} and len(logged) >= 40, sorted(logged)
    for name, value in sorted(logged.items()):
        assert name in results, name
        np.testing.assert_allclose(results[name], value, rtol=2e-5, atol=1e-7, err_msg=name)


def test_evaluators_come_from_the_config(short_run, digits):
    """One factory for training and offline: the scheduled-only set leaves out evaluators whose schedule is
    0, offline builds them all; the held-out metrics no longer hold a log p(x) on the run's own ladder."""
    workdir, config = short_run
    config = ml_collections.ConfigDict(config.to_dict())
    model = build.build_model(config)
    context = Context(model, build.build_objective(config, model), digits)
    params = model.init(jax.random.key(0))
    key = jax.random.key(1)
    assert set(Heldout.from_config(config, context)(params, key)) == {"recon_mse", "posterior_log_lik"}
    config.gradstats.every = 0
    config.loglik.every = 0
    config.eval.feature_space = "none"
    assert [e.name for e in build_evaluators(config, context)] == ["heldout"]
    config.eval.feature_space = "classifier"
    assert [e.name for e in build_evaluators(config, context, scheduled_only=False)] == [
        "heldout", "sample_quality", "gradstats", "loglik"]


def test_evaluate_cli_rejects_a_workdir_without_checkpoints(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--workdir={tmp_path}"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"{tmp_path} has no checkpoints/ directory" in proc.stderr + proc.stdout
