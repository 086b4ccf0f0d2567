"""Resuming training from checkpoints, through the command-line entry point in fresh processes.

Every run here is ``python -m experiments.train`` in a subprocess (its own session, so a hang or a
failure kills the whole process group), on a tiny model and a small random .npz data set (blobs on
noise, tests/harness.py):

- a run split over two processes ends with exactly the state of an uninterrupted run, and its
  metrics.jsonl holds each (step, metric) once;
- a run SIGKILLed again and again (at seeded random moments, once while a checkpoint is being written)
  always restarts from a complete checkpoint and ends with exactly the uninterrupted state;
- a checkpoint that does not fit the config, or a corrupt one, stops the run with a message naming
  the problem, and leaves every checkpoint file as it was;
- two processes joined by ``jax.distributed.initialize`` (gloo collectives on CPU) reach the
  single-process parameters.

The subprocesses share a persistent XLA compilation cache (in pytest's cache folder) so the tiny
model is compiled once, not once per process; a cached executable is the same program as a fresh
compilation, so this does not weaken the checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lebm_jax.training.checkpoint import Checkpointer

import tiny
from harness import subprocess_env, write_blob_npz

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180  # per subprocess: generous for a busy 2-core machine; a hang fails instead of blocking
NUM_STEPS = 48  # length of the reference run (and of the run that is killed)
TMP_MARK = ".orbax-checkpoint-tmp"  # orbax's suffix for a checkpoint directory still being written

# Tiny settings (tests/tiny.py; every run sets num_steps): 48 training images and batches of 8 make
# 6 steps an epoch, so the runs cross epoch boundaries (new permutation, learning-rate decay) several times.
TINY = {
    **tiny.TINY,
    "data.name": "npz",
    "data.test_fraction": 0.25,
    "ti.num_temps": 10,  # configs/digits.py's ladder (these vanilla runs never build it)
    "sample_every": 1000,
    "max_to_keep": 100,
}


# ---------------------------------------------------------------------------------------------------
# Running the entry point


class Proc:
    """One ``experiments.train`` process; its stdout and stderr go to files next to its workdir."""

    def __init__(self, name: str, workdir: Path, settings: dict, env: dict, logs: Path, flags=()):
        self.name = name
        self.out_path, self.err_path = logs / f"{name}.out", logs / f"{name}.err"
        args = [sys.executable, "-m", "experiments.train", "--config", str(REPO / "configs" / "digits.py"),
                "--workdir", str(workdir), *(f"--config.{k}={v}" for k, v in settings.items()), *flags]
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.popen = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=err, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL to the process group (the process leads its own session)."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.popen.wait()
            pytest.fail(f"{self.name} did not finish within {timeout} s; its log:\n{self.tail()}")

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def tail(self, n: int = 40) -> str:
        lines = (self.stdout + self.stderr).splitlines()
        return "\n".join(lines[-n:])


@pytest.fixture(scope="module")
def harness(tmp_path_factory, request):
    """A data set, a shared compilation cache, a log folder, and a way to start runs."""
    root = tmp_path_factory.mktemp("resume")
    write_blob_npz(root / "data.npz")
    (root / "logs").mkdir()
    env = subprocess_env(request, root)
    procs: list[Proc] = []

    class Harness:
        path = root
        settings = {**TINY, "data.path": str(root / "data.npz")}

        @staticmethod
        def start(name, workdir, flags=(), **changes) -> Proc:
            settings = {**Harness.settings, **{k.replace("__", "."): v for k, v in changes.items()}}
            proc = Proc(name, workdir, settings, env, root / "logs", flags)
            procs.append(proc)
            return proc

        @staticmethod
        def run(name, workdir, flags=(), **changes) -> Proc:
            proc = Harness.start(name, workdir, flags, **changes)
            proc.wait()
            return proc

    yield Harness
    for proc in procs:  # nothing outlives the module, whatever happened
        if proc.popen.poll() is None:
            proc.kill()
            proc.popen.wait()


@pytest.fixture(scope="module")
def reference(harness) -> Path:
    """An uninterrupted run of NUM_STEPS steps with a checkpoint after every step (all kept)."""
    workdir = harness.path / "reference"
    proc = harness.run("reference", workdir, num_steps=NUM_STEPS)
    assert proc.popen.returncode == 0, proc.tail()
    assert f"done: step {NUM_STEPS}" in proc.stdout
    assert "resumed from" not in proc.stderr
    return workdir


# ---------------------------------------------------------------------------------------------------
# Reading what the runs left


def load_state(workdir: Path, step: int) -> dict:
    """The train state saved at ``step`` as a tree of numpy arrays (read with orbax, no target)."""
    path = workdir / "checkpoints" / str(step) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


def assert_states_equal(actual: dict, expected: dict, rtol: float = 0.0) -> None:
    """Bit for bit (rtol 0), or within rtol of each array's largest magnitude."""
    a, b = jax.tree_util.tree_flatten_with_path(actual), jax.tree_util.tree_flatten_with_path(expected)
    assert [p for p, _ in a[0]] == [p for p, _ in b[0]], "the two states have different structures"
    for (path, x), (_, y) in zip(a[0], b[0]):
        name = jax.tree_util.keystr(path)
        if rtol == 0.0:
            np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * float(np.max(np.abs(y), initial=0.0)),
                                       err_msg=name)


