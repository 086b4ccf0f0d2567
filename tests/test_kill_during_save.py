"""SIGKILL inside a checkpoint save, and twenty SIGKILLs at random moments of one run's training.

The runs train the tiny model of tests/test_resume.py (same settings, same random .npz data set from
tests/harness.py) with a shared persistent XLA compilation cache. The uninterrupted reference run is a
plain ``python -m experiments.train`` process; every other run is a new process forked from
tests/harness.py's server, which imported jax and the library once (no jax backend yet), and runs
either ``-m experiments.train`` or ``tests/kill_save_script.py`` as ``__main__``, as the interpreter would:
each is its own process in its own session, SIGKILLed for real, and its only link to the next is the
workdir. The processes that must die inside a save run kill_save_script.py: the plain entry point with
one orbax or Checkpointer call wrapped so that, at a chosen step, the process writes part of that
step's checkpoint, writes a marker file and sleeps; the test waits for the marker and SIGKILLs the
process, so the kill lands inside the save every time (no timing luck).

- ``test_kill_inside_a_save_loses_nothing_else``: killed (a) after the arrays of step K are written and
  before its config and checksum are, (b) with every item written, just before the rename that commits
  the step, (c) after step K is committed, halfway through deleting the checkpoint max_to_keep pushed
  out. Each time: the unfinished directory is on disk and never listed, every listed checkpoint is
  complete (its SHA-256 matches, its state is the reference's bit for bit), metrics.jsonl holds the
  reference's rows up to the last complete checkpoint, and the resumed run starts there and ends
  bit-exact with the uninterrupted run, leaving no temporary or half-deleted directory. The three
  run side by side; the checks after a kill read a copy of the workdir taken right after it, while
  the resume runs on the workdir itself.
- ``test_twenty_random_kills_end_bit_exact``: one run killed 20 times, each process once it has printed
  its first training step, at a moment drawn (seeded) over the steps and saves still ahead of it, then
  finished by a 21st process: the same final state and metrics as the uninterrupted run. Marked
  ``slow`` (it still runs under ``pytest -q``).
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import shutil
import signal
import statistics
import time
from pathlib import Path

import pytest

from harness import ForkServer, Proc, spawn, subprocess_env, write_blob_npz
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
NUM_STEPS = 24  # every run here: 4 epochs of 6 steps (a new permutation and a learning-rate decay at 7,
# 13, 19), a checkpoint after each step; enough steps for 20 kills to land at many of them
MAX_TO_KEEP = 3  # so saves delete old checkpoints, and kills can land in deletions
KILL_STEP = 5  # the step whose save the hooks stop (with max_to_keep 3 it pushes step 2 out)
NUM_KILLS = 20
STEP_LINE = re.compile(r"^step (\d+)/", re.M)  # printed by the loop after each step, before its save
KILL_ENV = ("LEBM_KILL_HOOK", "LEBM_KILL_STEP", "LEBM_KILL_MARKER")
# imported once by the fork server; the children import the rest (experiments.train, the hooks)
PRELOAD = ["jax", "numpy", "orbax.checkpoint", "lebm_jax.training.loop", "experiments._cli"]


# ---------------------------------------------------------------------------------------------------
# Processes


def first_step(proc: Proc) -> int | None:
    """The step of the first "step n/N" line the process printed, or None."""
    found = STEP_LINE.search(proc.stdout)
    return int(found.group(1)) if found else None


def wait_for_first_step(proc: Proc) -> int:
    """Waits for the process's first step line (its start-up is over); fails if it exits first."""
    while (first := first_step(proc)) is None:
        if proc.poll() is not None:
            pytest.fail(f"{proc.name} exited ({proc.returncode}) before its first step:\n{proc.tail()}")
        if time.monotonic() - proc.started > TIMEOUT_S:
            pytest.fail(f"{proc.name}: no training step within {TIMEOUT_S} s:\n{proc.tail()}")
        time.sleep(0.005)
    return first


