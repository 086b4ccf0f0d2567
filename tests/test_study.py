"""The study runner: a tiny grid (vanilla and ti × two seeds × a few steps) end to end with its report,
resuming after an interruption without redoing finished runs, and bad study configs failing fast; the
grid's replica-exchange and adaptive-ladder groups (names, groups, overrides, and a tiny study of them
with their figures); the grid of a study config written before those fields existed; and the held-out
log-likelihood protocol's sweep cache, which the runs of one seed share: they start from the same
parameters, and what is read back is bit for bit what computing it gives.
"""

import csv
import json
import os
import struct
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from lebm_jax.data import datasets as data_lib
from lebm_jax.measure import loglik as loglik_lib
from lebm_jax.measure.base import Context
from lebm_jax.study import grid as grid_lib
from lebm_jax.study import runner as study_lib
from lebm_jax.study.report import group_runs, load_study, make_report
from lebm_jax.study.report.figures import figure_data
from lebm_jax.study.report.stats import quality_names
from lebm_jax.training import build
from lebm_jax.training import loop as train
from lebm_jax.training.step import create_train_state

from config_files import REPO, load_config
from tiny import MODEL, tiny_config

STEPS = 2


def tiny_study():
    c = load_config("study_digits")
    c.train.update_from_flattened_dict({
        **MODEL, "ti.num_temps": 10,  # the vanilla runs' held-out log p(x) keeps the study's 10 rungs
        "batch_size": 16, "num_heldout": 32, "num_steps": STEPS, "log_every": 1, "checkpoint_every": 1,
        "sample_every": STEPS,
        "eval.every": STEPS, "eval.num_samples": 100, "eval.batch_size": 100, "eval.kid_subsets": 3,
        "eval.kid_subset_size": 50, "gradstats.every": 1, "gradstats.num_draws": 3,
        # the protocol runs at the first and the last step: a small one, to exercise its columns and sentences
        "loglik.num_examples": 4, "loglik.num_temps": 5, "loglik.steps_per_rung": 2, "loglik.ais_substeps": 2,
        "loglik.prior_steps": 5, "loglik.train_draws": 2,
    })
    c.update_from_flattened_dict({"powers": (1.0,), "num_temps": 3, "seeds": (0, 1), "exchange_powers": (),
                                  "adaptive_powers": ()})
    return c


def sweep_metrics(row: dict, prefix: str = "loglik/") -> dict:
    """The protocol's metrics that come from its sweep, not from the run's own training estimator (a logged
    row's names have the evaluator's prefix, the evaluator's own output none)."""
    return {k: v for k, v in row.items() if k.startswith(prefix) and not k.startswith(prefix + "train_")}


def bits(metrics: dict) -> dict:
    """Each value's float64 bytes: equal only when bit-identical (NaN included)."""
    return {k: struct.pack("<d", float(v)) for k, v in metrics.items()}


def logged_rows(workdir, name) -> list[dict]:
    with open(workdir / "runs" / name / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def protocol_row(workdir, name, step) -> dict:
    """The row run ``name`` logged the protocol in at ``step``."""
    (row,) = [r for r in logged_rows(workdir, name) if r["step"] == step and "loglik/ti" in r]
    return row


def without_wall_time(path) -> list[dict]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in row.items() if "wall" not in k.lower()} for row in rows]


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("study")
    lines = []
    record = study_lib.run_study(tiny_study(), str(workdir), log=lines.append)
    return workdir, record, lines