def metric_rows(workdir: Path) -> list[dict]:
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def assert_each_metric_logged_once(rows: list[dict]) -> None:
    seen: dict[tuple, int] = {}
    for row in rows:
        for name in row:
            if name != "step":
                seen[(row["step"], name)] = seen.get((row["step"], name), 0) + 1
    repeated = sorted(k for k, n in seen.items() if n > 1)
    assert not repeated, f"metrics.jsonl repeats (step, metric): {repeated[:10]}"


def training_rows(rows: list[dict], last: int) -> dict[int, dict]:
    """{step: training metrics} for steps <= last, the wall-clock rate and times left out."""
    return {r["step"]: {k: v for k, v in r.items() if k != "steps_per_sec" and not k.startswith("time/")}
            for r in rows if "loss_ebm" in r and r["step"] <= last}


def resumed_step(stderr: str) -> int | None:
    found = re.findall(r"resumed from \S+ at step (\d+)", stderr)
    assert len(found) <= 1, found
    return int(found[0]) if found else None


def final_error(stderr: str) -> str:
    """The exception the process ended with: from its last 'SomeError: ...' (or 'error: ...') line to the end."""
    lines = stderr.splitlines()
    # orbax's pending reads can print "Exception ignored ... ImportError: ... Python is likely shutting
    # down" after the real error; those are interpreter-exit noise, not the process's error
    # (experiments/_cli.py prints an expected error as one line "error: ...")
    starts = [i for i, line in enumerate(lines)
              if re.match(r"([\w.]*(Error|Exception)|error): ", line) and "likely shutting down" not in line]
    return "\n".join(lines[starts[-1]:]) if starts else ""


def snapshot(directory: Path) -> dict[str, str]:
    """{relative path: sha256} of every file below ``directory`` (directories as '<dir>')."""
    out = {}
    for path in sorted(directory.rglob("*")):
        rel = str(path.relative_to(directory))
        out[rel] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def copy_run(source: Path, target: Path, last_step: int) -> None:
    """A workdir holding ``source``'s checkpoints up to ``last_step`` (as if it had stopped there)."""
    shutil.copytree(source / "checkpoints", target / "checkpoints",
                    ignore=lambda d, names: [n for n in names if Path(d) == source / "checkpoints"
                                             and n.isdigit() and int(n) > last_step])


# ---------------------------------------------------------------------------------------------------
# 1. Resume is exact


def test_resume_in_a_fresh_process_is_exact(harness, reference):
    total, half = 8, 4
    workdir = harness.path / "split"
    first = harness.run("split_first", workdir, num_steps=half)
    assert first.popen.returncode == 0, first.tail()
    assert resumed_step(first.stderr) is None
    second = harness.run("split_second", workdir, num_steps=total)
    assert second.popen.returncode == 0, second.tail()
    assert resumed_step(second.stderr) == half, second.tail()
    assert f"done: step {total}" in second.stdout

    # params, both Adam states (counts, moments), step counter: bit for bit
    assert_states_equal(load_state(workdir, total), load_state(reference, total))

    rows = metric_rows(workdir)
    assert_each_metric_logged_once(rows)
    train = training_rows(rows, total)
    assert sorted(train) == list(range(1, total + 1))
    assert train == training_rows(metric_rows(reference), total)  # same losses, norms and rates every step
    heldout = sorted(r["step"] for r in rows if "heldout/recon_mse" in r)
    assert heldout == [0, half, total]  # a run evaluates at its start and at its last step


# ---------------------------------------------------------------------------------------------------
# 2. SIGKILL at random moments


def _finalized_steps(checkpoints: Path) -> set[int]:
    try:
        return {int(n) for n in os.listdir(checkpoints) if n.isdigit()}
    except FileNotFoundError:
        return set()


def _writing(checkpoints: Path, after: int) -> list[str]:
    """Temporary (unfinished) checkpoint directories of steps after ``after``."""
    try:
        names = os.listdir(checkpoints)
    except FileNotFoundError:
        return []
    return [n for n in names if TMP_MARK in n and int(n.split(".")[0]) > after]


