"""Reading a study workdir (`lebm_jax.study.layout`): its runs, their logged rows, and their groups.

    study.json                  {"name", "runs": [{"name", "group", "variant", "seed", "batch_size", "power",
                                 "num_temps", "exchange_every", "adapt_every", "adapt_decay"}, ...],
                                 optionally "machine" and "wall_seconds"; the last three fields are
                                 absent from studies recorded before they existed (then: config.json's)
    runs/<name>/config.json     the run's training config
    runs/<name>/metrics.jsonl   the rows `writers.JsonlWriter` wrote
    runs/<name>/samples/        sample grids samples_<step:07d>.png
    runs/<name>/done.json       {"wall_seconds", "final_step", "finished"}, once the run has finished

A "group" is one curve (e.g. "vanilla", "ti p=0.3", "ti p=1 +RE", "ti adaptive (from p=1)"); its runs
differ only in the seed and are averaged. Without study.json the groups come from each run's config.json.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
from typing import Iterable

import numpy as np

from lebm_jax.study.layout import (CONFIG_FILE, DONE_FILE, METRICS_FILE, RUNS_DIR, SAMPLES_DIR, SAMPLES_GLOB,
                                   STUDY_FILE, run_directory, ti_group)
from lebm_jax.training.writers import read_jsonl


@dataclasses.dataclass
class Run:
    """One training run of the study: its description, config, logged rows and completion record."""

    name: str
    group: str
    variant: str
    seed: int
    directory: str
    rows: list[dict]
    config: dict = dataclasses.field(default_factory=dict)
    done: dict | None = None  # done.json; None while unfinished
    batch_size: int | None = None
    power: float | None = None  # ti only (the adaptive ladder's starting power)
    num_temps: int | None = None  # ti only
    exchange_every: int = 0  # ti only: posterior steps between replica-exchange rounds; 0 = none
    adapt_every: int = 0  # ti only: training steps between placements of the adaptive ladder; 0 = fixed
    adapt_decay: float | None = None  # ti with an adaptive ladder only

    @property
    def finished(self) -> bool:
        return self.done is not None

    def values(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of ``key``, sorted by step; a step logged twice keeps its last value.
        Non-finite values are kept (callers drop them)."""
        by_step = {int(r["step"]): float(r[key]) for r in self.rows if isinstance(r.get(key), (int, float))}
        steps = np.array(sorted(by_step), dtype=np.int64)
        return steps, np.array([by_step[s] for s in steps], dtype=np.float64)

    def final(self, key: str) -> float:
        """The value of ``key`` at the last step where it is finite; NaN when it never is."""
        _, v = self.values(key)
        v = v[np.isfinite(v)]
        return float(v[-1]) if v.size else math.nan

    def last_step(self) -> int:
        """The final step: done.json's when finished, else the largest logged step."""
        if self.done is not None and "final_step" in self.done:
            return int(self.done["final_step"])
        return max((int(r["step"]) for r in self.rows), default=0)

    def final_samples(self) -> str | None:
        """The last sample grid (samples/samples_<step>.png), or None."""
        paths = sorted(glob.glob(os.path.join(self.directory, SAMPLES_DIR, SAMPLES_GLOB)))
        return paths[-1] if paths else None


