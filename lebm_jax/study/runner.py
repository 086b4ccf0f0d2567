"""The study runner: the grid's training runs in one workdir, one after another, resumable, then the report.

What it writes is laid out in `lebm_jax.study.layout`; which runs there are, in `lebm_jax.study.grid`.
Starting the study again skips finished runs (done.json) and resumes an interrupted one from its latest
checkpoint, so a study can be stopped at any time without losing finished work.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import os
import platform
import time
from typing import Callable

import jax
import ml_collections

from lebm_jax.core.devices import host_value
from lebm_jax.data.files import cache_dir, read_json, write_json
from lebm_jax.study.grid import RunSpec, run_config, validate
from lebm_jax.study.layout import (DONE_FILE, EVALUATION_CACHE_DIR, METRICS_FILE, REPORT_DIR, RUNS_DIR,
                                   STUDY_FILE, run_directory)
from lebm_jax.study.report import make_report
from lebm_jax.training.loop import train_and_evaluate
from lebm_jax.training.writers import read_jsonl


def is_done(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, DONE_FILE))


def machine() -> dict:
    devices = jax.devices()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "devices": f"{len(devices)} × {devices[0].device_kind}",
        "jax": jax.__version__,
    }


def _bar(fraction: float, width: int = 30) -> str:
    filled = int(round(width * min(max(fraction, 0.0), 1.0)))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """The study's progress bar: the finished share of the grid's expected time, with an ETA.

    A run is expected to take as long per step as the fastest finished run of its group this session, else
    of its variant (the fastest, because a group's first run also pays its compilations and the study's
    one-off set-up). A ti run with no ti run finished yet is extrapolated from a vanilla run: the time outside
    the training steps as it was, the training steps' time (time/train_seconds) times (1 + N)/2 (the ladder's
    chains are N-fold, the prior chain is not); without a logged training time, the whole run times
    (1 + N)/2. Until some run has finished the ETA is unknown.
    """

    def __init__(self, grid: list[RunSpec], steps: dict[str, int]):
        self.grid, self.steps = grid, steps
        self.seconds: dict[str, float] = {}  # runs finished this session: name -> wall seconds
        self.train_seconds: dict[str, float] = {}  # the same runs' seconds in training steps, where logged
        self.start = time.time()

    def finished(self, name: str, seconds: float, train_seconds: float | None = None) -> None:
        self.seconds[name] = seconds
        if train_seconds is not None:
            self.train_seconds[name] = min(train_seconds, seconds)

    def _fastest(self, runs: list[RunSpec]) -> RunSpec | None:
        done = [r for r in runs if r.name in self.seconds]
        return min(done, key=lambda r: self.seconds[r.name] / self.steps[r.name], default=None)

    def expected(self, spec: RunSpec) -> float | None:
        for same in (lambda r: r.group == spec.group, lambda r: r.variant == spec.variant):
            run = self._fastest([r for r in self.grid if same(r)])
            if run is not None:
                return self.seconds[run.name] / self.steps[run.name] * self.steps[spec.name]
        run = self._fastest([r for r in self.grid if r.variant == "vanilla"])
        if run is None or spec.variant != "ti":
            return None
        factor = (1 + spec.num_temps) / 2
        train = self.train_seconds.get(run.name, self.seconds[run.name])
        return (self.seconds[run.name] - train + train * factor) / self.steps[run.name] * self.steps[spec.name]

    def line(self, done: set[str], current: RunSpec | None) -> str:
        expected = {s.name: self.expected(s) for s in self.grid}
        known = [v for v in expected.values() if v is not None]
        typical = sum(known) / len(known) if known else 1.0
        cost = {n: (v if v is not None else typical) for n, v in expected.items()}
        total = sum(cost.values())
        left = sum(c for n, c in cost.items() if n not in done)
        fraction = 1.0 - left / total if total else 1.0
        eta = _format_seconds(left) if self.seconds else "?"
        where = f"  now {current.name}" if current is not None else ""
        return (f"study {_bar(fraction)} {100 * fraction:3.0f}%  {len(done)}/{len(self.grid)} runs  "
                f"elapsed {_format_seconds(time.time() - self.start)}  ETA {eta}{where}")


def run_study(
    study: ml_collections.ConfigDict,
    workdir: str,
    *,
    report: bool = True,
    train_fn: Callable | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Runs every unfinished run of the grid in ``workdir``, then writes the report.

    ``train_fn(config, run_dir)`` defaults to `lebm_jax.training.loop.train_and_evaluate` with the study's
    evaluation cache (<workdir>/evaluation_cache/: runs that start from the same parameters, the variants
    of one seed, share the held-out log-likelihood protocol's step-0 sweep). Returns the study record (also
    written to <workdir>/study.json).
    """
    grid = validate(study)
    workdir = os.path.abspath(workdir)
    os.makedirs(os.path.join(workdir, RUNS_DIR), exist_ok=True)
    if train_fn is None:
        train_fn = functools.partial(train_and_evaluate,
                                     evaluation_cache=os.path.join(workdir, EVALUATION_CACHE_DIR))
    if study.compile_cache:
        _enable_compile_cache()

    record_path = os.path.join(workdir, STUDY_FILE)
    previous = read_json(record_path) if os.path.isfile(record_path) else {}
    if previous.get("runs") and [r["name"] for r in previous["runs"]] != [s.name for s in grid]:
        logging.warning("the grid differs from the one recorded in %s; runs already there are kept", record_path)
    record = {
        "name": study.name,
        "runs": [dataclasses.asdict(s) for s in grid],
        "machine": machine(),
        "wall_seconds": float(previous.get("wall_seconds", 0.0)),
        "study_config": json.loads(study.to_json()),
    }
    write_json(record_path, record)

    steps = {s.name: int(run_config(study, s).num_steps) for s in grid}
    progress = Progress(grid, steps)
    done = {s.name for s in grid if is_done(run_directory(workdir, s.name))}
    if done:
        log(f"study: {len(done)} of {len(grid)} runs already finished; they are kept")
    session_start = time.time()
    for spec in grid:
        if spec.name in done:
            continue
        log(progress.line(done, spec))
        directory = run_directory(workdir, spec.name)
        t = time.time()
        result = train_fn(run_config(study, spec), directory)
        seconds = time.time() - t
        final_step = int(_final_step(result, steps[spec.name]))
        write_json(os.path.join(directory, DONE_FILE), {
            "wall_seconds": seconds,  # of the attempt that finished it (a resumed run: its last part)
            "final_step": final_step,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        })
        progress.finished(spec.name, seconds, _train_seconds(directory))
        done.add(spec.name)
        record["wall_seconds"] = float(previous.get("wall_seconds", 0.0)) + time.time() - session_start
        write_json(record_path, record)
    log(progress.line(done, None))
    if report:
        paths = make_report(workdir)
        log(f"report: {paths.get('report', os.path.join(workdir, REPORT_DIR))}")
    return record


def _train_seconds(directory: str) -> float | None:
    """The last time/train_seconds a run logged (its seconds in training steps), None when it logged none."""
    path = os.path.join(directory, METRICS_FILE)
    if not os.path.isfile(path):
        return None
    values = [row["time/train_seconds"] for row in read_jsonl(path)
              if isinstance(row.get("time/train_seconds"), (int, float))]
    return float(values[-1]) if values else None


def _final_step(result, default: int) -> int:
    state = getattr(result, "state", None)
    if state is None:
        return default
    return int(host_value(state.step))


def _enable_compile_cache() -> None:
    """XLA's persistent compilation cache in cache_dir("xla"): runs whose programs coincide (the seeds of
    one group) compile once, in this process and the next."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir("xla")))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
