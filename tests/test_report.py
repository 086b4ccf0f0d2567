"""The study report on a synthetic study workdir with known numbers: figures written, the summary's
mean ± std (and the runs' own standard errors) equal to hand computations, differences from vanilla marked
within or beyond the seed spread as hand-computed Welch standard errors say, the quality-vs-variance trend
and its slope's intervals (one part built on a line, one off it), the sentences the page makes of them,
the held-out log-likelihood protocol's columns and checks, feature-space names, byte-identical reruns, and a
clear error for a directory without runs.

Slope statistics by hand: x = 0…4, y = (1, 3, 2, 5, 4): x̄ = 2, ȳ = 3, Sxx = 10, Sxy = 8, so slope 0.8,
intercept 1.4; residuals (−0.4, 0.8, −1, 1.2, −0.6), RSS = 3.6, se = √(3.6/3/10) = √0.12; the 95% t interval
on 3 degrees of freedom is 0.8 ∓ 3.182446·√0.12. Student-t with 2 degrees of freedom has
P(|T| > c) = 1 − c/√(c² + 2), so two groups of 2 seeds pass 2 standard errors by chance with 1 − 2/√6 = 0.18.
"""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lebm_jax.core.ladder import power_schedule
from lebm_jax.data import images
from lebm_jax.study import report
from lebm_jax.study.report import figures
from lebm_jax.study.report import page as page_lib
from lebm_jax.study.report import stats
from lebm_jax.study.report import table as table_lib
from lebm_jax.study.report.load import Run
from lebm_jax.training.writers import JsonlWriter

from config_files import REPO

NUM_TEMPS = 4
POWER = 0.5
GROUPS = ("vanilla", "ti p=0.5")
SEEDS = (0, 1)
EVAL_STEPS = (0, 5, 10)
# sample-quality Fréchet distance per (group, seed) at EVAL_STEPS
FD = {("vanilla", 0): (50.0, 20.0, 10.0), ("vanilla", 1): (60.0, 25.0, 14.0),
      ("ti p=0.5", 0): (50.0, 15.0, 6.0), ("ti p=0.5", 1): (55.0, 18.0, 8.0)}
# gradient variances placed on known lines: FD = 40 − 5·log10(var_gen) = 10 + 20·log10(var_ebm), except the
# generator's at the last step, which is off its line (GEN_FINAL_VAR): there its slope cannot be told from zero
GEN_SLOPE, EBM_SLOPE = -5.0, 20.0
GEN_FINAL_VAR = {("vanilla", 0): 1e-2, ("vanilla", 1): 1e-1, ("ti p=0.5", 0): 3e-2, ("ti p=0.5", 1): 2e-2}
FD_SE = {("vanilla", 0): 1.0, ("vanilla", 1): 2.0, ("ti p=0.5", 0): 0.5, ("ti p=0.5", 1): 1.5}  # bootstrap SEs


def var_gen(fd):
    return 10.0 ** ((fd - 40.0) / GEN_SLOPE)


def var_ebm(fd):
    return 10.0 ** ((fd - 10.0) / EBM_SLOPE)


# final values per (group, seed)
KID = {("vanilla", 0): 0.1, ("vanilla", 1): 0.3, ("ti p=0.5", 0): 0.05, ("ti p=0.5", 1): 0.07}
RECON = {("vanilla", 0): 0.05, ("vanilla", 1): 0.07, ("ti p=0.5", 0): 0.03, ("ti p=0.5", 1): 0.03}
# the held-out log-likelihood protocol (loglik/…) at its last step: (ti, ti_se, train_bias, train_var)
LOGLIK = {("vanilla", 0): (-60.0, 0.4, 20.0, 4.0), ("vanilla", 1): (-62.0, 0.6, 22.0, 6.0),
          ("ti p=0.5", 0): (-55.0, 0.5, -0.3, 30.0), ("ti p=0.5", 1): (-56.0, 0.5, 0.1, 50.0)}
LOGLIK_STEPS = (5, 10)
LOSS_VAR = {("vanilla", 0): 2.0, ("vanilla", 1): 4.0, ("ti p=0.5", 0): 1.0, ("ti p=0.5", 1): 3.0}
WALL = {("vanilla", 0): 100.0, ("vanilla", 1): 120.0, ("ti p=0.5", 0): 300.0, ("ti p=0.5", 1): 340.0}


# ti with replica exchange (every 2 posterior steps) and with the adaptive ladder (from p = 0.5): their other
# metrics are those of "ti p=0.5"; they log swap_accept/i and rung_t/i at the training steps (5 and 10)
EXCHANGE, ADAPTIVE = "ti p=0.5 +RE", "ti adaptive (from p=0.5)"
OPTION_GROUPS = (EXCHANGE, ADAPTIVE)
OPTION_FIELDS = {EXCHANGE: {"exchange_every": 2, "adapt_every": 0},
                 ADAPTIVE: {"exchange_every": 0, "adapt_every": 5, "adapt_decay": 0.9}}
# rung_t/0..3 per (seed, step); mean over seeds at step 5: (0, 0.25, 0.55, 1), at step 10: (0, 0.125, 0.425, 1)
LADDER = {(0, 5): (0.0, 0.2, 0.5, 1.0), (0, 10): (0.0, 0.1, 0.4, 1.0),
          (1, 5): (0.0, 0.3, 0.6, 1.0), (1, 10): (0.0, 0.15, 0.45, 1.0)}
# swap_accept/0..2 per (seed, step); seed 1 logs NaN for pair 2 at step 10 (no round proposed it), so its
# final value for that pair is step 5's
SWAP = {(0, 5): (0.9, 0.6, 0.3), (0, 10): (0.8, 0.5, 0.2),
        (1, 5): (0.7, 0.4, 0.1), (1, 10): (0.6, 0.3, math.nan)}
# the one metric where the option groups differ from "ti p=0.5" (whose final values are 0.03 for both seeds):
# exchange lower by 0.008, beyond twice its standard error of 0.002; adaptive higher by 0.01, within 2 × 0.01
OPTION_RECON = {(EXCHANGE, 0): 0.02, (EXCHANGE, 1): 0.024, (ADAPTIVE, 0): 0.03, (ADAPTIVE, 1): 0.05}


def run_name(group, seed):
    stem = {"vanilla": "vanilla_b10", EXCHANGE: "ti_p0.5_re2_b10", ADAPTIVE: "ti_adapt_p0.5_b10"}.get(group,
                                                                                                "ti_p0.5_b10")
    return f"{stem}_s{seed}"


def quality_keys(space):
    """Logged names (lebm_jax.measure.metrics.metric_name) of fd, fd_se, kid, kid_std, precision, recall."""
    if space == "inception":
        return dict(fd="eval/fid", fd_se="eval/fid_se", kid="eval/kid", kid_std="eval/kid_std",
                    precision="eval/precision", recall="eval/recall")
    return {m: f"eval/{m}_{space}" for m in ("fd", "fd_se", "kid", "kid_std", "precision", "recall")}


