"""The study report on a synthetic study workdir with known numbers: figures written, the summary's
mean ± std equal to hand computations, the quality-vs-variance trend slope of data built on a line,
feature-space names, byte-identical reruns, and a clear error for a directory without runs.
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

from lebm_jax.data import images
from lebm_jax.study import report
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
# gradient variances placed on known lines: FD = 40 − 5·log10(var_gen) = 10 + 20·log10(var_ebm)
GEN_SLOPE, EBM_SLOPE = -5.0, 20.0


def var_gen(fd):
    return 10.0 ** ((fd - 40.0) / GEN_SLOPE)


def var_ebm(fd):
    return 10.0 ** ((fd - 10.0) / EBM_SLOPE)


# final values per (group, seed)
KID = {("vanilla", 0): 0.1, ("vanilla", 1): 0.3, ("ti p=0.5", 0): 0.05, ("ti p=0.5", 1): 0.07}
RECON = {("vanilla", 0): 0.05, ("vanilla", 1): 0.07, ("ti p=0.5", 0): 0.04, ("ti p=0.5", 1): 0.04}
LOG_PX = {("ti p=0.5", 0): -100.0, ("ti p=0.5", 1): -104.0}
LOSS_VAR = {("vanilla", 0): 2.0, ("vanilla", 1): 4.0, ("ti p=0.5", 0): 1.0, ("ti p=0.5", 1): 3.0}
WALL = {("vanilla", 0): 100.0, ("vanilla", 1): 120.0, ("ti p=0.5", 0): 300.0, ("ti p=0.5", 1): 340.0}


def run_name(group, seed):
    return ("vanilla_b10" if group == "vanilla" else "ti_p0.5_b10") + f"_s{seed}"


def quality_keys(space):
    """Logged names (lebm_jax.measure.metrics.metric_name) of fd, kid, kid_std, precision, recall."""
    if space == "inception":
        return dict(fd="eval/fid", kid="eval/kid", kid_std="eval/kid_std", precision="eval/precision",
                    recall="eval/recall")
    return {m: f"eval/{m}_{space}" for m in ("fd", "kid", "kid_std", "precision", "recall")}


def write_run(directory, group, seed, space, finished=True):
    """metrics.jsonl in JsonlWriter's format, config.json, sample grids and (if finished) done.json."""
    variant = "vanilla" if group == "vanilla" else "ti"
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
            w.write_scalars(step, row)
        if step in (0, 10):  # held-out rows
            held = {"heldout/recon_mse": RECON[group, seed] if last else 0.5, "heldout/posterior_log_lik": -80.0}
            if variant == "ti":
                held["heldout/log_px"] = LOG_PX[group, seed] if last else -500.0
            w.write_scalars(step, held)
        w.write_scalars(step, {  # sample quality and gradient statistics at the same step
            keys["fd"]: fd, keys["kid"]: KID[group, seed] if last else 1.0, keys["kid_std"]: 0.01,
            keys["precision"]: 0.5, keys["recall"]: 0.4, "time/eval_seconds": 1.0,
            "gradstats/total_var/gen": var_gen(fd), "gradstats/total_var/ebm": var_ebm(fd),
            "gradstats/total_var/all": 1.0, "gradstats/mcmc_var/gen": var_gen(fd) / 2,
            "gradstats/mcmc_var/ebm": var_ebm(fd) / 2, "gradstats/normalised_var/gen": math.inf,
            "gradstats/loss_var/gen": LOSS_VAR[group, seed] if last else 10.0, "time/gradstats_seconds": 1.0,
        })
        if step == 5:  # off the lines, with a non-finite variance: must not enter the fit nor the log plots
            w.write_scalars(7, {keys["fd"]: 1000.0, "gradstats/total_var/gen": math.nan,
                                "gradstats/total_var/ebm": math.nan, "gradstats/loss_var/gen": math.inf})
    w.close()
    config = {"variant": variant, "seed": seed, "batch_size": 10, "num_steps": EVAL_STEPS[-1],
              "ti": {"num_temps": NUM_TEMPS, "power": POWER},
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


def make_study(root, space="classifier", with_record=True, unfinished=()):
    runs = []
    for group in GROUPS:
        for seed in SEEDS:
            name = run_name(group, seed)
            write_run(os.path.join(root, "runs", name), group, seed, space, finished=name not in unfinished)
            spec = {"name": name, "group": group, "variant": "vanilla" if group == "vanilla" else "ti",
                    "seed": seed, "batch_size": 10}
            if group != "vanilla":
                spec.update(power=POWER, num_temps=NUM_TEMPS)
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


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def std(a, b):  # sample standard deviation (ddof = 1) of two values
    return abs(a - b) / math.sqrt(2.0)


def test_every_figure_is_a_png(classifier_report):
    root, paths = classifier_report
    assert set(report.FIGURES) <= set(paths)
    for key, name in report.FIGURES.items():
        assert paths[key] == os.path.join(root, "report", name)
        with Image.open(paths[key]) as im:
            im.verify()
        with Image.open(paths[key]) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 150
        assert os.path.getsize(paths[key]) > 5000


def test_summary_csv_is_mean_and_sample_std_over_seeds(classifier_report):
    _, paths = classifier_report
    rows = read_csv(paths["summary_csv"])
    assert [r["group"] for r in rows] == list(GROUPS)
    stems = ["fd_classifier", "kid_classifier", "precision_classifier", "recall_classifier", "recon_mse", "log_px",
             "total_var_ebm", "total_var_gen", "loss_var_gen", "wall_seconds"]
    assert list(rows[0]) == ["group", "variant", "power", "batch_size", "seeds", "unfinished", "steps"] + [
        f"{s}_{m}" for s in stems for m in ("mean", "std")]
    vanilla, ti = rows
    assert (vanilla["variant"], vanilla["power"], ti["variant"], ti["power"]) == ("vanilla", "", "ti", "0.5")
    assert [(r["seeds"], r["unfinished"], r["steps"], r["batch_size"]) for r in rows] == [("2", "0", "10", "10")] * 2
    # final fd over seeds: vanilla 10 and 14 → 12 ± 2.828 (sample std, ddof = 1), ti 6 and 8 → 7 ± 1.414
    expected = {
        "vanilla": {"fd_classifier": (12.0, std(10, 14)), "kid_classifier": (0.2, std(0.1, 0.3)),
                    "precision_classifier": (0.5, 0.0), "recall_classifier": (0.4, 0.0),
                    "recon_mse": (0.06, std(0.05, 0.07)), "log_px": None,
                    "total_var_gen": (np.mean([var_gen(10), var_gen(14)]), std(var_gen(10), var_gen(14))),
                    "total_var_ebm": (np.mean([var_ebm(10), var_ebm(14)]), std(var_ebm(10), var_ebm(14))),
                    "loss_var_gen": (3.0, std(2, 4)), "wall_seconds": (110.0, std(100, 120))},
        "ti p=0.5": {"fd_classifier": (7.0, std(6, 8)), "kid_classifier": (0.06, std(0.05, 0.07)),
                     "recon_mse": (0.04, 0.0), "log_px": (-102.0, std(-100, -104)),
                     "total_var_gen": (np.mean([var_gen(6), var_gen(8)]), std(var_gen(6), var_gen(8))),
                     "loss_var_gen": (2.0, std(1, 3)), "wall_seconds": (320.0, std(300, 340))},
    }
    assert std(10, 14) == pytest.approx(2.8284271, rel=1e-7)
    for row in rows:
        for stem, value in expected[row["group"]].items():
            if value is None:
                assert row[f"{stem}_mean"] == row[f"{stem}_std"] == "", stem
            else:
                assert float(row[f"{stem}_mean"]) == pytest.approx(value[0], rel=1e-9, abs=1e-12), stem
                assert float(row[f"{stem}_std"]) == pytest.approx(value[1], rel=1e-9, abs=1e-12), stem


def test_summary_markdown_shows_the_same_numbers(classifier_report):
    _, paths = classifier_report
    md = open(paths["summary_md"]).read()
    lines = md.splitlines()
    assert lines[0].startswith("| group | seeds | steps | FD (classifier) |")
    vanilla = next(l for l in lines if l.startswith("| vanilla |"))
    ti = next(l for l in lines if l.startswith("| ti p=0.5 |"))
    for phrase in ("12 ± 2.83", "0.2 ± 0.141", "0.06 ± 0.0141", "3 ± 1.41", "110 ± 14.1", "| — |"):
        assert phrase in vanilla, phrase
    for phrase in ("7 ± 1.41", "-102 ± 2.83", "2 ± 1.41", "320 ± 28.3"):
        assert phrase in ti, phrase
    assert "sample standard deviation (ddof = 1)" in md


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


def test_report_page_links_every_figure_and_prints_the_machine(classifier_report):
    _, paths = classifier_report
    page = open(paths["report"]).read()
    for name in report.FIGURES.values():
        assert f"]({name})" in page, name
    assert "digits, 8×8×1" in page and "backend: cpu" in page and "1:02:03" in page
    assert "](summary.csv)" in page and "12 ± 2.83" in page
    assert "No figure" not in page


def test_trend_slope_of_points_on_a_known_line(classifier_report):
    root, paths = classifier_report
    groups = report.group_runs(report.load_study(root).runs)
    for part, slope, intercept in (("gen", GEN_SLOPE, 40.0), ("ebm", EBM_SLOPE, 10.0)):
        points = report.quality_variance_points(groups, "eval/fd_classifier", f"gradstats/total_var/{part}")
        assert len(points) == 4 * len(EVAL_STEPS)  # the NaN-variance row at step 7 is left out
        trend = report.fit_trend(points)
        assert trend.step == EVAL_STEPS[-1] and trend.n == 4  # one point per run, at the last step
        # by hand: every point satisfies fd = intercept + slope · log10(var)
        last = [p for p in points if p.step == EVAL_STEPS[-1]]
        x = np.log10([p.variance for p in last])
        y = np.array([p.distance for p in last])
        by_hand = np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2)
        assert trend.slope == pytest.approx(by_hand, rel=1e-9) and by_hand == pytest.approx(slope, rel=1e-9)
        assert trend.intercept == pytest.approx(intercept, rel=1e-9)
    page = open(paths["report"]).read()
    assert f"slope -5 per decade of variance over 4 runs at step {EVAL_STEPS[-1]}" in page
    assert f"slope 20 per decade of variance over 4 runs at step {EVAL_STEPS[-1]}" in page


