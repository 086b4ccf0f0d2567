"""The variance study: a grid of training runs in one workdir, run one after another, resumable.

The grid is ``vanilla`` at the base batch size and at each of ``batch_sizes`` (the study's other way to
change gradient variance), and ``ti`` for each schedule power p in ``powers`` (N = ``num_temps`` rungs,
t_i = (i/(N−1))^p), each times ``seeds``. Runs differ from ``study.train`` (a full training config) only
in those fields.

Layout of a study workdir (what `lebm_jax.report` reads):

    study.json              the grid, the machine, and the study's wall time so far
    runs/<name>/            one training workdir per run (config.json, metrics.jsonl, checkpoints/, samples/)
    runs/<name>/done.json   written when the run has finished: {"wall_seconds", "final_step", "finished"}
    report/                 figures, tables and report.md

Starting the study again skips finished runs (done.json) and resumes an interrupted one from its latest
checkpoint, so a study can be stopped at any time without losing finished work.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import platform
import time
from typing import Callable

import ml_collections

from lebm_jax.training import config as config_lib

STUDY_FILE = "study.json"
DONE_FILE = "done.json"


FULL_SCALE_POWERS = (0.1, 0.3, 1.0, 2.0, 3.0, 6.0, 10.0)
FULL_SCALE_SEEDS = (0, 1, 2, 3, 4)
FULL_SCALE_BATCH_SIZES = (25, 50, 200)  # vanilla, besides the training config's own batch size


def full_scale(name: str, train_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The study's own settings around a full training config: N = 10 rungs, p ∈ FULL_SCALE_POWERS,
    five seeds, vanilla also at FULL_SCALE_BATCH_SIZES; Inception FID every 5,000 steps."""
    c = ml_collections.ConfigDict()
    c.name = name
    train_config.eval.feature_space = "inception"
    c.train = train_config
    c.vanilla = True
    c.batch_sizes = FULL_SCALE_BATCH_SIZES
    c.powers = FULL_SCALE_POWERS
    c.num_temps = 10
    c.seeds = FULL_SCALE_SEEDS
    c.compile_cache = True
    return c


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One cell of the grid."""

    name: str  # directory name under runs/
    group: str  # the curve it belongs to (seeds of one group are averaged)
    variant: str
    seed: int
    batch_size: int
    power: float | None = None  # ti only
    num_temps: int | None = None  # ti only

    def overrides(self) -> dict:
        out = {"variant": self.variant, "seed": self.seed, "batch_size": self.batch_size}
        if self.variant == "ti":
            out.update({"ti.power": self.power, "ti.num_temps": self.num_temps})
        return out


def _number(value: float) -> str:
    return f"{value:g}"


def study_grid(study: ml_collections.ConfigDict) -> list[RunSpec]:
    """The runs of a study config, seeds innermost (a group's seeds run one after another)."""
    base_batch = int(study.train.batch_size)
    cells: list[tuple[str, str, dict]] = []
    if study.vanilla:
        for b in (base_batch, *[int(v) for v in study.batch_sizes if int(v) != base_batch]):
            label = "vanilla" if b == base_batch else f"vanilla B={b}"
            cells.append((f"vanilla_b{b}", label, {"variant": "vanilla", "batch_size": b}))
    for p in study.powers:
        p = float(p)
        cells.append((f"ti_p{_number(p)}_b{base_batch}", f"ti p={_number(p)}",
                      {"variant": "ti", "batch_size": base_batch, "power": p, "num_temps": int(study.num_temps)}))
    runs = []
    for stem, group, fields in cells:
        for seed in study.seeds:
            runs.append(RunSpec(name=f"{stem}_s{int(seed)}", group=group, seed=int(seed), **fields))
    if not runs:
        raise ValueError("the study grid is empty: set vanilla=True or give at least one power")
    return runs


def run_config(study: ml_collections.ConfigDict, spec: RunSpec) -> ml_collections.ConfigDict:
    """The training config of one run: ``study.train`` with the run's fields, validated."""
    config = ml_collections.ConfigDict(study.train.to_dict())
    config.update_from_flattened_dict(spec.overrides())
    return config_lib.validate(config)


def validate(study: ml_collections.ConfigDict) -> list[RunSpec]:
    """Checks the study config and every run's training config before any work; returns the grid."""
    for field in ("powers", "seeds", "batch_sizes"):
        if isinstance(study[field], (str, bytes)) or not hasattr(study[field], "__iter__"):
            raise ValueError(f"study.{field}={study[field]!r} must be a list")
    if len(set(study.seeds)) != len(study.seeds):
        raise ValueError(f"study.seeds={tuple(study.seeds)!r} repeats a seed")
    grid = study_grid(study)
    for spec in grid:
        try:
            run_config(study, spec)
        except ValueError as e:
            raise ValueError(f"run {spec.name}: {e}") from None
    return grid


def is_done(run_dir: str) -> bool:
    return os.path.isfile(os.path.join(run_dir, DONE_FILE))


def _write_json(path: str, payload: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def machine() -> dict:
    import jax

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

    A run is expected to take as long as the finished runs of its group did this session, else those of
    its variant, scaled by steps; a ti run with none of its variant finished yet counts as a vanilla run
    times (1 + N)/2 (chains grow N-fold, the rest of a run does not). Until some run has finished the
    ETA is unknown.
    """

    def __init__(self, grid: list[RunSpec], steps: dict[str, int]):
        self.grid, self.steps = grid, steps
        self.seconds: dict[str, float] = {}  # runs finished this session: name -> wall seconds
        self.start = time.time()

    def _per_step(self, runs: list[RunSpec]) -> float | None:
        done = [r for r in runs if r.name in self.seconds]
        if not done:
            return None
        return sum(self.seconds[r.name] for r in done) / sum(self.steps[r.name] for r in done)

    def expected(self, spec: RunSpec) -> float | None:
        for same in (lambda r: r.group == spec.group, lambda r: r.variant == spec.variant):
            rate = self._per_step([r for r in self.grid if same(r)])
            if rate is not None:
                return rate * self.steps[spec.name]
        rate = self._per_step([r for r in self.grid if r.variant == "vanilla"])
        if rate is not None and spec.variant == "ti":
            return rate * self.steps[spec.name] * (1 + spec.num_temps) / 2
        return None

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

    ``train_fn(config, run_dir)`` defaults to `lebm_jax.train.train_and_evaluate`. Returns the study
    record (also written to <workdir>/study.json).
    """
    grid = validate(study)
    workdir = os.path.abspath(workdir)
    os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
    if train_fn is None:
        from lebm_jax.training import loop as train

        train_fn = train.train_and_evaluate
    if study.compile_cache:
        _enable_compile_cache()

    record_path = os.path.join(workdir, STUDY_FILE)
    previous = {}
    if os.path.isfile(record_path):
        with open(record_path) as f:
            previous = json.load(f)
        if previous.get("runs") and [r["name"] for r in previous["runs"]] != [s.name for s in grid]:
            logging.warning("the grid differs from the one recorded in %s; runs already there are kept", record_path)
    record = {
        "name": study.name,
        "runs": [dataclasses.asdict(s) for s in grid],
        "machine": machine(),
        "wall_seconds": float(previous.get("wall_seconds", 0.0)),
        "study_config": json.loads(study.to_json()),
    }
    _write_json(record_path, record)

    steps = {s.name: int(run_config(study, s).num_steps) for s in grid}
    progress = Progress(grid, steps)
    done = {s.name for s in grid if is_done(os.path.join(workdir, "runs", s.name))}
    if done:
        log(f"study: {len(done)} of {len(grid)} runs already finished; they are kept")
    session_start = time.time()
    for spec in grid:
        if spec.name in done:
            continue
        log(progress.line(done, spec))
        run_dir = os.path.join(workdir, "runs", spec.name)
        t = time.time()
        result = train_fn(run_config(study, spec), run_dir)
        seconds = time.time() - t
        final_step = int(_final_step(result, steps[spec.name]))
        _write_json(os.path.join(run_dir, DONE_FILE), {
            "wall_seconds": seconds,  # of the attempt that finished it (a resumed run: its last part)
            "final_step": final_step,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        })
        progress.seconds[spec.name] = seconds
        done.add(spec.name)
        record["wall_seconds"] = float(previous.get("wall_seconds", 0.0)) + time.time() - session_start
        _write_json(record_path, record)
    log(progress.line(done, None))
    if report:
        from lebm_jax.study import report as report_lib

        paths = report_lib.make_report(workdir)
        log(f"report: {paths.get('report', os.path.join(workdir, 'report'))}")
    return record


def _final_step(result, default: int) -> int:
    state = getattr(result, "state", None)
    if state is None:
        return default
    from lebm_jax.training.loop import host_value

    return int(host_value(state.step))


def _enable_compile_cache() -> None:
    """XLA's persistent compilation cache in cache_dir("xla"): runs whose programs coincide (the seeds of
    one group) compile once, in this process and the next."""
    import jax

    from lebm_jax.data.files import cache_dir

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(cache_dir("xla")))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