def loglik_row(group, seed, last):
    """The protocol's scalars; earlier steps are off by a lot, so that a test reading them would fail."""
    ti, ti_se, bias, var = LOGLIK[group, seed] if last else (-500.0, 9.0, 100.0, 1e4)
    return {"loglik/ti": ti, "loglik/ti_se": ti_se, "loglik/ais": ti - 0.1, "loglik/ais_se": ti_se,
            "loglik/ti_minus_ais": 0.1, "loglik/ti_minus_ais_se": 0.2, "loglik/ti_half_diff": 0.05,
            "loglik/ais_ess": 0.5 + 0.1 * seed, "loglik/accept": 0.6 + 0.05 * seed, "loglik/train_mean": ti + bias,
            "loglik/train_bias": bias, "loglik/train_bias_se": 1.0 if group == "vanilla" else 0.5,
            "loglik/train_var": var, "time/loglik_seconds": 1.0}


def write_run(directory, group, seed, space, finished=True, loglik=True):
    """metrics.jsonl in JsonlWriter's format, config.json, sample grids and (if finished) done.json;
    without ``loglik`` the run predates the held-out log-likelihood protocol. An option group (OPTION_GROUPS)
    logs what "ti p=0.5" logs, and its swap acceptances or ladder."""
    variant = "vanilla" if group == "vanilla" else "ti"
    option, group = group, ("ti p=0.5" if group in OPTION_GROUPS else group)
    keys = quality_keys(space)
    w = JsonlWriter(os.path.join(directory, "metrics.jsonl"))
    ll = -120.0 - 10.0 * seed
    for step, fd in zip(EVAL_STEPS, FD[group, seed]):
        last = step == EVAL_STEPS[-1]
        if step:  # training rows
            row = {"loss_ebm": 0.1, "loss_gen": 50.0, "steps_per_sec": 3.0, "time/train_seconds": 2.0 * step,
                   "lr_ebm": 2e-5, "lr_gen": 1e-4}
            if variant == "ti":
                row.update({f"rung_log_lik/{i}": ll * (1.0 - 0.2 * i) - step for i in range(NUM_TEMPS)})
                row.update({f"rung_accept/{i}": 1.0 for i in range(NUM_TEMPS)}, log_px=ll)
            if option == EXCHANGE:
                row.update({f"swap_accept/{i}": a for i, a in enumerate(SWAP[seed, step])})
            if option == ADAPTIVE:
                row.update({f"rung_t/{i}": t for i, t in enumerate(LADDER[seed, step])})
            w.write_scalars(step, row)
        if step in (0, 10):  # held-out rows
            recon = OPTION_RECON.get((option, seed), RECON[group, seed])
            w.write_scalars(step, {"heldout/recon_mse": recon if last else 0.5,
                                   "heldout/posterior_log_lik": -80.0})
        if loglik and step in LOGLIK_STEPS:
            w.write_scalars(step, loglik_row(group, seed, last))
        w.write_scalars(step, {  # sample quality and gradient statistics at the same step
            keys["fd"]: fd, keys["fd_se"]: FD_SE[group, seed], keys["kid"]: KID[group, seed] if last else 1.0,
            keys["kid_std"]: 0.01, keys["precision"]: 0.5, keys["recall"]: 0.4, "time/eval_seconds": 1.0,
            "gradstats/total_var/gen": GEN_FINAL_VAR[group, seed] if last else var_gen(fd),
            "gradstats/total_var/ebm": var_ebm(fd),
            "gradstats/total_var/all": 1.0, "gradstats/mcmc_var/gen": var_gen(fd) / 2,
            "gradstats/mcmc_var/ebm": var_ebm(fd) / 2, "gradstats/normalised_var/gen": math.inf,
            "gradstats/loss_var/gen": LOSS_VAR[group, seed] if last else 10.0, "time/gradstats_seconds": 1.0,
        })
        if step == 5:  # off the lines, with a non-finite variance: must not enter the fit nor the log plots
            w.write_scalars(7, {keys["fd"]: 1000.0, "gradstats/total_var/gen": math.nan,
                                "gradstats/total_var/ebm": math.nan, "gradstats/loss_var/gen": math.inf})
    w.close()
    config = {"variant": variant, "seed": seed, "batch_size": 10, "num_steps": EVAL_STEPS[-1],
              "ti": {"num_temps": NUM_TEMPS, "power": POWER, **OPTION_FIELDS.get(option, {})},
              "data": {"name": "digits", "image_size": 8, "channels": 1},
              "eval": {"feature_space": space}}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    rng = np.random.default_rng(seed)
    for step in (0, EVAL_STEPS[-1]):
        path = os.path.join(directory, "samples", f"samples_{step:07d}.png")
        images.save_grid(rng.uniform(-1, 1, (4, 8, 8, 1)), path, scale=4)
    if finished:
        with open(os.path.join(directory, "done.json"), "w") as f:
            json.dump({"wall_seconds": WALL[group, seed], "final_step": EVAL_STEPS[-1],
                       "finished": "2025-01-01T00:00:00+00:00"}, f)


def make_study(root, space="classifier", with_record=True, unfinished=(), not_started=(), loglik=True,
               options=False):
    """A study of GROUPS, and with ``options`` of OPTION_GROUPS too; study.json as the runner writes it (the
    vanilla and fixed-ladder runs without the exchange and adaptive fields, as before they existed)."""
    runs = []
    for group in GROUPS + (OPTION_GROUPS if options else ()):
        for seed in SEEDS:
            name = run_name(group, seed)
            if name not in not_started:
                write_run(os.path.join(root, "runs", name), group, seed, space, finished=name not in unfinished,
                          loglik=loglik)
            spec = {"name": name, "group": group, "variant": "vanilla" if group == "vanilla" else "ti",
                    "seed": seed, "batch_size": 10}
            if group != "vanilla":
                spec.update(power=POWER, num_temps=NUM_TEMPS, **OPTION_FIELDS.get(group, {}))
            runs.append(spec)
    if with_record:
        with open(os.path.join(root, "study.json"), "w") as f:
            json.dump({"name": "synthetic", "runs": runs, "machine": {"backend": "cpu", "devices": "1 × cpu"},
                       "wall_seconds": 3723.0}, f)
    return root


@pytest.fixture(scope="module")
def classifier_report(tmp_path_factory):
    root = make_study(str(tmp_path_factory.mktemp("study")))
    return root, report.make_report(root)


@pytest.fixture(scope="module")
def options_report(tmp_path_factory):
    """The same study with the replica-exchange and adaptive-ladder groups: every figure has data."""
    root = make_study(str(tmp_path_factory.mktemp("options")), options=True)
    return root, report.make_report(root)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def std(a, b):  # sample standard deviation (ddof = 1) of two values
    return abs(a - b) / math.sqrt(2.0)


def rms(a, b):  # root mean square of two standard errors
    return math.sqrt((a * a + b * b) / 2.0)


def welch_se(s1, s2, n=2):  # standard error of a difference of two means of n seeds each
    return math.sqrt(s1**2 / n + s2**2 / n)