@pytest.fixture(scope="module")
def harness(tmp_path_factory, request):
    """test_resume's data set and settings, a shared compilation cache, a fork server, a way to start
    runs (``plain`` as a subprocess, ``start`` forked from the server), and the reference run, started
    at once (as a plain process) so that it runs while the server imports and the first runs go."""
    root = tmp_path_factory.mktemp("kill_save")
    write_blob_npz(root / "data.npz")
    logs = root / "logs"
    logs.mkdir()
    env = subprocess_env(request, root, drop=KILL_ENV)
    server = ForkServer(env, PRELOAD, logs / "server.log")
    plain: list[Proc] = []

    class Harness:
        path = root
        settings = {**TINY, "data.path": str(root / "data.npz"), "num_steps": NUM_STEPS}

        @staticmethod
        def args(workdir: Path, entry: list[str], changes: dict) -> list[str]:
            settings = {**Harness.settings, **{k.replace("__", "."): v for k, v in changes.items()}}
            return [*entry, "--config", str(REPO / "configs" / "digits.py"), "--workdir", str(workdir),
                    *(f"--config.{k}={v}" for k, v in settings.items())]

        @staticmethod
        def plain(name: str, workdir: Path, **changes) -> Proc:
            """``python -m experiments.train`` in a subprocess of its own."""
            proc = spawn(name, Harness.args(workdir, ["-m", "experiments.train"], changes), env,
                         logs / f"{name}.out", logs / f"{name}.err")
            plain.append(proc)
            return proc

        @staticmethod
        def start(name: str, workdir: Path, hook: tuple[str, int, Path] | None = None, **changes) -> Proc:
            """``-m experiments.train``, or with ``hook`` = (hook, step, marker) kill_save_script.py, forked."""
            entry = ["-m", "experiments.train"] if hook is None else [str(SCRIPT)]
            extra = {} if hook is None else dict(zip(KILL_ENV, (hook[0], str(hook[1]), str(hook[2]))))
            return server.start(name, Harness.args(workdir, entry, changes), logs / f"{name}.out",
                                logs / f"{name}.err", env_changes=extra, timeout=TIMEOUT_S)

    Harness.reference = Harness.plain("reference", root / "reference", max_to_keep=100)
    try:
        yield Harness
    finally:  # nothing outlives the module, whatever happened
        server.close()
        for proc in plain:
            if proc.poll() is None:
                proc.kill()
                proc.popen.wait()


@pytest.fixture(scope="module")
def reference(harness):
    """An uninterrupted run of NUM_STEPS steps keeping every checkpoint, as a plain process, and its
    pace: (workdir, seconds from the first step line to the second (the first save in a process, then
    a step), seconds per step and save after that)."""
    workdir = harness.path / "reference"
    proc = harness.reference
    assert proc.wait(TIMEOUT_S) == 0, proc.tail()
    assert f"done: step {NUM_STEPS}" in proc.stdout
    assert first_step(proc) == 1
    assert resumed_step(proc.stderr) is None
    rows = sorted((r for r in metric_rows(workdir) if "time/train_seconds" in r), key=lambda r: r["step"])
    assert [r["step"] for r in rows] == list(range(1, NUM_STEPS + 1))
    seconds = [r["time/train_seconds"] for r in rows]
    gaps = [b - a for a, b in zip(seconds, seconds[1:])]
    return workdir, gaps[0], statistics.median(gaps[1:])


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


@functools.lru_cache(maxsize=None)
def reference_state(reference: Path, step: int) -> dict:
    """The reference's state at ``step`` (read once: the reference run is over before any check)."""
    return load_state(reference, step)


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
        assert_states_equal(state, reference_state(reference, step))


def file_count(directory: Path) -> int:
    return sum(p.is_file() for p in directory.rglob("*"))


def finish(harness, workdir: Path, name: str) -> Proc:
    """``-m experiments.train`` (no hook) on ``workdir``, to the end."""
    return harness.start(name, workdir, max_to_keep=MAX_TO_KEEP)


def compare_finished(proc: Proc, workdir: Path, reference: Path, latest: int | None) -> Proc:
    """``finish``'s process must resume from ``latest`` and end as the reference."""
    assert proc.wait(TIMEOUT_S) == 0, proc.tail()
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


HOOKS = ("items", "commit", "delete")