def _poll(condition, proc: Proc, interval: float, what: str):
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc.popen.poll() is not None:
            pytest.fail(f"{proc.name} exited ({proc.popen.returncode}) before {what}:\n{proc.tail()}")
        time.sleep(interval)
    proc.kill()
    pytest.fail(f"{proc.name}: no {what} within {TIMEOUT_S} s:\n{proc.tail()}")


def test_sigkill_at_random_moments_resumes_exactly(harness, reference):
    rng = random.Random(1234)
    workdir = harness.path / "killed"
    checkpoints = workdir / "checkpoints"
    max_to_keep = 3  # old checkpoints are deleted as the run goes, so kills can land in deletions too
    latest = None  # the newest complete checkpoint: where the next start must resume
    plan = ["random", "write", "startup", "random"]
    killed_mid_write = 0
    report = []
    attempt = 0
    while attempt < len(plan) or not killed_mid_write:
        assert attempt < 8, f"no kill landed inside a checkpoint write: {report}"
        mode = plan[attempt] if attempt < len(plan) else "write"
        proc = harness.start(f"killed_{attempt}", workdir, num_steps=NUM_STEPS, max_to_keep=max_to_keep)
        start = time.monotonic()
        base = latest or 0
        if mode == "startup":  # anywhere from import to the first steps
            time.sleep(rng.uniform(0.5, 6.0))
        elif mode == "random":  # once training is under way, a random time later
            _poll(lambda: max(_finalized_steps(checkpoints), default=0) > base, proc, 0.01, "a new checkpoint")
            time.sleep(rng.uniform(0.1, 1.5))
        else:  # the moment a checkpoint directory is being written
            # coarse polling through start-up (the loop prints each step just before saving it), then fine
            _poll(lambda: re.search(r"^step \d+/", proc.stdout, re.M), proc, 0.02, "a training step")
            _poll(lambda: _writing(checkpoints, base), proc, 0.0005, "a checkpoint being written")
        proc.kill()
        rc = proc.wait()
        moment = time.monotonic() - start
        assert rc == -signal.SIGKILL, f"{proc.name} ended by itself (rc {rc}) before the kill:\n{proc.tail()}"
        assert resumed_step(proc.stderr) in (latest, None), (
            f"{proc.name} resumed from {resumed_step(proc.stderr)}, the newest complete checkpoint was {latest}")
        assert "Traceback" not in proc.stderr, proc.tail()

        left_writing = _writing(checkpoints, 0)
        killed_mid_write += bool(left_writing)
        on_disk = _finalized_steps(checkpoints)
        checkpointer = Checkpointer(str(workdir), max_to_keep)
        try:
            listed = checkpointer.all_steps()
        finally:
            checkpointer.close()
        assert set(listed) == on_disk, (listed, sorted(on_disk))
        assert not {int(n.split(".")[0]) for n in left_writing} & set(listed)
        for step in listed:  # every listed step is complete: its state and config both read back
            try:
                state = load_state(workdir, step)
            except Exception as e:  # noqa: BLE001
                pytest.fail(f"after {proc.name} ({mode}), step {step} is listed but cannot be read: {e!r}; "
                            f"{sorted(str(p.relative_to(checkpoints)) for p in (checkpoints / str(step)).rglob('*'))}")
            assert int(state["step"]) == step
            assert json.loads((checkpoints / str(step) / "config" / "metadata").read_text())["num_steps"] == NUM_STEPS
        report.append((mode, resumed_step(proc.stderr), round(moment, 2), max(listed, default=None), left_writing))
        latest = max(listed) if listed else None
        attempt += 1

    final = harness.run("killed_final", workdir, num_steps=NUM_STEPS, max_to_keep=max_to_keep)
    assert final.popen.returncode == 0, final.tail()
    assert resumed_step(final.stderr) == latest, (resumed_step(final.stderr), latest)
    assert f"done: step {NUM_STEPS}" in final.stdout
    print("kills (mode, resumed from, seconds after start, newest complete step after, unfinished dirs):", report)

    assert_states_equal(load_state(workdir, NUM_STEPS), load_state(reference, NUM_STEPS))
    rows = metric_rows(workdir)
    assert_each_metric_logged_once(rows)
    assert training_rows(rows, NUM_STEPS) == training_rows(metric_rows(reference), NUM_STEPS)
    checkpointer = Checkpointer(str(workdir), max_to_keep)
    try:
        assert checkpointer.all_steps() == list(range(NUM_STEPS - max_to_keep + 1, NUM_STEPS + 1))
    finally:
        checkpointer.close()
    assert sorted(os.listdir(checkpoints)) == [str(s) for s in range(NUM_STEPS - max_to_keep + 1, NUM_STEPS + 1)]


