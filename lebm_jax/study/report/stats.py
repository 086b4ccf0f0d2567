"""The statistics the report shows: curves over seeds, final values, sample-quality names, the trend of
sample quality against gradient variance, and the TI integrand.

Curves are the mean over a group's seeds with a min–max band; final values are mean ± sample standard
deviation (ddof = 1). Non-finite values are dropped from means, fits and log scales. The Fréchet distance
is called FID only in Inception space (`metrics.metric_name`); in any other feature space it is
"Fréchet distance (<space> features)".
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterable

import numpy as np

from lebm_jax.core.ladder import power_schedule
from lebm_jax.measure import metrics as metrics_lib
from lebm_jax.study.report.load import Run

PARTS = {"ebm": "EBM f_α", "gen": "generator g_β"}  # gradstats suffix -> panel title


def series(runs: Iterable[Run], key: str, positive: bool = False
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, lo, hi) of ``key`` over runs (seeds): at each step where some run has a finite value
    (and > 0 with ``positive``, for log scales), the mean, min and max over the runs that have one."""
    per_run = {}
    for run in runs:
        steps, values = run.values(key)
        ok = np.isfinite(values) & ((values > 0) if positive else True)
        per_run[run.name] = dict(zip(steps[ok].tolist(), values[ok].tolist()))
    all_steps = sorted(set().union(*[d.keys() for d in per_run.values()])) if per_run else []
    mean, lo, hi = [], [], []
    for step in all_steps:
        v = np.array([d[step] for d in per_run.values() if step in d])
        mean.append(v.mean()), lo.append(v.min()), hi.append(v.max())
    return (np.array(all_steps, dtype=np.int64), np.array(mean), np.array(lo), np.array(hi))


@dataclasses.dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof = 1) over the finite values of a group's runs."""

    mean: float
    std: float  # NaN with fewer than two values
    count: int


def final_stat(runs: Iterable[Run], key: str) -> Stat | None:
    """Stat of each run's final finite value of ``key``; None when no run has one."""
    values = np.array([run.final(key) for run in runs])
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    std = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
    return Stat(float(np.mean(values)), std, int(values.size))


def wall_stat(runs: Iterable[Run]) -> Stat | None:
    """Stat of done.json's wall_seconds over the finished runs."""
    values = np.array([float(r.done["wall_seconds"]) for r in runs if r.done and "wall_seconds" in r.done])
    if not values.size:
        return None
    return Stat(float(np.mean(values)), float(np.std(values, ddof=1)) if values.size > 1 else math.nan, values.size)


@dataclasses.dataclass(frozen=True)
class QualityNames:
    """The logged keys and display names of the sample-quality metrics in the study's feature space."""

    space: str | None  # "inception", "classifier", ...; None when nothing was logged

    def key(self, metric: str) -> str:
        return "eval/" + metrics_lib.metric_name(metric, self.space)

    def column(self, metric: str) -> str:
        return metrics_lib.metric_name(metric, self.space)

    def short(self, metric: str) -> str:
        """Table header: FID/KID in Inception space; otherwise names that do not claim Inception features."""
        if self.space == metrics_lib.INCEPTION:
            return {"fd": "FID", "kid": "KID"}.get(metric, metric)
        return {"fd": f"FD ({self.space})", "kid": f"MMD² ({self.space})"}.get(metric, f"{metric} ({self.space})")

    def long(self, metric: str = "fd") -> str:
        """Axis label."""
        if self.space == metrics_lib.INCEPTION:
            return {"fd": "FID (Inception-v3 pool3 features)", "kid": "KID (Inception-v3 features)"}[metric]
        return {"fd": f"Fréchet distance ({self.space} features)",
                "kid": f"kernel distance, unbiased MMD² ({self.space} features)"}[metric]


def quality_names(runs: Iterable[Run]) -> QualityNames:
    """The feature space the runs logged sample quality in: Inception when eval/fid exists, else the space
    of the first eval/fd_<space> key."""
    keys = set().union(*[row.keys() for run in runs for row in run.rows])
    if "eval/fid" in keys:
        return QualityNames(metrics_lib.INCEPTION)
    spaces = sorted(m.group(1) for k in keys if (m := re.fullmatch(r"eval/fd_([a-z0-9]+)", k)))
    return QualityNames(spaces[0] if spaces else None)


@dataclasses.dataclass(frozen=True)
class Point:
    """One run at one step where both a gradient variance and a sample-quality distance were logged."""

    group: str
    run: str
    step: int
    variance: float
    distance: float


def quality_variance_points(groups: dict[str, list[Run]], distance_key: str, variance_key: str) -> list[Point]:
    """Points (variance, distance) matched by step, finite with variance > 0 (a log axis)."""
    points = []
    for group, runs in groups.items():
        for run in runs:
            s_var, v_var = run.values(variance_key)
            s_d, v_d = run.values(distance_key)
            variance = dict(zip(s_var.tolist(), v_var.tolist()))
            for step, d in zip(s_d.tolist(), v_d.tolist()):
                v = variance.get(step, math.nan)
                if math.isfinite(v) and v > 0 and math.isfinite(d):
                    points.append(Point(group, run.name, step, v, d))
    return points


@dataclasses.dataclass(frozen=True)
class Trend:
    """Least squares distance ≈ intercept + slope · log10(variance) over n points at one step."""

    slope: float
    intercept: float
    n: int
    step: int


def last_common_step(points: list[Point]) -> int | None:
    """The last step at which every run with points has one: the smallest of the runs' last steps."""
    last: dict[str, int] = {}
    for p in points:
        last[p.run] = max(last.get(p.run, p.step), p.step)
    return min(last.values()) if last else None


def fit_trend(points: list[Point]) -> Trend | None:
    """Ordinary least squares of distance on log10 variance across runs at their last common step (one
    point per run: earlier steps would mix training progress into the trend); None with fewer than two
    distinct variances there."""
    step = last_common_step(points)
    at = [p for p in points if p.step == step]
    x = np.log10([p.variance for p in at])
    y = np.array([p.distance for p in at])
    if np.unique(x).size < 2:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    return Trend(float(slope), float(intercept), len(at), int(step))


def ti_integrand(runs: Iterable[Run]) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(t_i, E_i mean over runs, step) of the TI integrand E_i = rung_log_lik/i at each run's last training
    row that logged it; the runs share one ladder. None without such rows."""
    runs = [r for r in runs if r.variant == "ti" and r.power is not None and r.num_temps]
    if not runs:
        return None
    num_temps, power = int(runs[0].num_temps), float(runs[0].power)
    curves, steps = [], []
    for run in runs:
        if (int(run.num_temps), float(run.power)) != (num_temps, power):
            continue
        rows = [r for r in run.rows if all(isinstance(r.get(f"rung_log_lik/{i}"), (int, float))
                                           for i in range(num_temps))]
        if rows:
            last = max(rows, key=lambda r: r["step"])
            curves.append([float(last[f"rung_log_lik/{i}"]) for i in range(num_temps)])
            steps.append(int(last["step"]))
    if not curves:
        return None
    ts = np.asarray(power_schedule(num_temps, power), np.float64)
    return ts, np.nanmean(np.array(curves), axis=0), min(steps)
