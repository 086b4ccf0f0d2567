"""Expected user errors at the command line (experiments/*.py through experiments/_cli.py): one line on stderr,
``error: ...``, naming the path, field or value and what to do; a non-zero exit; no traceback (unless
--traceback); nothing created or changed on disk. Ctrl-C: one line, exit status 130.

Every case runs an entry point in a process of its own and fails before training. Most are forked from
tests/harness.py's server, which imported jax, orbax, TensorFlow and the library once: each child runs
``-m experiments.<entry>`` as ``__main__`` with its own stdout and stderr (one file), as ``python -m``
does, and exits with the interpreter's status. Two cases (an unknown config field, a checkpoint that
cannot be read) also run as plain subprocesses, to check the exit status and the one line through the
interpreter's own start-up and shutdown (no exit-time noise after the error), and that the forked run
gives the same status and line; Ctrl-C runs as a plain subprocess.
"""

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import ForkServer, spawn

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
# log lines of absl (I1202 12:00:00.0 ...), of TensorFlow's C++ start-up, and interpreter-exit noise
NOISE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages|Exception ignored|.*likely shutting down)")
# what the entry points import before they fail, imported once by the fork server (no jax backend)
PRELOAD = ["jax", "orbax.checkpoint", "lebm_jax.training.loop", "lebm_jax.training.offline", "lebm_jax.api",
           "lebm_jax.study.runner", "experiments._cli"]
PLAIN = ("unknown_field", "corrupt_checkpoint")  # run both ways


def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def start(args: list[str], log: Path, **kwargs) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env(), stdout=out,
                                stderr=subprocess.STDOUT, **kwargs)


def run_all(commands: dict[str, list[str]], logs: Path) -> dict[str, tuple[int, str]]:
    """{name: (exit status, output)} of each command forked from a fork server, and of the PLAIN ones
    also as plain subprocesses ({name + "@plain": ...}), all side by side."""
    logs.mkdir(exist_ok=True)
    procs = {f"{name}@plain": spawn(name, ["-m", *commands[name]], env(), logs / f"{name}@plain.log")
             for name in PLAIN}
    server = ForkServer(env(), PRELOAD, logs / "server.log")
    try:
        for name, args in commands.items():
            procs[name] = server.start(name, ["-m", *args], logs / f"{name}.log", timeout=TIMEOUT_S)
        return {name: (proc.wait(TIMEOUT_S), proc.output) for name, proc in procs.items()}
    finally:
        server.close()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()


def error_line(rc: int, output: str, *phrases: str) -> str:
    """The one error line of a failed run, after checking the contract; the phrases must all be on it."""
    assert rc not in (0, None), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.strip() and not NOISE.match(line)]
    assert lines and lines[-1].startswith("error: "), output[-3000:]
    assert len(lines) <= 2, lines  # the error, and at most one line printed before it
    assert sum(line.startswith("error:") for line in lines) == 1, lines
    for phrase in phrases:
        assert phrase in lines[-1], (phrase, lines[-1])
    return lines[-1]


def snapshot(path: Path) -> dict[str, str]:
    """{relative path: sha256} of every file at or below ``path`` (directories as '<dir>')."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*"))}


TRAIN = ["experiments.train", "--config", "configs/digits.py", "--config.num_steps=1"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Every failing command run once (PLAIN ones twice), side by side: {name: (exit status, output)},
    the paths they were given, and snapshots of those paths before and after."""
    root = tmp_path_factory.mktemp("cli")
    paths = {
        "file": root / "a_file.txt",  # a file given as a workdir, or as a folder above one
        "new": root / "new_workdir",  # a workdir that a refused command must not create
        "empty": root / "empty",  # a directory without checkpoints
        "corrupt": root / "corrupt",  # a workdir whose only checkpoint cannot be read
    }
    paths["file"].write_bytes(b"not a directory\n")
    paths["empty"].mkdir()
    metadata = paths["corrupt"] / "checkpoints" / "3" / "config" / "metadata"
    metadata.parent.mkdir(parents=True)
    metadata.write_text("{not json")
    before = {name: snapshot(p) for name, p in paths.items() if p.exists()}
    new = f"--workdir={paths['new']}"
    commands = {
        "unknown_field": [*TRAIN, new, "--config.modle.ngf=3"],
        "unknown_field_traceback": [*TRAIN, new, "--config.modle.ngf=3", "--traceback"],
        "bad_value": [*TRAIN, new, "--config.model.latent_dim=0"],
        "workdir_is_file": [*TRAIN, f"--workdir={paths['file']}"],
        "workdir_is_file_traceback": [*TRAIN, f"--workdir={paths['file']}", "--traceback"],
        "study_workdir_under_file": ["experiments.study", "--config", "configs/study_digits.py",
                                     f"--workdir={paths['file']}/sub"],
        "missing_data": [*TRAIN, new, "--config.data.name=npz", f"--config.data.path={root / 'missing.npz'}"],
        "corrupt_checkpoint": [*TRAIN, f"--workdir={paths['corrupt']}"],
        "sample_num": ["experiments.sample", f"--workdir={paths['empty']}", "--num=-1"],
        "sample_no_checkpoints": ["experiments.sample", f"--workdir={paths['empty']}"],
        "evaluate_missing_workdir": ["experiments.evaluate", f"--workdir={paths['new']}"],
    }
    results = run_all(commands, root / "logs")
    after = {name: snapshot(p) for name, p in paths.items() if p.exists()}
    return results, paths, before, after


def test_plain_and_forked_runs_fail_alike(cases):
    """A plain ``python -m`` process and a child of the fork server: the same exit status and error line."""
    results = cases[0]
    for name in PLAIN:
        (rc, output), (plain_rc, plain_output) = results[name], results[f"{name}@plain"]
        assert rc == plain_rc, (name, rc, plain_rc)
        assert error_line(rc, output) == error_line(plain_rc, plain_output), name