def test_every_figure_is_a_png(options_report):
    root, paths = options_report
    assert set(report.FIGURES) <= set(paths) and "training_estimate" in report.FIGURES
    assert {"rung_placement", "swap_acceptance"} <= set(report.FIGURES)
    for key, name in report.FIGURES.items():
        assert paths[key] == os.path.join(root, "report", name)
        with Image.open(paths[key]) as im:
            im.verify()
        with Image.open(paths[key]) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 150
        assert os.path.getsize(paths[key]) > 5000


# final values over seeds: (mean, std, se) by hand, se the root mean square of the runs' own standard errors
EXPECTED = {
    "vanilla": {"fd_classifier": (12.0, std(10, 14), rms(1.0, 2.0)), "kid_classifier": (0.2, std(0.1, 0.3)),
                "precision_classifier": (0.5, 0.0), "recall_classifier": (0.4, 0.0),
                "recon_mse": (0.06, std(0.05, 0.07)), "loglik_ti": (-61.0, std(-60, -62), rms(0.4, 0.6)),
                "loglik_ais": (-61.1, std(-60, -62), rms(0.4, 0.6)), "loglik_ti_minus_ais": (0.1, 0.0, 0.2),
                "loglik_ti_half_diff": (0.05, 0.0), "loglik_train_bias": (21.0, std(20, 22), 1.0),
                "loglik_train_var": (5.0, std(4, 6)), "total_var_gen": (0.055, std(1e-2, 1e-1)),
                "total_var_ebm": (np.mean([var_ebm(10), var_ebm(14)]), std(var_ebm(10), var_ebm(14))),
                "loss_var_gen": (3.0, std(2, 4)), "wall_seconds": (110.0, std(100, 120))},
    "ti p=0.5": {"fd_classifier": (7.0, std(6, 8), rms(0.5, 1.5)), "kid_classifier": (0.06, std(0.05, 0.07)),
                 "precision_classifier": (0.5, 0.0), "recall_classifier": (0.4, 0.0), "recon_mse": (0.03, 0.0),
                 "loglik_ti": (-55.5, std(-55, -56), 0.5), "loglik_ais": (-55.6, std(-55, -56), 0.5),
                 "loglik_ti_minus_ais": (0.1, 0.0, 0.2), "loglik_ti_half_diff": (0.05, 0.0),
                 "loglik_train_bias": (-0.1, std(-0.3, 0.1), 0.5), "loglik_train_var": (40.0, std(30, 50)),
                 "total_var_gen": (0.025, std(3e-2, 2e-2)),
                 "total_var_ebm": (np.mean([var_ebm(6), var_ebm(8)]), std(var_ebm(6), var_ebm(8))),
                 "loss_var_gen": (2.0, std(1, 3)), "wall_seconds": (320.0, std(300, 340))},
}


def test_summary_csv_is_mean_and_sample_std_over_seeds(classifier_report):
    _, paths = classifier_report
    rows = read_csv(paths["summary_csv"])
    assert [r["group"] for r in rows] == list(GROUPS)
    fields = [(s, len(v)) for s, v in EXPECTED["vanilla"].items()]
    order = ["fd_classifier", "kid_classifier", "precision_classifier", "recall_classifier", "recon_mse", "loglik_ti",
             "loglik_ais", "loglik_ti_minus_ais", "loglik_ti_half_diff", "loglik_train_bias", "loglik_train_var",
             "total_var_ebm", "total_var_gen", "loss_var_gen", "wall_seconds"]
    fields = sorted(fields, key=lambda f: order.index(f[0]))
    assert list(rows[0]) == ["group", "variant", "power", "batch_size", "seeds", "unfinished", "steps"] + [
        f"{s}_{m}" for s, k in fields for m in ("mean", "std", "se")[:k]]
    assert not any("log_px" in k for k in rows[0])  # the old per-run-ladder estimate is gone
    vanilla, ti = rows
    assert (vanilla["variant"], vanilla["power"], ti["variant"], ti["power"]) == ("vanilla", "", "ti", "0.5")
    assert [(r["seeds"], r["unfinished"], r["steps"], r["batch_size"]) for r in rows] == [("2", "0", "10", "10")] * 2
    # e.g. final fd over seeds: vanilla 10 and 14 → 12 ± 2.828 (sample std, ddof = 1), SEs 1 and 2 → rms 1.581
    assert std(10, 14) == pytest.approx(2.8284271, rel=1e-7) and rms(1, 2) == pytest.approx(1.5811388, rel=1e-7)
    for row in rows:
        for stem, value in EXPECTED[row["group"]].items():
            for m, v in zip(("mean", "std", "se"), value):
                assert float(row[f"{stem}_{m}"]) == pytest.approx(v, rel=1e-9, abs=1e-12), (stem, m)


def test_summary_markdown_shows_the_same_numbers(classifier_report):
    _, paths = classifier_report
    md = open(paths["summary_md"]).read()
    lines = md.splitlines()
    assert lines[0].startswith("| group | seeds | steps | FD (classifier) |")
    assert "| held-out recon. MSE | held-out log p̂(x) by TI | held-out log p̂(x) by AIS | TI − AIS |" in lines[0]
    vanilla = next(l for l in lines if l.startswith("| vanilla |"))
    ti = next(l for l in lines if l.startswith("| ti p=0.5 |"))
    for phrase in ("| 12 ± 2.83 (SE 1.6) |", "| 0.2 ± 0.141 |", "| 0.06 ± 0.0141 |", "| -61 ± 1.41 (SE 0.51) |",
                   "| -61.1 ± 1.41 (SE 0.51) |", "| 0.1 ± 0 (SE 0.2) |", "| 21 ± 1.41 (SE 1) |", "| 5 ± 1.41 |",
                   "| 3 ± 1.41 |", "| 110 ± 14.1 |"):
        assert phrase in vanilla, phrase
    for phrase in ("| 7 ± 1.41 (SE 1.1) |", "| -55.5 ± 0.707 (SE 0.5) |", "| -0.1 ± 0.283 (SE 0.5) |",
                   "| 40 ± 14.1 |", "| 2 ± 1.41 |", "| 320 ± 28.3 |"):
        assert phrase in ti, phrase
    assert "sample standard deviation (ddof = 1)" in md and "root mean square of the runs' own standard errors" in md
    # the differences from vanilla, by hand: FD −5 against √(8/2 + 2/2) = 2.24 (beyond), KID −0.14 against
    # 0.10 (within), recon. MSE −0.03 against 0.01 (beyond), log p̂(x) by TI +5.5 against √1.25 = 1.12 (beyond)
    diff = next(l for l in lines[lines.index("Differences from vanilla:"):] if l.startswith("| ti p=0.5 |"))
    for phrase in ("| -5 ± 2.2: beyond |", "| -0.14 ± 0.1: within |", "| -0.03 ± 0.01: beyond |",
                   "| +5.5 ± 1.1: beyond |", "| -21.1 ± 1: beyond |", "| +35 ± 10: beyond |", "| -1 ± 1.4: within |"):
        assert phrase in diff, phrase
    assert "TI − AIS" not in lines[lines.index("Differences from vanilla:") + 2]  # diagnostics are not compared


