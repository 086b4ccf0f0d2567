"""SIGKILL inside a checkpoint save, and twenty SIGKILLs at random moments of one run.

Every run is a fresh process on the tiny model of tests/test_resume.py (same settings, same random
.npz data set) and a shared persistent XLA compilation cache. The processes that must die inside a
save run ``tests/kill_save_script.py``: the plain entry point with one orbax or Checkpointer call
wrapped so that, at a chosen step, the process writes part of that step's checkpoint, writes a marker
file and sleeps; the test waits for the marker and SIGKILLs the process, so the kill lands inside the
save every time (no timing luck). Each resume is the plain ``python -m experiments.train``.

- ``test_kill_inside_a_save_loses_nothing_else``: killed (a) after the arrays of step K are written and
  before its config and checksum are, (b) with every item written, just before the rename that commits
  the step, (c) after step K is committed, halfway through deleting the checkpoint max_to_keep pushed
  out. Each time: the unfinished directory is on disk and never listed, every listed checkpoint is
  complete (its SHA-256 matches, its state is the reference's bit for bit), metrics.jsonl holds the
  reference's rows up to the last complete checkpoint, and the resumed run starts there and ends
  bit-exact with the uninterrupted run, leaving no temporary or half-deleted directory.
- ``test_twenty_random_kills_end_bit_exact``: one run killed 20 times, each process at a moment drawn
  uniformly (seeded) over the lifetime it would have had, then finished by a 21st process: the same
  final state and metrics as the uninterrupted run. Marked ``slow`` (it still runs under ``pytest -q``).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lebm_jax.training.checkpoint import TRASH, Checkpointer, state_digest
from test_resume import (
    TINY,
    TMP_MARK,
    assert_each_metric_logged_once,
    assert_states_equal,
    load_state,
    metric_rows,
    resumed_step,
    training_rows,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().parent / "kill_save_script.py"
TIMEOUT_S = 400  # per process: a cold compilation on a busy 2-core machine takes minutes; a hang fails
NUM_STEPS = 12  # every run here: 2 epochs of 6 steps (a new permutation and a learning-rate decay at 7),
# a checkpoint after each step; short, since 21 start-ups of ~10-25 s dominate the random-kill test
MAX_TO_KEEP = 3  # so saves delete old checkpoints, and kills can land in deletions
KILL_STEP = 5  # the step whose save the hooks stop (with max_to_keep 3 it pushes step 2 out)
NUM_KILLS = 20
STEP_LINE = re.compile(r"^step \d+/", re.M)


# ---------------------------------------------------------------------------------------------------
# Processes


class Proc:
    """One training process in its own session; stdout and stderr go to files in the log folder."""

    def __init__(self, name: str, args: list[str], env: dict, logs: Path):
        self.name = name
        self.out_path, self.err_path = logs / f"{name}.out", logs / f"{name}.err"
        self.started = time.monotonic()
        self.first_step_s: float | None = None  # seconds from start to the first "step n/N" line seen
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.popen = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=err, start_new_session=True)

    def kill(self) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def watch(self) -> None:
        """Notes when the first training step is printed (the loop prints each step before saving it)."""
        if self.first_step_s is None and STEP_LINE.search(self.stdout):
            self.first_step_s = time.monotonic() - self.started

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        deadline = self.started + timeout
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                self.popen.wait()
                pytest.fail(f"{self.name} did not finish within {timeout} s; its log:\n{self.tail()}")
            self.watch()
            time.sleep(0.05)
        self.watch()
        return self.popen.returncode

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def tail(self, n: int = 40) -> str:
        return "\n".join((self.stdout + self.stderr).splitlines()[-n:])


@pytest.fixture(scope="module")
def harness(tmp_path_factory, request):
    """test_resume's data set and settings, a shared compilation cache, and a way to start runs."""
    root = tmp_path_factory.mktemp("kill_save")
    rng = np.random.default_rng(0)  # the same blobs on noise as tests/test_resume.py
    yy, xx = np.mgrid[:16, :16]
    centres = rng.uniform(4, 12, size=(64, 2))
    blobs = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 8.0)
    images = np.clip(blobs * 220 + rng.uniform(0, 35, size=blobs.shape), 0, 255).astype(np.uint8)[..., None]
    np.savez(root / "data.npz", images=images)
    (root / "logs").mkdir()

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["JAX_PLATFORMS"] = "cpu"
    cache = getattr(request.config, "cache", None)  # the same cache folder as test_resume.py
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache.mkdir("lebm_jax_xla") if cache else root / "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    for name in ("LEBM_KILL_HOOK", "LEBM_KILL_STEP", "LEBM_KILL_MARKER"):
        env.pop(name, None)
    procs: list[Proc] = []

    class Harness:
        path = root
        settings = {**TINY, "data.path": str(root / "data.npz"), "num_steps": NUM_STEPS}

        @staticmethod
        def start(name: str, workdir: Path, hook: tuple[str, int, Path] | None = None, **changes) -> Proc:
            """The plain entry point, or with ``hook`` = (hook, step, marker) kill_save_script.py."""
            settings = {**Harness.settings, **{k.replace("__", "."): v for k, v in changes.items()}}
            entry = ["-m", "experiments.train"] if hook is None else [str(SCRIPT)]
            args = [sys.executable, *entry, "--config", str(REPO / "configs" / "digits.py"),
                    "--workdir", str(workdir), *(f"--config.{k}={v}" for k, v in settings.items())]
            run_env = dict(env)
            if hook is not None:
                run_env.update(LEBM_KILL_HOOK=hook[0], LEBM_KILL_STEP=str(hook[1]), LEBM_KILL_MARKER=str(hook[2]))
            proc = Proc(name, args, run_env, root / "logs")
            procs.append(proc)
            return proc

    yield Harness
    for proc in procs:  # nothing outlives the module, whatever happened
        if proc.popen.poll() is None:
            proc.kill()
            proc.popen.wait()