@pytest.fixture(scope="module")
def inside_saves(harness) -> dict:
    """The three runs that die inside the save of step KILL_STEP, side by side. Each is SIGKILLed once its
    hook has stopped it; its workdir is copied as the kill left it (the copy is what the checks after
    the kill read) and resumed to the end at once. {hook: (killed process, marker, copy, resumed process)}.
    They start once the reference has printed its first step: its programs are then in the compilation
    cache, which a cold cache would otherwise have four processes compile at once on two cores."""
    wait_for_first_step(harness.reference)
    killed = {hook: harness.start(f"inside_{hook}", harness.path / f"inside_{hook}",
                                  hook=(hook, KILL_STEP, harness.path / f"inside_{hook}.marker"),
                                  max_to_keep=MAX_TO_KEEP)
              for hook in HOOKS}
    out = {}
    while len(out) < len(HOOKS):
        for hook, proc in killed.items():
            marker = harness.path / f"inside_{hook}.marker"
            if hook in out:
                continue
            if marker.exists():
                proc.kill()
                assert proc.wait(TIMEOUT_S) == -signal.SIGKILL, proc.tail()
                workdir, copy = harness.path / f"inside_{hook}", harness.path / f"inside_{hook}_as_killed"
                shutil.copytree(workdir, copy, symlinks=True)
                out[hook] = (proc, marker, copy, finish(harness, workdir, f"inside_{hook}_resumed"))
            elif proc.poll() is not None:
                pytest.fail(f"{proc.name} exited ({proc.returncode}) before its save stopped:\n{proc.tail()}")
            elif time.monotonic() - proc.started > TIMEOUT_S:
                pytest.fail(f"{proc.name}: the save of step {KILL_STEP} did not stop within {TIMEOUT_S} s")
        time.sleep(0.01)
    return out


@pytest.mark.parametrize("hook", HOOKS)
def test_kill_inside_a_save_loses_nothing_else(harness, inside_saves, reference, hook):
    """A SIGKILL inside the save of step KILL_STEP (``hook``: after its arrays, before its commit, or
    halfway through deleting the checkpoint it pushed out) leaves the unfinished directory on disk and
    unlisted, every complete checkpoint listed, whole and the reference's, and the reference's rows up
    to the newest; the resumed run starts there and ends bit-exact with the uninterrupted one."""
    reference_dir = reference[0]
    proc, marker, killed_dir, resumed = inside_saves[hook]
    workdir = harness.path / f"inside_{hook}"
    checkpoints = killed_dir / "checkpoints"  # as the kill left them
    assert "Traceback" not in proc.stderr, proc.tail()
    stopped = json.loads(marker.read_text())
    assert (stopped["hook"], stopped["step"], stopped["pid"]) == (hook, KILL_STEP, proc.pid)
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
    assert listed_steps(killed_dir) == expected
    assert [n for n in names if n.isdigit()] == sorted(str(s) for s in expected)
    assert_complete_and_exact(killed_dir, reference_dir, expected)
    assert rows_up_to(killed_dir, latest) == rows_up_to(reference_dir, latest)
    assert max(r["step"] for r in metric_rows(killed_dir)) == KILL_STEP

    compare_finished(resumed, workdir, reference_dir, latest)
    if hook == "delete":
        assert not (workdir / "checkpoints" / TRASH).exists()
    assert "Traceback" not in resumed.stderr, resumed.tail()


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
    if first_step(proc) is None:
        return "start-up (import, compile, restore, step-0 evaluation)"
    return "training"