def test_differences_are_beyond_exactly_when_over_twice_the_welch_standard_error(classifier_report):
    _, paths = classifier_report
    rows = read_csv(paths["differences_csv"])
    assert {(r["group"], r["reference"]) for r in rows} == {("ti p=0.5", "vanilla")}
    assert [r["metric"] for r in rows] == ["fd_classifier", "kid_classifier", "precision_classifier",
                                           "recall_classifier", "recon_mse", "loglik_ti", "loglik_ais",
                                           "loglik_train_bias", "loglik_train_var", "total_var_ebm", "total_var_gen",
                                           "loss_var_gen"]
    verdicts = {}
    for r in rows:
        (m1, s1, *_), (m0, s0, *_) = EXPECTED["ti p=0.5"][r["metric"]], EXPECTED["vanilla"][r["metric"]]
        assert float(r["delta"]) == pytest.approx(m1 - m0, rel=1e-9, abs=1e-12), r
        assert float(r["se"]) == pytest.approx(welch_se(s1, s0), rel=1e-9, abs=1e-12), r
        assert r["verdict"] == ("beyond" if abs(m1 - m0) > 2 * welch_se(s1, s0) else "within"), r
        verdicts[r["metric"]] = r["verdict"]
    assert verdicts["fd_classifier"] == "beyond" and verdicts["kid_classifier"] == "within"
    assert verdicts["precision_classifier"] == "within"  # Δ = 0 with no spread at all


def test_one_seed_has_no_spread_to_compare_with(tmp_path):
    root = make_study(str(tmp_path), not_started=("ti_p0.5_b10_s1",))
    paths = report.make_report(root)
    rows = read_csv(paths["differences_csv"])
    assert rows and all(r["verdict"] == "n/a" and r["se"] == "" for r in rows)
    assert float(next(r for r in rows if r["metric"] == "fd_classifier")["delta"]) == pytest.approx(6.0 - 12.0)
    assert "| -6: n/a |" in open(paths["summary_md"]).read()
    page = open(paths["report"]).read()
    assert "- ti p=0.5 against vanilla: not judged (fewer than 2 seeds) in FD (classifier), " in page
    assert "by chance alone" not in page  # nothing judged, so no chance rate to state
    one = stats.Stat(5.0, math.nan, 1)
    assert stats.difference(one, stats.Stat(3.0, 1.0, 4)).verdict == "n/a"
    assert stats.difference(None, one) is None


def test_chance_of_passing_twice_the_standard_error():
    assert stats.chance_beyond(2) == pytest.approx(1 - 2 / math.sqrt(6), rel=1e-12)  # t with 2 df, closed form
    assert stats.chance_beyond(5) == pytest.approx(0.0805, abs=1e-4)  # t with 8 df
    assert stats.chance_beyond(1000) == pytest.approx(0.0455, abs=2e-4)  # → the normal's P(|Z| > 2)


def test_series_is_mean_min_max_over_seeds_and_drops_non_finite(classifier_report):
    root, _ = classifier_report
    groups = report.group_runs(report.load_study(root).runs)
    steps, mean, lo, hi = report.series(groups["vanilla"], "eval/fd_classifier")
    np.testing.assert_array_equal(steps, [0, 5, 7, 10])
    np.testing.assert_allclose(mean, [55, 22.5, 1000, 12])
    np.testing.assert_allclose(lo, [50, 20, 1000, 10])
    np.testing.assert_allclose(hi, [60, 25, 1000, 14])
    steps, mean, _, _ = report.series(groups["vanilla"], "gradstats/loss_var/gen", positive=True)
    np.testing.assert_array_equal(steps, [0, 5, 10])  # the inf at step 7 is dropped
    np.testing.assert_allclose(mean, [10, 10, 3])
    # the seeds' mean with its standard error from the runs' own: √(1² + 2²)/2; none logged at step 7
    steps, mean, se = stats.mean_se_series(groups["vanilla"], "eval/fd_classifier", "eval/fd_se_classifier")
    np.testing.assert_array_equal(steps, [0, 5, 7, 10])
    np.testing.assert_allclose(mean, [55, 22.5, 1000, 12])
    np.testing.assert_allclose(se, [math.sqrt(5) / 2, math.sqrt(5) / 2, math.nan, math.sqrt(5) / 2])


def test_report_page_links_every_figure_and_prints_the_machine(options_report):
    _, paths = options_report
    page = open(paths["report"]).read()
    for name in report.FIGURES.values():
        assert f"]({name})" in page, name
    assert "digits, 8×8×1" in page and "backend: cpu" in page and "1:02:03" in page
    assert "](summary.csv)" in page and "](differences.csv)" in page and "12 ± 2.83" in page
    assert "No figure" not in page


def test_page_states_group_differences_with_their_standard_errors(classifier_report):
    _, paths = classifier_report
    page = open(paths["report"]).read()
    assert ("- ti p=0.5 against vanilla: beyond the seed spread in FD (classifier) (-5 ± 2.2), held-out recon. MSE "
            "(-0.03 ± 0.01), held-out log p̂(x) by TI (+5.5 ± 1.1), held-out log p̂(x) by AIS (+5.5 ± 1.1), "
            "training-estimate bias (-21.1 ± 1), training-estimate var. (+35 ± 10); within it in MMD² (classifier), "
            "precision (classifier), recall (classifier), grad. var. EBM, grad. var. gen., "
            "loss-estimate var.\n") in page
    # 12 differences judged with 2 seeds per group: 12 · (1 − 2/√6) = 2.2 expected beyond by chance alone
    assert ("With 2 seeds per group, a difference passes 2 standard errors by chance alone with probability 0.18 "
            "(Student-t with 2 degrees of freedom, equal spreads); of the 12 differences judged here, about 2.2 would "
            "be marked beyond") in page


def test_page_reports_the_protocol_checks_and_the_training_estimate(classifier_report):
    _, paths = classifier_report
    page = open(paths["report"]).read()
    assert ("4 runs logged the protocol; the standard error over held-out examples of a run's TI estimate is 0.4 to "
            "0.6. TI and AIS agree within 2 standard errors in every run (largest |TI − AIS| = 0.1). Halving the "
            "ladder moves a run's TI estimate by at most 0.05, less than the smallest difference of a group's mean "
            "from vanilla's (5.5). AIS effective-sample fraction 0.5 to 0.6; MALA acceptance 0.6 to 0.65.") in page
    # vanilla: 21 with SE 1/√2 = 0.71 (beyond 2 SE); ti: −0.1 with SE 0.5/√2 = 0.35 (within)
    assert ("- vanilla: bias +21 (SE 0.71, seed std 1.41): above the protocol's TI by more than 2 SE; variance over "
            "chain draws 5.") in page
    assert ("- ti p=0.5: bias -0.1 (SE 0.35, seed std 0.283): within 2 SE of zero: no bias shown at this precision; "
            "variance over chain draws 40.") in page


def run_with(name, rows):
    return Run(name=name, group="g", variant="ti", seed=0, directory="", rows=rows)