@pytest.fixture(scope="module")
def reference(harness):
    """An uninterrupted run of NUM_STEPS steps keeping every checkpoint, and its timing:
    (workdir, seconds to its first step line, seconds per step once compiled)."""
    workdir = harness.path / "reference"
    proc = harness.start("reference", workdir, max_to_keep=100)
    assert proc.wait() == 0, proc.tail()
    assert f"done: step {NUM_STEPS}" in proc.stdout
    assert resumed_step(proc.stderr) is None
    assert proc.first_step_s is not None
    rates = [r["steps_per_sec"] for r in metric_rows(workdir) if "steps_per_sec" in r and r["step"] > 1]
    return workdir, proc.first_step_s, 1.0 / statistics.median(rates)


# ---------------------------------------------------------------------------------------------------
# Checks


def wall_clock(name: str) -> bool:
    return name == "steps_per_sec" or name.startswith("time/")


def rows_up_to(workdir: Path, last: int) -> list[dict]:
    """metrics.jsonl rows of steps <= last, wall-clock fields left out, in a canonical order."""
    rows = [{k: v for k, v in r.items() if not wall_clock(k)} for r in metric_rows(workdir) if r["step"] <= last]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


def on_disk(checkpoints: Path) -> list[str]:
    return sorted(os.listdir(checkpoints)) if checkpoints.is_dir() else []


def listed_steps(workdir: Path) -> list[int]:
    if not (workdir / "checkpoints").is_dir():
        return []
    checkpointer = Checkpointer(str(workdir), None, read_only=True)  # touches nothing on disk
    try:
        return checkpointer.all_steps()
    finally:
        checkpointer.close()


def assert_complete_and_exact(workdir: Path, reference: Path, steps: list[int]) -> None:
    """Each step's checkpoint reads back, matches the SHA-256 saved with it, and is the reference's
    state at that step bit for bit."""
    for step in steps:
        where = workdir / "checkpoints" / str(step)
        state = load_state(workdir, step)
        assert int(state["step"]) == step
        saved = json.loads((where / "digest" / "metadata").read_text())["sha256"]
        assert state_digest(state) == saved, f"{where}: the state does not match its SHA-256"
        assert json.loads((where / "config" / "metadata").read_text())["num_steps"] == NUM_STEPS
        assert_states_equal(state, load_state(reference, step))


def file_count(directory: Path) -> int:
    return sum(p.is_file() for p in directory.rglob("*"))


def finish_and_compare(harness, workdir: Path, reference: Path, name: str, latest: int | None) -> Proc:
    """Runs the plain entry point to the end; it must resume from ``latest`` and end as the reference."""
    proc = harness.start(name, workdir, max_to_keep=MAX_TO_KEEP)
    assert proc.wait() == 0, proc.tail()
    assert resumed_step(proc.stderr) == latest, (resumed_step(proc.stderr), latest, proc.tail())
    assert f"done: step {NUM_STEPS}" in proc.stdout
    assert_states_equal(load_state(workdir, NUM_STEPS), load_state(reference, NUM_STEPS))
    rows = metric_rows(workdir)
    assert_each_metric_logged_once(rows)
    assert training_rows(rows, NUM_STEPS) == training_rows(metric_rows(reference), NUM_STEPS)
    assert rows_up_to(workdir, NUM_STEPS) == rows_up_to(reference, NUM_STEPS)  # held-out rows too
    kept = list(range(NUM_STEPS - MAX_TO_KEEP + 1, NUM_STEPS + 1))
    assert listed_steps(workdir) == kept
    # no temporary directory and no _deleting/ left: exactly the kept steps
    assert on_disk(workdir / "checkpoints") == sorted(str(s) for s in kept)
    assert_complete_and_exact(workdir, reference, kept)
    return proc