@dataclasses.dataclass
class Study:
    name: str
    directory: str
    runs: list[Run]  # in the study's order
    record: dict  # study.json ({} when absent)
    not_started: list[str]  # runs study.json lists that have no metrics yet

    @property
    def data_set(self) -> str:
        for run in self.runs:
            data = run.config.get("data", {})
            if data.get("name"):
                size = data.get("image_size")
                size = f", {size}×{size}×{data.get('channels', '?')}" if size else ""
                return f"{data['name']}{size}"
        return "unknown"


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _read_metrics(path: str) -> list[dict]:
    try:
        return read_jsonl(path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON lines: {e}") from None


def infer_group(variant: str, batch_size: int | None, power: float | None, base_batch: int | None,
                exchange_every: int = 0, adapt_every: int = 0) -> str:
    """The group of a run when study.json does not say: "vanilla", "vanilla B=<b>" off the base batch size,
    "ti p=<p>", "ti p=<p> +RE" (replica exchange) or "ti adaptive (from p=<p>)" (with " B=<b>" off the
    base batch size), as `lebm_jax.study.grid` names them."""
    off_base = batch_size is not None and base_batch is not None and batch_size != base_batch
    if variant == "ti":
        if power is None:
            return "ti"
        return ti_group(power, exchange_every, adapt_every) + (f" B={batch_size}" if off_base else "")
    return variant + (f" B={batch_size}" if off_base else "")


def _base_batch(configs: Iterable[dict]) -> int | None:
    """The batch size of most ti runs (else of most runs; ties: the larger)."""
    configs = list(configs)
    ti = [c for c in configs if c.get("variant") == "ti"] or configs
    sizes = [c["batch_size"] for c in ti if "batch_size" in c]
    return max(set(sizes), key=lambda b: (sizes.count(b), b)) if sizes else None


def _run(directory: str, spec: dict, config: dict) -> Run:
    ti = config.get("ti", {})
    variant = spec.get("variant", config.get("variant", "unknown"))

    def ti_field(name: str, default):
        """study.json's value, else config.json's, else ``default`` (a run from before the field existed)."""
        if variant != "ti":
            return default
        value = spec.get(name)
        return ti.get(name, default) if value is None else value

    return Run(
        name=os.path.basename(directory),
        group=spec.get("group", ""),
        variant=variant,
        seed=int(spec.get("seed", config.get("seed", 0))),
        directory=directory,
        rows=_read_metrics(os.path.join(directory, METRICS_FILE)),
        config=config,
        done=_read_json(os.path.join(directory, DONE_FILE)),
        batch_size=spec.get("batch_size", config.get("batch_size")),
        power=spec.get("power", ti.get("power")) if variant == "ti" else None,
        num_temps=spec.get("num_temps", ti.get("num_temps")) if variant == "ti" else None,
        exchange_every=int(ti_field("exchange_every", 0) or 0),
        adapt_every=int(ti_field("adapt_every", 0) or 0),
        adapt_decay=ti_field("adapt_decay", None) if ti_field("adapt_every", 0) else None,
    )


def _sort_key(run: Run, base_batch: int | None):
    """vanilla at the base batch size, vanilla at other sizes (larger first), then ti with fixed ladders,
    with replica exchange and with adaptive ladders, each by power (as `lebm_jax.study.grid` orders them)."""
    order = {"vanilla": 0, "ti": 1}.get(run.variant, 2)
    kind = 2 if run.adapt_every else (1 if run.exchange_every else 0)
    return (order, run.batch_size != base_batch, -(run.batch_size or 0), kind, run.power or 0.0, run.seed,
            run.name)


def load_study(workdir: str) -> Study:
    """Reads a study workdir. Groups come from study.json, or, without it, from each run's config.json.

    Raises ValueError naming the directory when it holds neither study.json nor runs/*/metrics.jsonl, or
    when no run has logged anything yet.
    """
    workdir = os.path.abspath(workdir)
    record = _read_json(os.path.join(workdir, STUDY_FILE))
    run_dirs = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(workdir, RUNS_DIR, "*", METRICS_FILE)))
    if record is None and not run_dirs:
        raise ValueError(f"no runs in {workdir}: it has neither {STUDY_FILE} nor {RUNS_DIR}/*/{METRICS_FILE}")
    runs, not_started = [], []
    if record is not None:
        for spec in record.get("runs", []):
            directory = run_directory(workdir, spec["name"])
            if not os.path.isfile(os.path.join(directory, METRICS_FILE)):
                not_started.append(spec["name"])
                continue
            run = _run(directory, spec, _read_json(os.path.join(directory, CONFIG_FILE)) or {})
            run.group = run.group or infer_group(run.variant, run.batch_size, run.power, None,
                                                 run.exchange_every, run.adapt_every)
            runs.append(run)
    else:
        configs = {d: _read_json(os.path.join(d, CONFIG_FILE)) or {} for d in run_dirs}
        base = _base_batch(configs.values())
        runs = [_run(d, {}, configs[d]) for d in run_dirs]
        for run in runs:
            run.group = (infer_group(run.variant, run.batch_size, run.power, base, run.exchange_every,
                                     run.adapt_every)
                         if run.variant != "unknown" else run.name)
        runs.sort(key=lambda r: _sort_key(r, base))
    if not any(run.rows for run in runs):
        raise ValueError(f"no runs in {workdir}: no run has logged metrics yet ({RUNS_DIR}/*/{METRICS_FILE})")
    name = (record or {}).get("name") or os.path.basename(workdir)
    return Study(name=name, directory=workdir, runs=runs, record=record or {}, not_started=not_started)


def group_runs(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Runs by group, groups in order of first appearance, each group's runs sorted by seed."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return {g: sorted(rs, key=lambda r: (r.seed, r.name)) for g, rs in groups.items()}