def test_protocol_check_flags_runs_where_ti_and_ais_disagree():
    agree = {"loglik/ti": -50.0, "loglik/ti_se": 0.3, "loglik/ti_minus_ais": 0.5, "loglik/ti_minus_ais_se": 0.3,
             "loglik/ti_half_diff": -0.2, "loglik/ais_ess": 0.7, "loglik/accept": 0.6}
    runs = [run_with("a", [{"step": 5, **agree, "loglik/ti_minus_ais": 9.0}, {"step": 10, **agree}]),
            run_with("b", [{"step": 10, **agree, "loglik/ti_minus_ais": -0.7, "loglik/ti_half_diff": 0.9,
                            "loglik/ti_se": 0.5}]),
            run_with("c", [{"step": 10, "loss_gen": 1.0}])]  # never logged the protocol
    check = stats.protocol_check(runs)
    # a: |0.5| ≤ 2 · 0.3 at its last step (step 5's 9.0 is not final); b: |−0.7| > 0.6
    assert (check.runs, check.ais_disagrees, check.max_ti_minus_ais) == (2, ["b"], 0.7)
    assert (check.max_half_diff, check.ti_se, check.ess, check.accept) == (0.9, (0.3, 0.5), (0.7, 0.7), (0.6, 0.6))
    text = page_lib.protocol_sentences(check, "vanilla", [-3.0, 0.5])[0]
    assert ("TI and AIS differ by more than 2 standard errors in 1 of 2 runs (b; largest |TI − AIS| = 0.7): there "
            "the protocol has not converged, and at least one of the two is off by half the difference or more.") in text
    assert ("at most 0.9, not less than the smallest difference of a group's mean from vanilla's (0.5): a "
            "difference that small cannot be told from the ladder's discretisation.") in text
    assert page_lib.protocol_sentences(check)[0].endswith("at most 0.9. AIS effective-sample fraction 0.7 to 0.7; "
                                                          "MALA acceptance 0.6 to 0.6.")
    assert stats.protocol_check(runs[2:]) is None
    assert "No run logged the held-out log-likelihood protocol" in page_lib.protocol_sentences(None)[0]


def test_line_fit_against_hand_computation_and_numpy():
    x, y = np.arange(5.0), np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    fit = stats.fit_line(x, y)
    assert (fit.slope, fit.intercept, fit.n) == (pytest.approx(0.8, rel=1e-12), pytest.approx(1.4, rel=1e-12), 5)
    assert fit.slope_se == pytest.approx(math.sqrt(0.12), rel=1e-12)
    coef, cov = np.polyfit(x, y, 1, cov=True)  # numpy scales its covariance by RSS/(n − 2)
    np.testing.assert_allclose([fit.slope, fit.intercept], coef, rtol=1e-12)
    assert fit.slope_se == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-12)
    lo, hi = stats.t_interval(fit.slope, fit.slope_se, fit.n - 2)
    assert (lo, hi) == (pytest.approx(0.8 - 3.182446305 * math.sqrt(0.12), rel=1e-9),
                        pytest.approx(0.8 + 3.182446305 * math.sqrt(0.12), rel=1e-9))  # −0.302 to 1.902
    # two-sided p of t = 0.8/√0.12 = 2.309 on 3 degrees of freedom, against scipy's linregress
    assert stats.two_sided_p(fit.slope, fit.slope_se, 3) == pytest.approx(0.104088, abs=1e-6)
    assert stats.two_sided_p(2.0, 0.0, 3) == 0.0 and stats.two_sided_p(0.0, 0.0, 3) == 1.0
    two = stats.fit_line([0.0, 1.0], [1.0, 3.0])  # no residual degree of freedom
    assert two.slope == pytest.approx(2.0) and math.isnan(two.slope_se)
    assert all(math.isnan(v) for v in stats.t_interval(two.slope, two.slope_se, 0))
    with pytest.raises(ValueError, match="2 distinct x"):
        stats.fit_line([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])


def test_bootstrap_slope_interval_matches_the_t_interval_with_many_points():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, 200)
    y = 1.0 + 2.0 * x + 0.5 * rng.normal(size=200)
    fit = stats.fit_line(x, y)
    lo, hi = stats.t_interval(fit.slope, fit.slope_se, fit.n - 2)
    blo, bhi = stats.bootstrap_slope_interval(x, y)
    assert blo < fit.slope < bhi and 0.85 < (bhi - blo) / (hi - lo) < 1.15
    assert stats.bootstrap_slope_interval(x, y) == (blo, bhi)  # a fixed seed
    assert stats.bootstrap_slope_interval(x[:3], 2.0 * x[:3]) == pytest.approx((2.0, 2.0), rel=1e-9)  # on a line
    assert all(math.isnan(v) for v in stats.bootstrap_slope_interval(x[:2], y[:2]))


def test_trend_slope_of_points_on_a_known_line_and_off_it(classifier_report):
    root, paths = classifier_report
    groups = report.group_runs(report.load_study(root).runs)
    fits = {}
    for part in ("gen", "ebm"):
        points = report.quality_variance_points(groups, "eval/fd_classifier", f"gradstats/total_var/{part}",
                                                "eval/fd_se_classifier")
        assert len(points) == 4 * len(EVAL_STEPS)  # the NaN-variance row at step 7 is left out
        assert {p.distance_se for p in points if p.run == "vanilla_b10_s1"} == {2.0}
        trend = fits[part] = report.fit_trend(points)
        assert trend.step == EVAL_STEPS[-1] and trend.n == 4  # one point per run, at the last step
        assert (trend.seeds, trend.groups) == ((2, 2), 2)
        last = [p for p in points if p.step == EVAL_STEPS[-1]]
        x = np.log10([p.variance for p in last])
        y = np.array([p.distance for p in last])
        by_hand = np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2)
        assert trend.slope == pytest.approx(by_hand, rel=1e-9)
    # EBM: every point on fd = 10 + 20·log10(var): the slope exactly, no residual, an interval of width 0
    ebm = fits["ebm"]
    assert ebm.slope == pytest.approx(EBM_SLOPE, rel=1e-9) and ebm.intercept == pytest.approx(10.0, rel=1e-9)
    assert ebm.ci == pytest.approx((EBM_SLOPE, EBM_SLOPE), rel=1e-9) and ebm.excludes_zero and ebm.p_value < 1e-6
    # generator, off its line at the last step: x = log10(0.01, 0.1, 0.03, 0.02), y = (10, 14, 6, 8); slope 4.506
    # with se 4.796 on 2 degrees of freedom (t quantile 4.3027): 95% CI −16.1 to 25.1, p = 0.447
    gen = fits["gen"]
    assert gen.slope == pytest.approx(4.506429, rel=1e-6) and gen.slope_se == pytest.approx(4.796043, rel=1e-6)
    assert gen.ci == pytest.approx((4.506429 - 4.302653 * 4.796043, 4.506429 + 4.302653 * 4.796043), rel=1e-6)
    assert gen.p_value == pytest.approx(0.446603, abs=1e-6) and gen.excludes_zero is False
    blo, bhi = gen.bootstrap_ci
    assert blo < gen.slope < bhi
    page = open(paths["report"]).read()
    assert (f"FD (classifier) rises as the EBM f_α gradient variance grows: slope 20 per decade of variance (95% CI "
            f"20 to 20, p < 0.001, 4 runs, 2 seeds per group, at step 10; bootstrap over runs 95% CI 20 to 20): "
            f"distinguishable from zero at the 5% level.") in page
    assert (f"FD (classifier) against the generator g_β gradient variance: slope 4.51 per decade of variance (95% CI "
            f"-16.1 to 25.1, p = 0.45, 4 runs, 2 seeds per group, at step 10; bootstrap over runs 95% CI {blo:.3g} "
            f"to {bhi:.3g}): not distinguishable from zero.") in page