# ---------------------------------------------------------------------------------------------------
# 1. A kill inside a save


@pytest.mark.parametrize("hook", ["items", "commit", "delete"])
def test_kill_inside_a_save_loses_nothing_else(harness, reference, hook):
    reference_dir = reference[0]
    workdir = harness.path / f"inside_{hook}"
    checkpoints = workdir / "checkpoints"
    marker = harness.path / f"inside_{hook}.marker"
    proc = harness.start(f"inside_{hook}", workdir, hook=(hook, KILL_STEP, marker), max_to_keep=MAX_TO_KEEP)
    deadline = proc.started + TIMEOUT_S
    while not marker.exists():
        if proc.popen.poll() is not None:
            pytest.fail(f"{proc.name} exited ({proc.popen.returncode}) before its save stopped:\n{proc.tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{proc.name}: the save of step {KILL_STEP} did not stop within {TIMEOUT_S} s")
        time.sleep(0.05)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL, proc.tail()
    assert "Traceback" not in proc.stderr, proc.tail()
    stopped = json.loads(marker.read_text())
    assert (stopped["hook"], stopped["step"], stopped["pid"]) == (hook, KILL_STEP, proc.popen.pid)
    names = on_disk(checkpoints)

    # the kill landed inside the save: what the save had written is on disk, unfinished
    if hook in ("items", "commit"):
        latest = KILL_STEP - 1  # the newest complete checkpoint
        unfinished = [n for n in names if TMP_MARK in n]
        assert len(unfinished) == 1 and unfinished[0].startswith(f"{KILL_STEP}."), names
        item_dirs = {p.name.split(".")[0]: p for p in (checkpoints / unfinished[0]).iterdir() if p.is_dir()}
        items = sorted(item_dirs)
        # items: the arrays only; commit: all three items, none renamed into place yet
        assert items == (["state"] if hook == "items" else ["config", "digest", "state"]), items
        assert all(TMP_MARK in p.name for p in item_dirs.values()), sorted(item_dirs.values())
        assert file_count(item_dirs["state"]) > 0
        assert str(KILL_STEP) not in names
        assert TRASH not in names
        print(f"{hook}: killed with {unfinished[0]} holding {items} "
              f"({file_count(checkpoints / unfinished[0])} files), not listed")
    else:
        latest = KILL_STEP  # step K was committed before its save began deleting
        pushed_out = KILL_STEP - MAX_TO_KEEP
        trash = checkpoints / TRASH
        assert on_disk(trash) == [str(pushed_out)], on_disk(trash)
        left, whole = file_count(trash / str(pushed_out)), file_count(reference_dir / "checkpoints" / str(pushed_out))
        assert 0 < left < whole, (left, whole)  # half deleted
        assert not [n for n in names if TMP_MARK in n], names
        print(f"delete: killed with {TRASH}/{pushed_out} holding {left} of its {whole} files")

    # nothing else lost: the complete checkpoints are listed, whole and the reference's; the rows up to
    # the newest one are the reference's (the row of step K, logged before its save, is dropped on resume)
    expected = list(range(latest - MAX_TO_KEEP + 1, latest + 1))
    assert listed_steps(workdir) == expected
    assert [n for n in names if n.isdigit()] == sorted(str(s) for s in expected)
    assert_complete_and_exact(workdir, reference_dir, expected)
    assert rows_up_to(workdir, latest) == rows_up_to(reference_dir, latest)
    assert max(r["step"] for r in metric_rows(workdir)) == KILL_STEP

    final = finish_and_compare(harness, workdir, reference_dir, f"inside_{hook}_resumed", latest)
    if hook == "delete":
        assert not (checkpoints / TRASH).exists()
    assert "Traceback" not in final.stderr, final.tail()


# ---------------------------------------------------------------------------------------------------
# 2. Twenty kills at random moments