def test_unknown_config_field_is_named_with_the_fields_there_are(cases):
    """An unknown --config.<field>: named, with the nearest field and the fields there are; exit status 2;
    with --traceback, the traceback."""
    results, paths, _, _ = cases
    line = error_line(*results["unknown_field"], "--config.modle.ngf=3", "unknown config field 'modle'",
                      'Did you mean "model"?', "fields of config are:", "batch_size")
    assert results["unknown_field"][0] == 2, line  # a command-line error
    rc, output = results["unknown_field_traceback"]
    assert rc != 0 and "Traceback" in output and "modle" in output


def test_invalid_config_value_is_named(cases):
    """A config value out of range: the field, its value and the rule it breaks."""
    error_line(*cases[0]["bad_value"], "config.model.latent_dim=0", "must be an int >= 1")


def test_a_workdir_that_is_a_file_or_under_one_is_refused_and_left_alone(cases):
    """A --workdir that is a file, or lies under one (train, study): refused, the file unchanged."""
    results, paths, before, after = cases
    file = str(paths["file"])
    error_line(*results["workdir_is_file"], f"--workdir={file}", "is a file", "must be a directory")
    error_line(*results["study_workdir_under_file"], f"--workdir={file}/sub", f"{file} is a file",
               "must be a directory")
    rc, output = results["workdir_is_file_traceback"]
    assert rc != 0 and "Traceback" in output and "UserError" in output
    assert after["file"] == before["file"]  # same bytes


def test_a_missing_data_set_is_named(cases):
    """A data.path that does not exist: the flag, the file and what is wrong."""
    error_line(*cases[0]["missing_data"], "data.path=", "missing.npz", "no such .npz file")


def test_a_checkpoint_that_cannot_be_read_is_named_and_kept(cases):
    """A checkpoint whose config cannot be read: named, and left byte for byte as it was."""
    results, paths, before, after = cases
    step = paths["corrupt"] / "checkpoints" / "3"
    error_line(*results["corrupt_checkpoint"], f"checkpoint {step}", "cannot be read", "left untouched")
    assert after["corrupt"] == before["corrupt"]


def test_sample_refuses_a_bad_count_and_a_workdir_without_checkpoints(cases):
    """sample: --num below 1 is a command-line error (status 2); a workdir without checkpoints is named
    and left as it was."""
    results, paths, before, after = cases
    line = error_line(*results["sample_num"], "--num=-1")
    assert results["sample_num"][0] == 2, line
    error_line(*results["sample_no_checkpoints"], f"{paths['empty']} has no checkpoints/ directory",
               "is it a training workdir?")
    assert after["empty"] == before["empty"]


def test_evaluate_refuses_a_missing_workdir(cases):
    """evaluate: a workdir that does not exist is named."""
    results, paths, _, _ = cases
    error_line(*results["evaluate_missing_workdir"], f"{paths['new']} has no checkpoints/ directory")


def test_refused_commands_create_no_workdir(cases):
    """No refused command created its --workdir (nor a folder under the file)."""
    _, paths, _, _ = cases
    assert not paths["new"].exists()
    assert not (paths["file"].parent / "a_file.txt" / "sub").exists()


def interrupt(proc: subprocess.Popen, log: Path, ready: str, delay: float = 0.0) -> tuple[int, float, list[str]]:
    """SIGINT to ``proc`` ``delay`` seconds after ``ready`` appears in its log: (exit status, seconds from
    the signal to the exit, the log's lines without NOISE), after checking that it printed no traceback."""
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while ready not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        time.sleep(delay)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(TIMEOUT_S)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert "Traceback" not in output, output[-3000:]
    return rc, took, [line for line in output.splitlines() if line.strip() and not NOISE.match(line)]


def test_ctrl_c_is_one_line_and_exit_status_130(tmp_path):
    """SIGINT once main() runs (a plain subprocess): exit status 130 and one line saying how to resume."""
    log = tmp_path / "train.log"
    proc = start([*TRAIN[:-1], "--config.num_steps=100000", f"--workdir={tmp_path / 'w'}"], log)
    rc, _, lines = interrupt(proc, log, "devices:", delay=1.0)  # logged in main(), after the imports
    assert rc == 130, lines[-10:]
    assert lines[-1].startswith("interrupted (Ctrl-C); run the same command again to resume"), lines[-3:]


SWALLOWING_MAIN = """
import sys, time
from experiments import _cli
_cli.REDELIVER_S = 0.5

def main(argv):
    print("ready", flush=True)
    try:
        time.sleep(120)
    except KeyboardInterrupt:
        pass  # dropped, as native code that checks for signals and clears the error does
    print("swallowed", flush=True)
    while True:
        time.sleep(0.05)

_cli.run(main, on_interrupt="go on")
"""


def test_a_swallowed_ctrl_c_is_raised_again_and_still_ends_in_one_line(tmp_path):
    """A main() that drops the first KeyboardInterrupt and goes on: the interrupt is raised again
    REDELIVER_S later, and the process ends with status 130 and the one line, no traceback."""
    script, log = tmp_path / "swallow.py", tmp_path / "swallow.log"
    script.write_text(SWALLOWING_MAIN)
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=env(), stdout=out, stderr=subprocess.STDOUT)
    rc, took, lines = interrupt(proc, log, "ready")
    assert rc == 130, lines[-10:]
    assert lines[-2:] == ["swallowed", "interrupted (Ctrl-C); go on"], lines[-3:]
    assert took >= 0.5, took  # it was raised again, not the first one ending the process