def pt(run, step, variance, distance, group="g"):
    return report.Point(group, run, step, variance, distance)


def test_trend_sentences_claim_a_slope_only_when_its_interval_excludes_zero():
    # six runs in three groups of two; log10 variance x = −3 … −0.5, Sxx = 4.375, and Σ(x − x̄)·noise = −0.3:
    # slopes −8 − 0.3/4.375 = −8.069 (steep) and 10 · (−0.3/4.375) = −0.686 (flat)
    x = np.array([-3.0, -2.5, -2.0, -1.5, -1.0, -0.5])
    runs = [(f"r{i}", f"g{i // 2}") for i in range(6)]
    noise = np.array([0.3, -0.2, -0.4, 0.5, 0.1, -0.3])
    steep = [pt(r, 10, 10**v, 50.0 - 8.0 * v + n, g) for (r, g), v, n in zip(runs, x, noise)]
    flat = [pt(r, 10, 10**v, 50.0 + 10.0 * n, g) for (r, g), v, n in zip(runs, x, noise)]
    for points, slope, excludes in ((steep, -8.0 - 0.3 / 4.375, True), (flat, -3.0 / 4.375, False)):
        trend = report.fit_trend(points)
        fit = stats.fit_line(x, [p.distance for p in points])
        assert trend.slope == pytest.approx(slope, rel=1e-12) and trend.slope_se == pytest.approx(fit.slope_se)
        lo, hi = trend.ci
        assert trend.excludes_zero is excludes and (lo > 0 or hi < 0) is excludes
        assert (trend.seeds, trend.groups) == ((2, 2), 3)
        sentence = page_lib.trend_sentence("FD", "gen", trend)
        assert f"(95% CI {lo:.3g} to {hi:.3g}, " in sentence and "6 runs, 2 seeds per group, at step 10" in sentence
        if excludes:
            assert sentence.startswith("FD falls as the generator g_β gradient variance grows: slope -8.07 per decade")
            assert "distinguishable from zero at the 5% level" in sentence and "not a cause" in sentence
        else:
            assert lo < 0 < hi and sentence.endswith("not distinguishable from zero.") and "slope -0.686 " in sentence
            assert "falls" not in sentence and "rises" not in sentence
    # two runs: a slope, but no interval, and no claim
    two = report.fit_trend([pt("a", 5, 1e-2, 120.0, "vanilla"), pt("b", 5, 1e-1, 110.0, "ti p=1")])
    assert two.excludes_zero is None and math.isnan(two.p_value)
    assert page_lib.trend_sentence("FD", "ebm", two) == (
        "FD against the EBM f_α gradient variance: slope -10 per decade of variance (2 runs, 1 seed per group, at "
        "step 5): too few runs for a confidence interval (it needs 3), so no claim either way.")
    assert page_lib.trend_sentence("FD", "ebm", None).endswith("too few runs with distinct variances for a fit.")


def test_trend_is_fitted_at_the_last_step_every_run_reached():
    # run b stopped at step 5: the fit uses step 5, one point per run, on fd = 100 - 10·log10(var)
    points = [pt("a", 0, 1e-3, 500.0), pt("a", 5, 1e-2, 120.0), pt("a", 10, 1e-2, 90.0),
              pt("b", 0, 1e-3, 480.0), pt("b", 5, 1e-1, 110.0)]
    assert report.last_common_step(points) == 5 and report.last_common_step([]) is None
    trend = report.fit_trend(points)
    assert (trend.step, trend.n) == (5, 2)
    assert trend.slope == pytest.approx(-10.0, rel=1e-9) and trend.intercept == pytest.approx(100.0, rel=1e-9)
    assert report.fit_trend(points[:3]) is None  # one run: no spread of variance at its last step


def test_feature_space_names_and_runs_without_the_protocol(classifier_report, tmp_path):
    _, paths = classifier_report
    for key in ("summary_md", "report", "summary_csv", "differences_csv"):
        assert "FID" not in open(paths[key]).read() and "fid" not in open(paths[key]).read(), key
    assert "Fréchet distance (classifier features)" in open(paths["report"]).read()
    # Inception space, from runs that predate the log-likelihood protocol: its columns show —
    inception = report.make_report(make_study(str(tmp_path), space="inception", loglik=False))
    md, page = open(inception["summary_md"]).read(), open(inception["report"]).read()
    assert "| FID | KID |" in md and "FID (Inception-v3 pool3 features)" in page
    vanilla = next(l for l in md.splitlines() if l.startswith("| vanilla |"))
    assert vanilla.startswith("| vanilla | 2 | 10 | 12 ± 2.83 (SE 1.6) | 0.2 ± 0.141 | 0.5 ± 0 | 0.4 ± 0 | "
                              "0.06 ± 0.0141 | — | — | — | — | — | — |")
    assert "training_estimate" not in inception and "*No figure: no run logged loglik/train_bias" in page
    assert "No run logged the held-out log-likelihood protocol (loglik/…)" in page
    row = read_csv(inception["summary_csv"])[0]
    assert float(row["fid_mean"]) == pytest.approx(12.0) and float(row["kid_mean"]) == pytest.approx(0.2)
    assert float(row["fid_se"]) == pytest.approx(rms(1.0, 2.0)) and row["loglik_ti_mean"] == row["loglik_ti_se"] == ""
    assert "loglik_ti" not in {r["metric"] for r in read_csv(inception["differences_csv"])}


def test_rerun_gives_identical_tables(classifier_report, tmp_path):
    root, paths = classifier_report
    before = {k: open(paths[k], "rb").read() for k in ("summary_csv", "differences_csv", "summary_md", "report")}
    again = report.make_report(root, str(tmp_path / "again"))
    assert {k: open(again[k], "rb").read() for k in before} == before


def test_groups_inferred_from_configs_without_study_json(tmp_path):
    root = make_study(str(tmp_path), with_record=False)
    study = report.load_study(root)
    groups = report.group_runs(study.runs)
    assert list(groups) == list(GROUPS)
    assert [[r.name for r in rs] for rs in groups.values()] == [[run_name(g, s) for s in SEEDS] for g in GROUPS]
    rows = read_csv(report.make_report(root)["summary_csv"])
    assert [r["group"] for r in rows] == list(GROUPS)
    assert float(rows[0]["fd_classifier_mean"]) == pytest.approx(12.0)