# ---------------------------------------------------------------------------------------------------
# 3. Checkpoints that cannot be used


def _largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _garble(path: Path) -> None:
    """Flips every bit of 64 bytes in the middle: the file keeps its size."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        chunk = f.read(64)
        f.seek(size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))


@pytest.fixture(scope="module")
def refused(harness, reference) -> dict:
    """Three restarts that must refuse their checkpoint, run side by side (each is mostly start-up):
    {case: (process, damaged step dir, snapshot of checkpoints/ before)}."""
    cases = {}
    # two steps trained with model.ngf=4, restarted with model.ngf=8
    workdir = harness.path / "ngf"
    copy_run(reference, workdir, last_step=2)
    cases["ngf"] = (workdir, workdir / "checkpoints" / "2", {"num_steps": 4, "model__ngf": 8})
    for damage in (_truncate, _garble):  # the array data of the newest of three checkpoints damaged
        workdir = harness.path / f"corrupt{damage.__name__}"
        copy_run(reference, workdir, last_step=3)
        damage(_largest_file(workdir / "checkpoints" / "3" / "state"))
        cases[damage.__name__.strip("_")] = (workdir, workdir / "checkpoints" / "3", {"num_steps": 5})
    before = {name: snapshot(workdir / "checkpoints") for name, (workdir, _, _) in cases.items()}
    procs = {name: harness.start(f"refused_{name}", workdir, **changes)
             for name, (workdir, _, changes) in cases.items()}
    for proc in procs.values():
        proc.wait()
    return {name: (procs[name], cases[name][1], before[name]) for name in cases}


def test_checkpoint_of_another_shape_is_refused_and_kept(refused):
    proc, step_dir, before = refused["ngf"]
    assert proc.popen.returncode != 0, f"a checkpoint of model.ngf=4 was used with model.ngf=8:\n{proc.tail()}"
    error = final_error(proc.stderr)
    assert "model.ngf" in error, proc.tail()
    named = error.split("model.ngf", 1)[1].splitlines()[0]  # the values follow the field's name
    assert re.search(r"\b4\b", named) and re.search(r"\b8\b", named), error
    assert snapshot(step_dir.parent) == before  # same files, same bytes, nothing added


@pytest.mark.parametrize("case", ["truncate", "garble"])
def test_corrupt_checkpoint_is_reported_and_kept(refused, case):
    proc, step_dir, before = refused[case]
    assert proc.popen.returncode != 0, f"a damaged checkpoint was restored:\n{proc.tail()}"
    error = final_error(proc.stderr).split("\n", 1)[0]  # one line says it all
    assert str(step_dir) in error, f"the error does not name {step_dir}:\n{proc.tail()}"
    assert re.search(r"untouched|not deleted|nothing (was|is) deleted|left in place", error), error
    assert snapshot(step_dir.parent) == before


# ---------------------------------------------------------------------------------------------------
# 4. Two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(harness, reference):
    steps = 4
    workdir = harness.path / "two_processes"
    port = _free_port()
    procs = [
        harness.start(f"process_{i}", workdir, num_steps=steps,
                      flags=("--distributed", f"--coordinator=localhost:{port}", "--num_processes=2",
                             f"--process_id={i}"))
        for i in range(2)
    ]
    try:
        codes = [p.wait() for p in procs]
    finally:
        for p in procs:
            if p.popen.poll() is None:
                p.kill()
    assert codes == [0, 0], "\n\n".join(p.tail() for p in procs)
    assert "process 0 of 2" in procs[0].stderr and "process 1 of 2" in procs[1].stderr
    assert f"done: step {steps}" in procs[0].stdout
    # both processes wrote their share of the checkpoint into the one directory
    state_dir = workdir / "checkpoints" / str(steps) / "state"
    assert (state_dir / "ocdbt.process_0").is_dir() and (state_dir / "ocdbt.process_1").is_dir()
    two, one = load_state(workdir, steps), load_state(reference, steps)
    # Adam's first moment is a running mean of the gradients: it shows their scale, which the
    # parameters hide (Adam's update is nearly invariant to it)
    def first_moments(state):
        return np.concatenate([np.ravel(m) for o in state["opt_state"].values() for m in jax.tree.leaves(o[0]["mu"])])
    ratio = np.linalg.norm(first_moments(two)) / np.linalg.norm(first_moments(one))
    assert abs(ratio - 1.0) < 1e-4, (
        f"Adam's first moments of the two-process run are {ratio:.5f} times those of one process: the "
        "gradient is not the mean over the global batch (summed over devices instead of averaged?)")
    # the mean over 2 devices of 4-example means is not bit-identical to one 8-example mean
    assert_states_equal(two, one, rtol=1e-5)