@pytest.mark.slow
def test_twenty_random_kills_end_bit_exact(harness, reference):
    """One run, killed NUM_KILLS times and then finished: the same final state and metrics as the
    uninterrupted run, and after each kill every listed checkpoint complete and the reference's.

    Each process is killed after it has printed its first training step (so the kill lands in training
    or saving, not in start-up), after a delay drawn uniformly (seeded) from [0, W). W is the time of
    the work still ahead of it up to the last step (its first save and step, then a step and a save
    each), shortened to 2/k of it when k kills are left, but never below its first save and two steps,
    so that the kills spread over the whole run. The times are medians of what the killed processes
    showed so far, between their first and second step lines and between later ones, each list seeded
    with the reference's: the pace of the machine as it is now. So that no process can finish before
    its kill, the killed ones run kill_save_script.py's ``hold`` on the last step: a kill that lands
    later than that finds it waiting before the last save."""
    reference_dir, first_gap, step_s = reference
    rng = random.Random(20)
    workdir = harness.path / "random_kills"
    checkpoints = workdir / "checkpoints"
    latest: int | None = None  # the newest complete checkpoint: where the next process must resume
    report = []
    gaps: tuple[list, list] = ([first_gap], [step_s])  # seconds from step line 1 to 2, and between later ones
    began = time.monotonic()
    for attempt in range(NUM_KILLS):
        marker = harness.path / f"random_{attempt}.marker"
        before = _unfinished(checkpoints)
        proc = harness.start(f"random_{attempt}", workdir, hook=("hold", NUM_STEPS, marker), max_to_keep=MAX_TO_KEEP)
        first = wait_for_first_step(proc)
        seen = lines_at = time.monotonic()
        assert first == (latest or 0) + 1, (first, latest, proc.tail())
        first_s, pace = statistics.median(gaps[0]), statistics.median(gaps[1])
        ahead = 0.0 if first == NUM_STEPS else first_s + (NUM_STEPS - first - 1) * pace  # up to the hold
        window = min(ahead, max(first_s + pace, ahead * 2.0 / (NUM_KILLS - attempt)))
        delay = rng.uniform(0.0, window)
        lines = 1
        while time.monotonic() - seen < delay:
            if proc.poll() is not None:
                pytest.fail(f"{proc.name} exited ({proc.returncode}) before its kill:\n{proc.tail()}")
            time.sleep(min(0.005, max(0.0, delay - (time.monotonic() - seen))))
            now, count = time.monotonic(), len(STEP_LINE.findall(proc.stdout))
            if count > lines:
                if count == lines + 1:
                    gaps[lines > 1].append(now - lines_at)
                lines, lines_at = count, now
        proc.kill()
        assert proc.wait(TIMEOUT_S) == -signal.SIGKILL, f"{proc.name} ended by itself before the kill:\n{proc.tail()}"
        phase = _phase(proc, checkpoints, marker, before)
        assert "Traceback" not in proc.stderr, proc.tail()
        assert resumed_step(proc.stderr) == latest, (resumed_step(proc.stderr), latest)

        listed = listed_steps(workdir)
        assert [n for n in on_disk(checkpoints) if n.isdigit()] == sorted(str(s) for s in listed)
        # one more than MAX_TO_KEEP when the kill fell between a save's commit and its deletion of the
        # oldest checkpoint: the next save removes it (compare_finished checks exactly MAX_TO_KEEP at the end)
        assert len(listed) <= MAX_TO_KEEP + 1 and (not listed or listed == list(range(listed[0], listed[-1] + 1)))
        if len(listed) > MAX_TO_KEEP:
            phase = "between a commit and its deletion"
        assert (max(listed) if listed else 0) >= (latest or 0), "a complete checkpoint was lost"
        assert_complete_and_exact(workdir, reference_dir, listed)
        new_latest = max(listed) if listed else None
        if new_latest is not None:
            assert rows_up_to(workdir, new_latest) == rows_up_to(reference_dir, new_latest)
        report.append((attempt, first, round(delay, 3), round(window, 2), lines, phase, new_latest))
        latest = new_latest

    killed_s = time.monotonic() - began
    compare_finished(finish(harness, workdir, "random_final"), workdir, reference_dir, latest)
    print(f"\n{NUM_KILLS} kills in {killed_s:.0f} s, then finished in {time.monotonic() - began - killed_s:.0f} s; "
          f"step lines 1 to 2: {first_gap:.3f} s in the reference, {statistics.median(gaps[0]):.3f} s with the "
          f"killed processes; later: {step_s:.3f} s, {statistics.median(gaps[1]):.3f} s")
    print("attempt, first step printed, kill s after it, window s, step lines seen, phase, newest complete step after:")
    for row in report:
        print("  ", row)
    phases = {p: sum(r[5] == p for r in report) for p in dict.fromkeys(r[5] for r in report)}
    print("kills by phase:", phases)
    assert len(report) == NUM_KILLS
    assert not [r for r in report if r[5].startswith("start-up")], report  # every kill after the first step