def test_unfinished_runs_and_missing_metrics(tmp_path):
    root = make_study(str(tmp_path / "a"), unfinished=("ti_p0.5_b10_s1",))
    paths = report.make_report(root)
    rows = read_csv(paths["summary_csv"])
    assert [r["unfinished"] for r in rows] == ["0", "1"]
    assert float(rows[1]["wall_seconds_mean"]) == 300.0 and rows[1]["wall_seconds_std"] == ""
    assert "ti p=0.5 (*1 unfinished*)" in open(paths["summary_md"]).read()
    assert "unfinished (reported at their last logged step): ti_p0.5_b10_s1" in open(paths["report"]).read()

    # training rows only, and a run study.json lists that has not started: no figure but the page says so
    bare = tmp_path / "b"
    w = JsonlWriter(str(bare / "runs" / "vanilla_b10_s0" / "metrics.jsonl"))
    w.write_scalars(1, {"loss_ebm": 0.1, "loss_gen": 1.0})
    w.close()
    (bare / "study.json").write_text(json.dumps({"name": "bare", "runs": [
        {"name": "vanilla_b10_s0", "group": "vanilla", "variant": "vanilla", "seed": 0, "batch_size": 10},
        {"name": "vanilla_b10_s1", "group": "vanilla", "variant": "vanilla", "seed": 1, "batch_size": 10}]}))
    paths = report.make_report(str(bare))
    assert not set(report.FIGURES) & set(paths)
    page = open(paths["report"]).read()
    assert page.count("*No figure:") == len(report.FIGURES) and "not started (no metrics yet): vanilla_b10_s1" in page
    row = read_csv(paths["summary_csv"])[0]
    assert row["recon_mse_mean"] == "" and not any(k.startswith("fd") for k in row)  # no sample quality logged
    assert row["loglik_ti_mean"] == row["loglik_ti_se"] == row["loglik_train_bias_mean"] == ""
    assert "No run logged the held-out log-likelihood protocol" in page and "## Differences between groups" not in page


def test_directory_without_runs_is_refused(tmp_path):
    with pytest.raises(ValueError, match=f"no runs in {tmp_path}"):
        report.make_report(str(tmp_path))


def test_cli_refuses_an_empty_directory_and_writes_a_report(classifier_report, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "experiments.report", f"--workdir={empty}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"no runs in {empty}" in proc.stderr
    root, _ = classifier_report
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "experiments.report", f"--workdir={root}", f"--out={out}"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "report.md").is_file() and str(out / "report.md") in proc.stdout


# ------------------------------------------------------------------- replica exchange and adaptive ladders
def option_data(root):
    runs = report.load_study(root).runs
    return figures.figure_data(report.group_runs(runs), stats.quality_names(runs))


def test_adaptive_ladder_figure_data_is_the_mean_over_seeds(options_report):
    data = option_data(options_report[0])
    assert list(data.ladders) == [ADAPTIVE] and data.adaptive == {ADAPTIVE}
    curves = data.ladders[ADAPTIVE]
    np.testing.assert_array_equal(curves.steps, [5, 10])
    np.testing.assert_allclose(curves.mean, [[0, 0.25, 0.55, 1], [0, 0.125, 0.425, 1]], rtol=1e-12)
    # final: rung 1 over seeds 0.1 and 0.15 → 0.125 ± 0.05/√2
    assert [st.mean for st in curves.final] == pytest.approx([0, 0.125, 0.425, 1], rel=1e-12)
    assert [st.std for st in curves.final] == pytest.approx([0, std(0.1, 0.15), std(0.4, 0.45), 0], abs=1e-12)
    np.testing.assert_allclose(curves.seeds[1], [0.1, 0.15])
    # the reference marks: the fixed ladders, one per distinct (N, p): "ti p=0.5" and "ti p=0.5 +RE" share one
    assert list(data.references) == ["p=0.5"]
    np.testing.assert_allclose(data.references["p=0.5"], [0, math.sqrt(1 / 3), math.sqrt(2 / 3), 1], rtol=1e-6)
    # the integrand sits on the ladder its rows ran on: the logged one at step 10, the power ladder otherwise
    ts, e, step = data.integrands[ADAPTIVE]
    np.testing.assert_allclose(ts, [0, 0.125, 0.425, 1], rtol=1e-12)
    assert step == 10 and e.shape == (NUM_TEMPS,)
    np.testing.assert_allclose(data.integrands["ti p=0.5"][0], np.asarray(power_schedule(NUM_TEMPS, POWER)))
    np.testing.assert_allclose(data.integrands[EXCHANGE][0], data.integrands["ti p=0.5"][0])


def test_swap_acceptance_figure_data_is_the_mean_over_seeds(options_report):
    data = option_data(options_report[0])
    assert list(data.swaps) == [EXCHANGE]
    curves = data.swaps[EXCHANGE]
    np.testing.assert_array_equal(curves.steps, [5, 10])
    # step 10, pair 2: only seed 0 has a finite value (0.2)
    np.testing.assert_allclose(curves.mean, [[0.8, 0.5, 0.2], [0.7, 0.4, 0.2]], rtol=1e-12)
    # final per pair: seed 1's pair 2 is its step-5 value 0.1, so (0.2 + 0.1)/2
    assert [st.mean for st in curves.final] == pytest.approx([0.7, 0.4, 0.15], rel=1e-12)
    assert [st.std for st in curves.final] == pytest.approx([std(0.8, 0.6), std(0.5, 0.3), std(0.2, 0.1)],
                                                            rel=1e-12)
    assert [st.count for st in curves.final] == [2, 2, 2]
    np.testing.assert_allclose(curves.seeds[2], [0.2, 0.1])


def test_closest_power_recovers_power_ladders_and_matches_a_grid_search():
    for n, p in ((10, 0.3), (10, 3.0), (5, 1.0)):
        found, rms = stats.closest_power(np.asarray(power_schedule(n, p), np.float64))
        assert found == pytest.approx(p, rel=1e-5) and rms < 1e-6
    ts = np.array([0.0, 0.125, 0.425, 1.0])
    found, rms = stats.closest_power(ts)
    grid = np.exp(np.linspace(math.log(0.01), math.log(100.0), 400_001))
    u = np.array([1 / 3, 2 / 3])
    losses = np.mean((u[None, :] ** grid[:, None] - ts[1:-1]) ** 2, axis=1)
    assert found == pytest.approx(grid[np.argmin(losses)], rel=1e-4)
    assert rms == pytest.approx(math.sqrt(losses.min()), rel=1e-4)
    assert all(math.isnan(v) for v in stats.closest_power([0.0, 1.0]) + stats.closest_power([0, math.nan, 1]))