def test_grid_names_groups_and_overrides():
    c = load_config("study_digits")
    c.update_from_flattened_dict({"batch_sizes": (25, 50), "seeds": (0, 3)})
    grid = grid_lib.study_grid(c)
    names = [s.name for s in grid]
    assert names == ["vanilla_b50_s0", "vanilla_b50_s3", "vanilla_b25_s0", "vanilla_b25_s3",
                     "ti_p1_b50_s0", "ti_p1_b50_s3", "ti_p1_re5_b50_s0", "ti_p1_re5_b50_s3", "ti_adapt_p1_b50_s0", "ti_adapt_p1_b50_s3"]
    assert [s.group for s in grid[::2]] == ["vanilla", "vanilla B=25", "ti p=1", "ti p=1 +RE",
                                            "ti adaptive (from p=1)"]
    config = grid_lib.run_config(c, grid[4])
    assert (config.variant, config.ti.power, config.ti.num_temps, config.seed, config.batch_size) == ("ti", 1.0, 10, 0, 50)
    assert (config.ti.exchange_every, config.ti.adapt_every) == (0, 0)
    # everything else is the study's training config
    assert config.model.to_dict() == c.train.model.to_dict() and config.num_steps == c.train.num_steps
    # replica exchange every 5 of the 20 posterior steps, and the adaptive ladder every 10 steps from p = 1
    assert c.train.posterior_chain.num_steps == 20
    exchange, adaptive = grid_lib.run_config(c, grid[7]), grid_lib.run_config(c, grid[8])
    assert grid[7].overrides() == {"variant": "ti", "seed": 3, "batch_size": 50, "ti.power": 1.0, "ti.num_temps": 10,
                                    "ti.exchange_every": 5, "ti.adapt_every": 0}
    assert (exchange.seed, exchange.ti.power, exchange.ti.exchange_every, exchange.ti.adapt_every) == (3, 1.0, 5, 0)
    assert grid[8].overrides() == {"variant": "ti", "seed": 0, "batch_size": 50, "ti.power": 1.0, "ti.num_temps": 10,
                                    "ti.exchange_every": 0, "ti.adapt_every": 10, "ti.adapt_decay": 0.9}
    assert (adaptive.ti.adapt_every, adaptive.ti.adapt_decay, adaptive.ti.exchange_every) == (10, 0.9, 0)
    # the full-scale grid: 55 runs as before and the two groups from p = 1, five seeds each
    full = grid_lib.validate(load_config("study_svhn"))
    assert len(full) == 65 and [s.name for s in full[-10::5]] == ["ti_p1_re5_b100_s0", "ti_adapt_p1_b100_s0"]
    assert grid_lib.run_config(load_config("study_svhn"), full[-1]).ti.adapt_every == 100


def test_study_config_from_before_the_options_gives_the_old_grid():
    new = load_config("study_digits")
    old = ml_collections.ConfigDict({k: v for k, v in new.items() if k not in grid_lib.OPTIONAL_FIELDS})
    grid = grid_lib.validate(old)
    assert [s.name for s in grid] == ["vanilla_b50_s0", "vanilla_b50_s1", "ti_p1_b50_s0", "ti_p1_b50_s1"]
    assert [s.group for s in grid[::2]] == ["vanilla", "ti p=1"]
    # the overrides a run got before the options existed, so its checkpoints resume
    assert grid[2].overrides() == {"variant": "ti", "seed": 0, "batch_size": 50, "ti.power": 1.0, "ti.num_temps": 10}
    assert grid[0].overrides() == {"variant": "vanilla", "seed": 0, "batch_size": 50}
    # the new config's first 4 runs are the old grid, field for field
    assert grid_lib.validate(new)[:4] == grid
    new.update_from_flattened_dict({"exchange_powers": (), "adaptive_powers": ()})
    assert grid_lib.validate(new) == grid


def test_bad_option_fields_name_the_field_or_the_run():
    cases = [
        ({"exchange_every": 3}, "run ti_p1_re3_b50_s0: config.ti.exchange_every=3: must divide "
                                "posterior_chain.num_steps=20"),
        ({"exchange_every": 0}, "study.exchange_every=0: must be an int >= 1 when study.exchange_powers is set"),
        ({"adapt_every": 2.5}, "study.adapt_every=2.5: must be an int >= 1 when study.adaptive_powers is set"),
        ({"adapt_decay": 1.5}, "run ti_adapt_p1_b50_s0: config.ti.adapt_decay=1.5: the moving average's rate"),
        ({"adaptive_powers": (1.0, 1.0)}, "study.adaptive_powers=(1.0, 1.0) repeats a power"),
        ({"exchange_powers": (-1.0,)}, "run ti_p-1_re5_b50_s0: config.ti.power=-1.0"),
        ({"exchange_powers": 1.0}, "study.exchange_powers=1.0 must be a list"),
    ]
    for fields, phrase in cases:
        c = ml_collections.ConfigDict({**load_config("study_digits").to_dict(), **fields})  # any type
        with pytest.raises(ValueError) as e:
            grid_lib.validate(c)
        assert phrase in str(e.value), (fields, str(e.value))


