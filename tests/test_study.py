"""The study runner: a tiny grid (vanilla and ti × two seeds × a few steps) end to end with its report,
resuming after an interruption without redoing finished runs, and bad study configs failing fast.
"""

import csv
import os
import subprocess
import sys

import pytest

from lebm_jax.study import grid as grid_lib
from lebm_jax.study import runner as study_lib
from lebm_jax.training import loop as train

from config_files import REPO, load_config
from tiny import MODEL

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
    c.update_from_flattened_dict({"powers": (1.0,), "num_temps": 3, "seeds": (0, 1)})
    return c


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
                     "ti_p0.3_b50_s0", "ti_p0.3_b50_s3", "ti_p1_b50_s0", "ti_p1_b50_s3", "ti_p3_b50_s0", "ti_p3_b50_s3"]
    assert [s.group for s in grid[::2]] == ["vanilla", "vanilla B=25", "ti p=0.3", "ti p=1", "ti p=3"]
    config = grid_lib.run_config(c, grid[6])
    assert (config.variant, config.ti.power, config.ti.num_temps, config.seed, config.batch_size) == ("ti", 1.0, 10, 0, 50)
    # everything else is the study's training config
    assert config.model.to_dict() == c.train.model.to_dict() and config.num_steps == c.train.num_steps


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


def test_bad_study_config_fails_before_any_work(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cases = [
        (["--config.powers=(0.3, -1.0)"], "run ti_p-1_b50_s0: config.ti.power=-1.0"),
        (["--config.seeds=(0, 0)"], "study.seeds=(0, 0) repeats a seed"),
        (["--config.train.batch_size=0"], "config.batch_size=0"),
    ]
    for flags, phrase in cases:
        workdir = tmp_path / "w"
        proc = subprocess.run([sys.executable, "-m", "experiments.study", "--config", "configs/study_digits.py",
                               f"--workdir={workdir}", *flags], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode != 0, flags
        assert phrase in proc.stdout + proc.stderr, (flags, proc.stdout[-1500:], proc.stderr[-1500:])
        assert not workdir.exists()