def test_option_tables_in_the_page_and_rungs_csv(options_report):
    _, paths = options_report
    page = open(paths["report"]).read()
    p, rms = stats.closest_power([0.0, 0.125, 0.425, 1.0])
    assert (f"| {ADAPTIVE} | 2 | {p:.3g} ({rms:.2g}) | 0 ± 0 | 0.125 ± 0.035 | 0.425 ± 0.035 | 1 ± 0 |\n"
            "| p=0.5 (fixed) |  |  | 0 | 0.577 | 0.816 | 1 |") in page
    assert "| group | seeds | (0,1) | (1,2) | (2,3) |" in page
    assert f"| {EXCHANGE} | 2 | 0.7 ± 0.14 | 0.4 ± 0.14 | 0.15 ± 0.071 |" in page
    assert "](rung_placement.png)" in page and "](swap_acceptance.png)" in page and "](rungs.csv)" in page
    rows = read_csv(paths["rungs_csv"])
    assert [(r["group"], r["quantity"], r["index"]) for r in rows] == (
        [(ADAPTIVE, "rung_t", str(i)) for i in range(4)] + [(EXCHANGE, "swap_accept", str(i)) for i in range(3)])
    assert [float(r["mean"]) for r in rows] == pytest.approx([0, 0.125, 0.425, 1, 0.7, 0.4, 0.15], rel=1e-9)
    assert float(rows[5]["std"]) == pytest.approx(std(0.5, 0.3), rel=1e-9) and {r["seeds"] for r in rows} == {"2"}
    # the option groups sit beside the others in the summary, with ti p=0.5's numbers
    summary = read_csv(paths["summary_csv"])
    assert [r["group"] for r in summary] == [*GROUPS, *OPTION_GROUPS]
    assert [float(r["fd_classifier_mean"]) for r in summary[1:]] == pytest.approx([7.0] * 3)
    assert [r["power"] for r in summary] == ["", "0.5", "0.5", "0.5"]


def test_option_groups_are_compared_with_their_fixed_ladder(options_report):
    _, paths = options_report
    rows = read_csv(paths["differences_csv"])
    # every group against vanilla, then each option group against "ti p=0.5", on the same columns
    pairs = list(dict.fromkeys((r["group"], r["reference"]) for r in rows))
    assert pairs == [("ti p=0.5", "vanilla"), (EXCHANGE, "vanilla"), (ADAPTIVE, "vanilla"),
                     (EXCHANGE, "ti p=0.5"), (ADAPTIVE, "ti p=0.5")]
    against_base = {(r["group"], r["metric"]): r for r in rows if r["reference"] == "ti p=0.5"}
    assert len(against_base) == 2 * 12
    for (group, metric), r in against_base.items():
        if metric != "recon_mse":  # the option groups log ti p=0.5's numbers there, seed for seed
            assert float(r["delta"]) == 0.0 and r["verdict"] == "within", r
    ex, ad = against_base[EXCHANGE, "recon_mse"], against_base[ADAPTIVE, "recon_mse"]
    base_std = std(RECON["ti p=0.5", 0], RECON["ti p=0.5", 1])  # 0: 0.03 for both seeds
    assert float(ex["delta"]) == pytest.approx(0.022 - 0.03, rel=1e-9)
    assert float(ex["se"]) == pytest.approx(welch_se(std(0.02, 0.024), base_std), rel=1e-9)
    assert ex["verdict"] == "beyond"
    assert float(ad["delta"]) == pytest.approx(0.04 - 0.03, rel=1e-9)
    assert float(ad["se"]) == pytest.approx(welch_se(std(0.03, 0.05), base_std), rel=1e-9)
    assert ad["verdict"] == "within"
    # the same numbers in summary.md's third table and in the page's sentences
    summary = open(paths["summary_md"]).read()
    fd_se = welch_se(std(6.0, 8.0), std(6.0, 8.0))  # ti p=0.5's final FD: 6 and 8
    assert f"| {EXCHANGE} | ti p=0.5 | +0 ± {fd_se:.2g}: within |" in summary
    assert "| -0.008 ± 0.002: beyond |" in summary and "| +0.01 ± 0.01: within |" in summary
    page = open(paths["report"]).read()
    assert f"- {EXCHANGE} against ti p=0.5: beyond the seed spread in held-out recon. MSE (-0.008 ± 0.002); " in page
    assert f"- {ADAPTIVE} against ti p=0.5: within the seed spread in " in page


def test_base_group_of_each_kind_of_group():
    def runs(power, exchange_every=0, adapt_every=0, count=2):
        return [Run(f"r{i}", "", "ti", i, "", [], power=power, exchange_every=exchange_every,
                    adapt_every=adapt_every) for i in range(count)]

    assert table_lib.base_group("ti p=1 +RE", runs(1.0, exchange_every=5)) == "ti p=1"
    assert table_lib.base_group("ti adaptive (from p=0.3)", runs(0.3, adapt_every=10)) == "ti p=0.3"
    assert table_lib.base_group("ti adaptive (from p=1) +RE B=25", runs(1.0, 5, 10)) == "ti p=1 B=25"
    assert table_lib.base_group("ti p=1", runs(1.0)) is None  # a fixed ladder modifies nothing
    assert table_lib.base_group("my runs", runs(1.0, exchange_every=5)) is None  # a name the grid did not make
    mixed = runs(1.0, exchange_every=5) + runs(1.0)
    assert table_lib.base_group("ti p=1 +RE", mixed) is None


def test_option_figures_absent_without_their_metrics(classifier_report):
    root, paths = classifier_report
    assert not {"rung_placement", "swap_acceptance", "rungs_csv"} & set(paths)
    assert not os.path.exists(os.path.join(root, "report", "rungs.csv"))
    data = option_data(root)
    assert data.ladders == {} and data.swaps == {} and list(data.references) == ["p=0.5"]
    page = open(paths["report"]).read()
    assert "*No figure: no run logged rung_t/… (no ti run with an adaptive ladder, ti.adapt_every > 0).*" in page
    assert "*No figure: no run logged swap_accept/… (no ti run with replica exchange, ti.exchange_every > 0).*" in page
    assert "Final swap acceptance" not in page and "rungs.csv" not in page


def test_option_groups_from_configs_and_old_records(tmp_path):
    # without study.json: groups from each config.json, in the grid's order
    root = make_study(str(tmp_path / "a"), options=True, with_record=False)
    runs = report.load_study(root).runs
    assert list(report.group_runs(runs)) == [*GROUPS, *OPTION_GROUPS]
    by_name = {r.name: r for r in runs}
    assert (by_name["ti_p0.5_re2_b10_s0"].exchange_every, by_name["ti_p0.5_re2_b10_s0"].adapt_every) == (2, 0)
    assert (by_name["ti_adapt_p0.5_b10_s1"].adapt_every, by_name["ti_adapt_p0.5_b10_s1"].adapt_decay) == (5, 0.9)
    # a study.json and config.json from before the fields existed: no exchange, fixed ladders
    old = report.load_study(make_study(str(tmp_path / "b")))
    assert {(r.exchange_every, r.adapt_every, r.adapt_decay) for r in old.runs} == {(0, 0, None)}


def test_each_group_keeps_one_colour_in_every_figure():
    names = [f"g{i}" for i in range(13)]  # a full-scale study's 13 groups
    colours = figures.group_colours(names)
    assert len(set(colours.values())) == 13
    tab10 = figures.colormaps["tab10"]
    assert [colours[f"g{i}"] for i in range(10)] == [tab10(i) for i in range(10)]