def _unfinished(checkpoints: Path) -> dict[str, tuple[int, int]]:
    """{name: (inode, mtime)} of the temporary directories and of _deleting/ under checkpoints/."""
    out = {}
    for name in on_disk(checkpoints):
        if TMP_MARK in name or name == TRASH:
            try:
                st = os.stat(checkpoints / name)
            except FileNotFoundError:
                continue
            out[name] = (st.st_ino, st.st_mtime_ns)
    return out


def _phase(proc: Proc, checkpoints: Path, marker: Path, before: dict[str, tuple[int, int]]) -> str:
    """Where a process was when it was killed, from what it left (``before``: _unfinished() at its start,
    left by the process before it, which this one may not have cleaned up yet)."""
    if marker.exists():
        return "held before the last save"
    new = {n for n, v in _unfinished(checkpoints).items() if before.get(n) != v}
    if any(TMP_MARK in n for n in new):
        return "writing a checkpoint"
    if TRASH in new:
        return "deleting a checkpoint"
    if not STEP_LINE.search(proc.stdout):
        return "start-up (import, compile, restore, step-0 evaluation)"
    return "training"


@pytest.mark.slow
def test_twenty_random_kills_end_bit_exact(harness, reference):
    """One run, killed NUM_KILLS times and then finished. Each process is killed at a moment drawn
    uniformly over the lifetime it would have had: its start-up plus its remaining steps, at the
    reference's pace (start-up: the time to a first step of the latest process that printed one, or
    longer if a kill landed later than that in a start-up). So that no process can
    finish before its kill, the killed ones run kill_save_script.py's ``hold`` on the last step: a kill
    that lands later than predicted finds it waiting before the last save."""
    reference_dir, startup_s, step_s = reference
    rng = random.Random(20)
    workdir = harness.path / "random_kills"
    checkpoints = workdir / "checkpoints"
    latest: int | None = None  # the newest complete checkpoint: where the next process must resume
    report = []
    began = time.monotonic()
    for attempt in range(NUM_KILLS):
        marker = harness.path / f"random_{attempt}.marker"
        lifetime = startup_s + (NUM_STEPS - (latest or 0)) * step_s
        moment = rng.uniform(0.0, lifetime)
        before = _unfinished(checkpoints)
        proc = harness.start(f"random_{attempt}", workdir, hook=("hold", NUM_STEPS, marker), max_to_keep=MAX_TO_KEEP)
        while time.monotonic() - proc.started < moment:
            if proc.popen.poll() is not None:
                pytest.fail(f"{proc.name} exited ({proc.popen.returncode}) before its kill:\n{proc.tail()}")
            proc.watch()
            time.sleep(min(0.02, max(0.0, moment - (time.monotonic() - proc.started))))
        proc.kill()
        assert proc.wait() == -signal.SIGKILL, f"{proc.name} ended by itself before the kill:\n{proc.tail()}"
        phase = _phase(proc, checkpoints, marker, before)
        if proc.first_step_s is not None:
            startup_s = proc.first_step_s  # the machine's current pace
        elif phase.startswith("start-up"):
            startup_s = max(startup_s, moment)
        assert "Traceback" not in proc.stderr, proc.tail()
        assert resumed_step(proc.stderr) in (latest, None), (resumed_step(proc.stderr), latest)

        listed = listed_steps(workdir)
        assert [n for n in on_disk(checkpoints) if n.isdigit()] == sorted(str(s) for s in listed)
        assert len(listed) <= MAX_TO_KEEP and (not listed or listed == list(range(listed[0], listed[-1] + 1)))
        assert (max(listed) if listed else 0) >= (latest or 0), "a complete checkpoint was lost"
        assert_complete_and_exact(workdir, reference_dir, listed)
        new_latest = max(listed) if listed else None
        if new_latest is not None:
            assert rows_up_to(workdir, new_latest) == rows_up_to(reference_dir, new_latest)
        report.append((attempt, round(moment, 2), round(lifetime, 1), phase, resumed_step(proc.stderr), new_latest))
        latest = new_latest

    killed_s = time.monotonic() - began
    finish_and_compare(harness, workdir, reference_dir, "random_final", latest)
    print(f"\n{NUM_KILLS} kills in {killed_s:.0f} s, then finished in {time.monotonic() - began - killed_s:.0f} s "
          f"(reference: first step after {reference[1]:.1f} s, {step_s:.3f} s a step)")
    print("attempt, kill at s, predicted lifetime s, phase, resumed from, newest complete step after:")
    for row in report:
        print("  ", row)
    phases = {p: sum(r[3] == p for r in report) for p in dict.fromkeys(r[3] for r in report)}
    print("kills by phase:", phases)
    assert len(report) == NUM_KILLS