def test_tiny_study_runs_end_to_end_with_every_figure_and_table(finished_study):
    workdir, record, lines = finished_study
    names = [r["name"] for r in record["runs"]]
    assert names == ["vanilla_b16_s0", "vanilla_b16_s1", "ti_p1_b16_s0", "ti_p1_b16_s1"]
    for name in names:
        run = workdir / "runs" / name
        assert (run / "done.json").is_file() and (run / "metrics.jsonl").is_file()
    assert lines[0].startswith("study [") and "0/4 runs" in lines[0] and "now vanilla_b16_s0" in lines[0]
    assert "100%" in lines[-2] and "4/4 runs" in lines[-2]
    report = workdir / "report"
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert len(pngs) >= 6, pngs
    page = (report / "report.md").read_text()
    for png in pngs:
        assert png in page
    rows = without_wall_time(report / "summary.csv")
    assert [r[next(iter(r))] for r in rows] == ["vanilla", "ti p=1"]
    md = (report / "summary.md").read_text()
    assert "vanilla" in md and "ti p=1" in md and "FID" not in md  # classifier space: never called FID
    # the protocol ran at steps 0 and 2: at step 0 once per seed (the ti runs read the vanilla runs' sweeps),
    # at step 2 once per run
    assert len(list((workdir / "evaluation_cache" / "loglik").glob("*.npz"))) == 2 + 4
    for seed in (0, 1):
        step0 = [sweep_metrics(protocol_row(workdir, f"{v}_b16_s{seed}", 0)) for v in ("vanilla", "ti_p1")]
        assert len(step0[0]) >= 12 and bits(step0[0]) == bits(step0[1])


def test_interrupted_study_resumes_without_redoing_finished_runs(finished_study, tmp_path):
    reference_dir = finished_study[0]
    calls = []

    def interrupt_after_first(config, run_dir):
        calls.append(os.path.basename(run_dir))
        if len(calls) == 2:
            raise KeyboardInterrupt  # stopped while the second run starts
        return train.train_and_evaluate(config, run_dir)

    with pytest.raises(KeyboardInterrupt):
        study_lib.run_study(tiny_study(), str(tmp_path), train_fn=interrupt_after_first, log=lambda _: None)
    assert (tmp_path / "runs" / "vanilla_b16_s0" / "done.json").is_file()
    assert not (tmp_path / "report").exists()

    calls.clear()

    def counted(config, run_dir):
        calls.append(os.path.basename(run_dir))
        return train.train_and_evaluate(config, run_dir)

    lines = []
    study_lib.run_study(tiny_study(), str(tmp_path), train_fn=counted, log=lines.append)
    assert calls == ["vanilla_b16_s1", "ti_p1_b16_s0", "ti_p1_b16_s1"]  # the finished run is not redone
    assert "1 of 4 runs already finished" in lines[0]
    # same numbers as the uninterrupted study (training is deterministic; wall times differ)
    assert without_wall_time(tmp_path / "report" / "summary.csv") == without_wall_time(
        reference_dir / "report" / "summary.csv")
    # the uninterrupted study read the ti runs' step-0 sweeps from its cache, this one (its own train_fn, no
    # cache) computed them: the logged protocol is the same, bit for bit
    assert not (tmp_path / "evaluation_cache").exists()
    for name in ("ti_p1_b16_s0", "ti_p1_b16_s1"):
        ours, theirs = logged_rows(tmp_path, name), logged_rows(reference_dir, name)
        protocol = [(r["step"], bits({k: v for k, v in r.items() if k.startswith("loglik/")})) for r in ours
                    if "loglik/ti" in r]
        assert [step for step, _ in protocol] == [0, STEPS]
        assert protocol == [(r["step"], bits({k: v for k, v in r.items() if k.startswith("loglik/")}))
                            for r in theirs if "loglik/ti" in r]


