"""Expected user errors at the command line (experiments/*.py through experiments/_cli.py): one line on stderr,
``error: ...``, naming the path, field or value and what to do; a non-zero exit; no traceback (unless
--traceback); nothing created or changed on disk. Ctrl-C: one line, exit status 130.

Every case runs the entry point in a subprocess and fails before training; they run a few at a time.
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

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
# log lines of absl (I1202 12:00:00.0 ...), of TensorFlow's C++ start-up, and interpreter-exit noise
NOISE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages|Exception ignored|.*likely shutting down)")


def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def start(args: list[str], log: Path, **kwargs) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env(), stdout=out,
                                stderr=subprocess.STDOUT, **kwargs)


def run_all(commands: dict[str, list[str]], logs: Path, at_once: int = 4) -> dict[str, tuple[int, str]]:
    """{name: (exit status, output)} of each command, ``at_once`` at a time."""
    logs.mkdir(exist_ok=True)
    results, names = {}, list(commands)
    for i in range(0, len(names), at_once):
        procs = {n: start(commands[n], logs / f"{n}.log") for n in names[i:i + at_once]}
        for name, proc in procs.items():
            try:
                proc.wait(TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            results[name] = (proc.returncode, (logs / f"{name}.log").read_text())
    return results


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
    """Every failing command run once: {name: (exit status, output)}, plus the paths they were given."""
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


def test_unknown_config_field_is_named_with_the_fields_there_are(cases):
    results, paths, _, _ = cases
    line = error_line(*results["unknown_field"], "--config.modle.ngf=3", "unknown config field 'modle'",
                      'Did you mean "model"?', "fields of config are:", "batch_size")
    assert results["unknown_field"][0] == 2, line  # a command-line error
    rc, output = results["unknown_field_traceback"]
    assert rc != 0 and "Traceback" in output and "modle" in output


def test_invalid_config_value_is_named(cases):
    error_line(*cases[0]["bad_value"], "config.model.latent_dim=0", "must be an int >= 1")


def test_a_workdir_that_is_a_file_or_under_one_is_refused_and_left_alone(cases):
    results, paths, before, after = cases
    file = str(paths["file"])
    error_line(*results["workdir_is_file"], f"--workdir={file}", "is a file", "must be a directory")
    error_line(*results["study_workdir_under_file"], f"--workdir={file}/sub", f"{file} is a file",
               "must be a directory")
    rc, output = results["workdir_is_file_traceback"]
    assert rc != 0 and "Traceback" in output and "UserError" in output
    assert after["file"] == before["file"]  # same bytes


def test_a_missing_data_set_is_named(cases):
    error_line(*cases[0]["missing_data"], "data.path=", "missing.npz", "no such .npz file")


def test_a_checkpoint_that_cannot_be_read_is_named_and_kept(cases):
    results, paths, before, after = cases
    step = paths["corrupt"] / "checkpoints" / "3"
    error_line(*results["corrupt_checkpoint"], f"checkpoint {step}", "cannot be read", "left untouched")
    assert after["corrupt"] == before["corrupt"]


def test_sample_refuses_a_bad_count_and_a_workdir_without_checkpoints(cases):
    results, paths, before, after = cases
    line = error_line(*results["sample_num"], "--num=-1")
    assert results["sample_num"][0] == 2, line
    error_line(*results["sample_no_checkpoints"], f"{paths['empty']} has no checkpoints/ directory",
               "is it a training workdir?")
    assert after["empty"] == before["empty"]


def test_evaluate_refuses_a_missing_workdir(cases):
    results, paths, _, _ = cases
    error_line(*results["evaluate_missing_workdir"], f"{paths['new']} has no checkpoints/ directory")


def test_refused_commands_create_no_workdir(cases):
    _, paths, _, _ = cases
    assert not paths["new"].exists()
    assert not (paths["file"].parent / "a_file.txt" / "sub").exists()


def test_ctrl_c_is_one_line_and_exit_status_130(tmp_path):
    log = tmp_path / "train.log"
    proc = start([*TRAIN[:-1], "--config.num_steps=100000", f"--workdir={tmp_path / 'w'}"], log)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while "devices:" not in log.read_text():  # logged in main(), after the imports
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = log.read_text()
    assert rc == 130, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.strip() and not NOISE.match(line)]
    assert lines[-1].startswith("interrupted (Ctrl-C); run the same command again to resume"), lines[-3:]
