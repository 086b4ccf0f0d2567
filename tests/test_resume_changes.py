"""Resuming a workdir with a changed config, and retrying after a non-finite stop.

In-process runs of `loop.train_and_evaluate` on the tiny digits config (tests/tiny.py), from copies of
one trained workdir:

- a change of a field that changes what the run computes (``optim.lr_gen``) is refused with a message
  listing field, saved and new value and the way on, and nothing in the workdir changes;
- with ``allow_config_changes=True`` the run goes on, config.json stays the config of step 0 and
  config_changes.jsonl records the step and the change; the next resume compares with the newest
  checkpoint's config, which holds the change;
- a change of resumable fields only (num_steps, log_every) goes on without a warning;
- a shape change is refused even with the flag;
- after a non-finite stop, nothing is logged for the failing step, and a retry from the last good
  checkpoint leaves each (step, metric) once and nothing of the failed attempt past that checkpoint.

A persistent XLA cache (pytest's cache folder, shared with the subprocess tests) makes the repeated
programs compile once, and once across sessions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from lebm_jax.data import datasets as data
from lebm_jax.training import checkpoint, loop
from lebm_jax.training.checkpoint import Checkpointer
from lebm_jax.training.writers import read_jsonl

from config_files import load_config
from tiny import tiny_config
from test_resume import assert_each_metric_logged_once

BASE = {"num_steps": 2, "log_every": 1, "checkpoint_every": 1, "sample_every": 2, "max_to_keep": 10}
CACHE_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                  "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory, request):
    """A persistent XLA cache for this module's runs, the one the subprocess tests share (pytest's cache
    folder, so later sessions start warm; a temporary folder without it); jax's settings restored after."""
    cache = getattr(request.config, "cache", None)
    path = cache.mkdir("lebm_jax_xla") if cache else tmp_path_factory.mktemp("xla_cache")
    saved = {name: getattr(jax.config, name) for name in CACHE_SETTINGS}
    for name, value in zip(CACHE_SETTINGS, (str(path), 0.0, 0)):
        jax.config.update(name, value)
    compilation_cache.reset_cache()
    yield path
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def dataset() -> data.ImageData:
    return data.load(load_config("digits").data)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset) -> Path:
    """A workdir trained for 2 steps, a checkpoint after each; tests work on copies of it."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    loop.train_and_evaluate(tiny_config("digits", **BASE), str(workdir), dataset=dataset)
    return workdir


def copy_of(trained: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(trained, target)
    return target


def snapshot(directory: Path) -> dict[str, str]:
    """{relative path: sha256} of every file below ``directory`` (directories as '<dir>')."""
    return {str(p.relative_to(directory)): "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*"))}


def saved_config(workdir: Path, step: int) -> dict:
    ckpt = Checkpointer(str(workdir), None, read_only=True)
    try:
        return ckpt.read_config(step)
    finally:
        ckpt.close()




def finite_training_and_heldout(row: dict) -> bool:
    """Whether the row's training and held-out values are finite numbers (a gradient statistic may be
    inf for a tiny model: a variance over a zero norm)."""
    return all(isinstance(v, float) and math.isfinite(v) for k, v in row.items()
               if k != "step" and not k.startswith("gradstats/"))


def changes_lines(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "config_changes.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------
# 1. A change that is not resumable


def test_changed_learning_rate_is_refused_and_nothing_changes(trained, tmp_path, dataset):
    workdir = copy_of(trained, tmp_path)
    before = snapshot(workdir)
    config = tiny_config("digits", **{**BASE, "num_steps": 3, "optim.lr_gen": 5e-3})
    with pytest.raises(ValueError) as err:
        loop.train_and_evaluate(config, str(workdir), dataset=dataset)
    message = str(err.value)
    line = next(x for x in message.splitlines() if "optim.lr_gen" in x)
    assert "0.001" in line and "0.005" in line and line.index("0.001") < line.index("0.005"), message  # saved → now
    assert "--allow_config_change" in message and "--workdir" in message and "saved values" in message
    assert str(workdir / "checkpoints" / "2") in message
    assert "num_steps" not in message.split("Fields that may change")[0]  # a resumable change is not listed
    assert snapshot(workdir) == before  # checkpoints, metrics.jsonl, config.json, events: same bytes, nothing added


def test_shape_change_is_refused_even_with_the_flag(trained, tmp_path, dataset):
    workdir = copy_of(trained, tmp_path)
    before = snapshot(workdir)
    config = tiny_config("digits", **{**BASE, "model.ngf": 8})
    with pytest.raises(ValueError) as err:
        loop.train_and_evaluate(config, str(workdir), dataset=dataset, allow_config_changes=True)
    message = str(err.value)
    line = next(x for x in message.splitlines() if "model.ngf" in x)
    assert re.search(r"\b4\b", line) and re.search(r"\b8\b", line), message
    assert "not even with --allow_config_change" in message
    assert snapshot(workdir) == before


# ---------------------------------------------------------------------------------------------------
# 2. The same change, allowed


def test_allowed_change_goes_on_and_is_recorded(trained, tmp_path, dataset):
    workdir = copy_of(trained, tmp_path)
    original_config = (workdir / "config.json").read_bytes()
    config = tiny_config("digits", **{**BASE, "num_steps": 3, "optim.lr_gen": 5e-3})
    result = loop.train_and_evaluate(config, str(workdir), dataset=dataset, allow_config_changes=True)
    assert int(jax.device_get(result.state.step)) == 3

    assert (workdir / "config.json").read_bytes() == original_config  # the record of step 0 is kept
    (line,) = changes_lines(workdir)
    assert line["step"] == 2
    assert line["changes"] == {"num_steps": [2, 3], "optim.lr_gen": [1e-3, 5e-3]}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", line["time"])
    # the checkpoint saved after the change carries the config in force from step 2 on
    assert saved_config(workdir, 2)["optim"]["lr_gen"] == 1e-3
    assert saved_config(workdir, 3)["optim"]["lr_gen"] == 5e-3
    rows = read_jsonl(workdir / "metrics.jsonl")
    assert_each_metric_logged_once(rows)
    assert sorted(r["step"] for r in rows if "loss_ebm" in r) == [1, 2, 3]
    assert [r["lr_gen"] for r in rows if "loss_ebm" in r][-1] == pytest.approx(5e-3)

    # resuming again with the new config: compared with the newest checkpoint's config, nothing differs
    recorded = (workdir / "config_changes.jsonl").read_bytes()
    loop.train_and_evaluate(config, str(workdir), dataset=dataset)
    assert (workdir / "config_changes.jsonl").read_bytes() == recorded
    assert (workdir / "config.json").read_bytes() == original_config


# ---------------------------------------------------------------------------------------------------
# 3. Resumable fields only


def test_resumable_changes_go_on_silently(trained, tmp_path, dataset, caplog):
    workdir = copy_of(trained, tmp_path)
    original_config = (workdir / "config.json").read_bytes()
    config = tiny_config("digits", **{**BASE, "num_steps": 4, "log_every": 2, "max_to_keep": 3})
    with caplog.at_level(logging.WARNING):
        result = loop.train_and_evaluate(config, str(workdir), dataset=dataset)
    assert int(jax.device_get(result.state.step)) == 4
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "config" in r.getMessage()]
    assert not warned, warned
    assert (workdir / "config.json").read_bytes() == original_config
    (line,) = changes_lines(workdir)  # recorded all the same: config.json + these lines = the config at each step
    assert line["step"] == 2 and set(line["changes"]) == {"num_steps", "log_every", "max_to_keep"}
    assert set(line["changes"]) <= set(checkpoint.RESUMABLE_FIELDS)
    rows = read_jsonl(workdir / "metrics.jsonl")
    assert_each_metric_logged_once(rows)
    assert sorted(r["step"] for r in rows if "loss_ebm" in r) == [1, 2, 4]


# ---------------------------------------------------------------------------------------------------
# 4. A non-finite stop, then a retry


def test_retry_after_non_finite_stop_leaves_no_duplicates(tmp_path, dataset, monkeypatch):
    """Step 7 (0-based index 6, as host_batch counts) has a NaN batch. Checkpoints at 4 and 8; training
    rows every 2 steps; gradient statistics every step. The failed attempt logs steps 5 and 6 (good,
    after the last checkpoint) and nothing for step 7: its gradient statistics would measure the
    parameters the guard kept, under the failing step's number. The retry (another lr_gen, allowed)
    resumes from step 4 and leaves each (step, metric) once, none of the failed attempt's rows after 4."""
    settings = {"num_steps": 8, "log_every": 2, "checkpoint_every": 4, "sample_every": 4, "max_to_keep": 5,
                "gradstats.every": 1, "gradstats.num_draws": 2}
    workdir = tmp_path / "run"
    host_batch = data.host_batch

    def poisoned(images, global_batch, seed, step, *args):
        x = host_batch(images, global_batch, seed, step, *args)
        return np.full_like(x, np.nan) if step == 6 else x

    monkeypatch.setattr(data, "host_batch", poisoned)
    with pytest.raises(loop.NonFiniteError) as err:
        loop.train_and_evaluate(tiny_config("digits", **settings), str(workdir), dataset=dataset)
    assert "at step 6;" in str(err.value) and "(step 4)" in str(err.value)
    failed = read_jsonl(workdir / "metrics.jsonl")
    assert max(r["step"] for r in failed) == 6  # nothing for step 7 (nor after)
    assert {r["step"] for r in failed if "gradstats/" in " ".join(r)} == set(range(7))
    assert all(finite_training_and_heldout(r) for r in failed)
    assert_each_metric_logged_once(failed)
    monkeypatch.setattr(data, "host_batch", host_batch)

    retry = tiny_config("digits", **{**settings, "optim.lr_gen": 5e-4})
    loop.train_and_evaluate(retry, str(workdir), dataset=dataset, allow_config_changes=True)
    rows = read_jsonl(workdir / "metrics.jsonl")
    assert_each_metric_logged_once(rows)
    assert [r for r in rows if r["step"] <= 4] == [r for r in failed if r["step"] <= 4]  # kept as they were
    failed_after = [r for r in failed if r["step"] > 4]
    assert failed_after and not [r for r in rows if r in failed_after]  # the failed attempt's rows after 4: gone
    assert sorted(r["step"] for r in rows if "loss_ebm" in r) == [2, 4, 6, 8]
    assert sorted(r["step"] for r in rows if "gradstats/" in " ".join(r)) == list(range(9))
    assert all(finite_training_and_heldout(r) for r in rows)
    (line,) = changes_lines(workdir)
    assert line["step"] == 4 and line["changes"] == {"optim.lr_gen": [1e-3, 5e-4]}