def test_bad_study_config_fails_before_any_work(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cases = [
        (["--config.powers=(0.3, -1.0)"], "run ti_p-1_b50_s0: config.ti.power=-1.0"),
        (["--config.seeds=(0, 0)"], "study.seeds=(0, 0) repeats a seed"),
        (["--config.train.batch_size=0"], "config.batch_size=0"),
        (["--config.exchange_every=3"], "run ti_p1_re3_b50_s0: config.ti.exchange_every=3: must divide"),
    ]
    for flags, phrase in cases:
        workdir = tmp_path / "w"
        proc = subprocess.run([sys.executable, "-m", "experiments.study", "--config", "configs/study_digits.py",
                               f"--workdir={workdir}", *flags], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode != 0, flags
        assert phrase in proc.stdout + proc.stderr, (flags, proc.stdout[-1500:], proc.stderr[-1500:])
        assert not workdir.exists()


# ------------------------------------------------- the protocol's sweep, shared by the runs of one seed
def initial_params(config):
    """The parameters a run of ``config`` starts from (as `train_and_evaluate` makes them)."""
    model = build.build_model(config)
    state = create_train_state(model, build.make_optimizers(config, 1), build.run_keys(config.seed).init,
                               build.initial_ladder(config))
    return jax.device_get(state.params)


def param_bytes(params) -> bytes:
    return b"".join(np.asarray(leaf).tobytes() for leaf in jax.tree.leaves(params))


def test_every_variant_of_a_seed_starts_from_the_same_parameters():
    c = load_config("study_digits")
    grid = grid_lib.validate(c)
    assert {s.variant for s in grid} == {"vanilla", "ti"} and len(grid) == 8
    start = {}
    for spec in grid:
        start.setdefault(spec.seed, set()).add(param_bytes(initial_params(grid_lib.run_config(c, spec))))
    # one initial state per seed, whatever the variant, ladder, exchange or adaptation: 4 runs each
    assert sorted(start) == [0, 1] and [len(v) for v in start.values()] == [1, 1]
    assert start[0] != start[1]
    assert len(next(iter(start[0]))) == 4 * sum(np.size(x) for x in jax.tree.leaves(
        initial_params(grid_lib.run_config(c, grid[0]))))


def test_cached_sweep_is_bit_identical_to_computing_it(tmp_path, monkeypatch):
    study = tiny_study()
    vanilla, ti = (grid_lib.run_config(study, s) for s in grid_lib.study_grid(study) if s.seed == 0)
    assert (vanilla.variant, ti.variant) == ("vanilla", "ti")
    data = data_lib.load(vanilla.data)
    params = initial_params(vanilla)
    assert param_bytes(params) == param_bytes(initial_params(ti))
    model = build.build_model(vanilla)  # one model object: the sweep compiles once for both evaluators

    def evaluator(config, cache_dir=None):
        context = Context(model, build.build_objective(config, model), data, cache_dir=cache_dir)
        return loglik_lib.LogLikelihood.from_config(config, context)

    sweeps = []
    real = loglik_lib.annealing.estimate
    monkeypatch.setattr(loglik_lib.annealing, "estimate", lambda *a, **k: sweeps.append(1) or real(*a, **k))
    key = jax.random.key(0)  # unused by the protocol
    of_vanilla, of_ti = evaluator(vanilla, str(tmp_path)), evaluator(ti, str(tmp_path))

    first = of_vanilla(params, key)  # computes and stores
    files = sorted((tmp_path / "loglik").iterdir())
    assert len(sweeps) == 1 and len(files) == 1 and files[0].suffix == ".npz"
    cached = of_ti(params, key)  # reads the vanilla run's sweep
    assert len(sweeps) == 1 and len(list((tmp_path / "loglik").iterdir())) == 1
    cache, of_ti.cache = of_ti.cache, None
    computed = of_ti(params, key)  # the same evaluator without its cache
    assert len(sweeps) == 2
    assert bits(cached) == bits(computed)  # every metric, the training estimator's included
    assert bits(sweep_metrics(cached, "")) == bits(sweep_metrics(first, ""))
    assert cached["train_mean"] != first["train_mean"]  # the objectives' own estimators differ
    assert len(sweep_metrics(cached, "")) >= 12 and np.isfinite(cached["ti"]) and "train_var" in cached

    # other parameters: another entry, another result
    of_ti.cache = cache
    other = initial_params(grid_lib.run_config(study, grid_lib.study_grid(study)[1]))  # seed 1
    moved = of_ti(other, key)
    assert len(sweeps) == 3 and len(list((tmp_path / "loglik").iterdir())) == 2
    assert moved["ti"] != cached["ti"]
    # another protocol setting or model config: another key for the same parameters
    base = cache.key(params)
    assert evaluator(vanilla, str(tmp_path)).cache.key(params) == base
    for field, value in (("loglik.seed", 1), ("loglik.num_temps", 7), ("model.lik_sigma", 0.5)):
        changed = ml_collections.ConfigDict(ti.to_dict())
        changed.update_from_flattened_dict({field: value})
        assert evaluator(changed, str(tmp_path)).cache.key(params) != base, field
    # an entry that cannot be read is computed again, with the same result
    files[0].write_bytes(b"not an npz file")
    again = of_ti(params, key)
    assert len(sweeps) == 4 and bits(again) == bits(computed)


def test_a_tiny_run_logs_what_the_report_reads(tmp_path):
    """One tiny ti run with replica exchange and the adaptive ladder (evaluators off): the names it logs are
    those the report's exchange and adaptive-ladder figures and tables read."""
    config = tiny_config(variant="ti", **{"ti.exchange_every": 1, "ti.adapt_every": 1, "num_steps": STEPS})
    name = "ti_adapt_p1_re1_b8_s0"
    train.train_and_evaluate(config, str(tmp_path / "runs" / name))
    rows = [r for r in logged_rows(tmp_path, name) if "loss_gen" in r]
    assert [sorted(k for k in r if k.startswith("swap_accept/")) for r in rows] == [
        ["swap_accept/0", "swap_accept/1"]] * STEPS  # 3 rungs, 2 pairs
    ladders = [[r[f"rung_t/{i}"] for i in range(3)] for r in rows]
    assert ladders[0] == [0.0, 0.5, 1.0] and ladders[1] != ladders[0]  # placed after the first step
    study = load_study(str(tmp_path))  # no study.json: the group from config.json
    groups = group_runs(study.runs)
    assert list(groups) == ["ti adaptive (from p=1) +RE"]
    data = figure_data(groups, quality_names(study.runs))
    (curves,) = data.ladders.values()
    np.testing.assert_allclose(curves.mean, ladders, rtol=1e-12)
    (swaps,) = data.swaps.values()
    np.testing.assert_allclose(swaps.mean, [[r[f"swap_accept/{i}"] for i in range(2)] for r in rows], rtol=1e-12)
    np.testing.assert_allclose(data.integrands["ti adaptive (from p=1) +RE"][0], ladders[-1], rtol=1e-12)
    paths = make_report(str(tmp_path))
    assert {"rung_placement", "swap_acceptance", "ti_schedule", "rungs_csv"} <= set(paths)


def test_progress_expects_each_run_from_the_fastest_finished_one():
    def spec(name, group, variant, num_temps=None):
        return grid_lib.RunSpec(name, group, variant, 0, 50, 1.0 if num_temps else None, num_temps)

    grid = [spec("v0", "vanilla", "vanilla"), spec("v1", "vanilla", "vanilla"),
            spec("t0", "ti p=1", "ti", 10), spec("t1", "ti p=1", "ti", 10), spec("re0", "ti p=1 +RE", "ti", 10)]
    steps = {s.name: 200 for s in grid} | {"re0": 100}
    progress = study_lib.Progress(grid, steps)
    assert [progress.expected(s) for s in grid] == [None] * 5
    assert " ETA ?" in progress.line(set(), grid[0])
    # the digits study's two vanilla runs as measured on 2 CPU cores: the first pays the compilations and the
    # set-up (190.2 s, 30.8 s of it in training steps), the second 56.2 s (11.3 s)
    progress.finished("v0", 190.2, 30.8)
    progress.finished("v1", 56.2, 11.3)
    assert progress.expected(grid[0]) == pytest.approx(56.2)
    # a ti run of N = 10 rungs: the rest of the vanilla run as it was, its training time × (1 + 10)/2;
    # 107.05 s here, against 105.4 s that the digits study's second ti p=1 run took
    assert progress.expected(grid[2]) == pytest.approx(56.2 - 11.3 + 11.3 * 5.5)
    assert progress.expected(grid[4]) == pytest.approx((56.2 - 11.3 + 11.3 * 5.5) / 2)  # half the steps
    # once a ti run has finished: the group's fastest run, else the variant's, per step
    progress.finished("t0", 150.0, 90.0)
    assert progress.expected(grid[3]) == pytest.approx(150.0) and progress.expected(grid[4]) == pytest.approx(75.0)
    progress.finished("re0", 40.0)
    assert progress.expected(grid[4]) == pytest.approx(40.0) and progress.expected(grid[3]) == pytest.approx(150.0)
    # expected left: t1 (150 s) of 56.2 + 56.2 + 150 + 150 + 40 s
    line = progress.line({"v0", "v1", "t0", "re0"}, grid[3])
    assert "ETA 0:02:30  now t1" in line and f"{100 * (1 - 150 / 452.4):3.0f}%" in line
    # a vanilla run without a logged training time: the whole run scales
    bare = study_lib.Progress(grid, steps)
    bare.finished("v1", 56.2)
    assert bare.expected(grid[2]) == pytest.approx(56.2 * 5.5)