def test_trend_is_fitted_at_the_last_step_every_run_reached():
    def pt(run, step, variance, distance):
        return report.Point("g", run, step, variance, distance)

    # run b stopped at step 5: the fit uses step 5, one point per run, on fd = 100 - 10·log10(var)
    points = [pt("a", 0, 1e-3, 500.0), pt("a", 5, 1e-2, 120.0), pt("a", 10, 1e-2, 90.0),
              pt("b", 0, 1e-3, 480.0), pt("b", 5, 1e-1, 110.0)]
    assert report.last_common_step(points) == 5 and report.last_common_step([]) is None
    trend = report.fit_trend(points)
    assert (trend.step, trend.n) == (5, 2)
    assert trend.slope == pytest.approx(-10.0, rel=1e-9) and trend.intercept == pytest.approx(100.0, rel=1e-9)
    assert report.fit_trend(points[:3]) is None  # one run: no spread of variance at its last step


def test_feature_space_names(classifier_report, tmp_path):
    _, paths = classifier_report
    for key in ("summary_md", "report", "summary_csv"):
        assert "FID" not in open(paths[key]).read() and "fid" not in open(paths[key]).read(), key
    assert "Fréchet distance (classifier features)" in open(paths["report"]).read()
    inception = report.make_report(make_study(str(tmp_path), space="inception"))
    md, page = open(inception["summary_md"]).read(), open(inception["report"]).read()
    assert "| FID | KID |" in md and "FID (Inception-v3 pool3 features)" in page
    row = read_csv(inception["summary_csv"])[0]
    assert float(row["fid_mean"]) == pytest.approx(12.0) and float(row["kid_mean"]) == pytest.approx(0.2)


def test_rerun_gives_identical_tables(classifier_report, tmp_path):
    root, paths = classifier_report
    before = {k: open(paths[k], "rb").read() for k in ("summary_csv", "summary_md")}
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
