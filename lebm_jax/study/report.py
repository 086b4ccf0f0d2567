"""The report of a variance study: figures, a summary table and one page that ties them together.

Reads a study workdir (the layout `lebm_jax.study` writes):

    study.json                  {"name", "runs": [{"name", "group", "variant", "seed", "batch_size", "power",
                                 "num_temps"}, ...], optionally "machine" and "wall_seconds"}
    runs/<name>/config.json     the run's training config
    runs/<name>/metrics.jsonl   the rows `writers.JsonlWriter` wrote
    runs/<name>/samples/        sample grids samples_<step:07d>.png
    runs/<name>/done.json       {"wall_seconds", "final_step", "finished"}, once the run has finished

and writes into <study>/report/ (or ``out_dir``):

    gradient_variance.png       total gradient variance (DESIGN §5) against iteration, EBM and generator
    sample_quality.png          the sample-quality Fréchet distance against iteration
    quality_vs_variance.png     that distance against the gradient variance, with a least-squares trend
    loglik_variance.png         variance of the generator's loss estimate over MCMC draws against iteration
    ti_schedule.png             the temperature ladders t_i = (i/(N−1))^p and the TI integrand E_t against t
    samples.png                 the final sample grid of each group
    summary.csv, summary.md     one row per group: final metrics as mean ± std over seeds
    report.md                   the page

A "group" is one curve (e.g. "vanilla", "ti p=0.3"); its runs differ only in the seed and are averaged.
Curves show the mean over seeds with a min–max band. The Fréchet distance is called FID only in Inception
space (`metrics.metric_name`); in any other feature space it is "Fréchet distance (<space> features)".
Non-finite values are dropped from means, fits and log-scale plots. A figure without data is not written
and the page says so. summary.csv and summary.md depend only on the study's files (no timestamps).
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import json
import math
import os
import re
from typing import Iterable

import numpy as np

from lebm_jax.measure import metrics as metrics_lib
from lebm_jax.study.runner import DONE_FILE, STUDY_FILE
from lebm_jax.training.writers import read_jsonl

REPORT_DIR = "report"

FIGURES = {  # key in make_report's result -> file name
    "gradient_variance": "gradient_variance.png",
    "sample_quality": "sample_quality.png",
    "quality_vs_variance": "quality_vs_variance.png",
    "loglik_variance": "loglik_variance.png",
    "ti_schedule": "ti_schedule.png",
    "samples": "samples.png",
}
PARTS = {"ebm": "EBM f_α", "gen": "generator g_β"}  # gradstats suffix -> panel title
DPI = 100


# ------------------------------------------------------------------------------------------- loading
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
    power: float | None = None  # ti only
    num_temps: int | None = None  # ti only

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
        paths = sorted(glob.glob(os.path.join(self.directory, "samples", "samples_*.png")))
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


def _number(value: float) -> str:
    return f"{value:g}"


def infer_group(variant: str, batch_size: int | None, power: float | None, base_batch: int | None) -> str:
    """The group of a run when study.json does not say: "vanilla", "vanilla B=<b>" off the base batch size,
    "ti p=<p>" (with " B=<b>" off the base batch size), as `lebm_jax.study` names them."""
    off_base = batch_size is not None and base_batch is not None and batch_size != base_batch
    if variant == "ti":
        return f"ti p={_number(power)}" + (f" B={batch_size}" if off_base else "") if power is not None else "ti"
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
    return Run(
        name=os.path.basename(directory),
        group=spec.get("group", ""),
        variant=variant,
        seed=int(spec.get("seed", config.get("seed", 0))),
        directory=directory,
        rows=_read_metrics(os.path.join(directory, "metrics.jsonl")),
        config=config,
        done=_read_json(os.path.join(directory, DONE_FILE)),
        batch_size=spec.get("batch_size", config.get("batch_size")),
        power=spec.get("power", ti.get("power")) if variant == "ti" else None,
        num_temps=spec.get("num_temps", ti.get("num_temps")) if variant == "ti" else None,
    )


def _sort_key(run: Run, base_batch: int | None):
    """vanilla at the base batch size, vanilla at other sizes (larger first), then ti by power."""
    order = {"vanilla": 0, "ti": 1}.get(run.variant, 2)
    return (order, run.batch_size != base_batch, -(run.batch_size or 0), run.power or 0.0, run.seed, run.name)


def load_study(workdir: str) -> Study:
    """Reads a study workdir. Groups come from study.json, or, without it, from each run's config.json.

    Raises ValueError naming the directory when it holds neither study.json nor runs/*/metrics.jsonl, or
    when no run has logged anything yet.
    """
    workdir = os.path.abspath(workdir)
    record = _read_json(os.path.join(workdir, STUDY_FILE))
    run_dirs = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(workdir, "runs", "*", "metrics.jsonl")))
    if record is None and not run_dirs:
        raise ValueError(f"no runs in {workdir}: it has neither {STUDY_FILE} nor runs/*/metrics.jsonl")
    runs, not_started = [], []
    if record is not None:
        for spec in record.get("runs", []):
            directory = os.path.join(workdir, "runs", spec["name"])
            if not os.path.isfile(os.path.join(directory, "metrics.jsonl")):
                not_started.append(spec["name"])
                continue
            run = _run(directory, spec, _read_json(os.path.join(directory, "config.json")) or {})
            run.group = run.group or infer_group(run.variant, run.batch_size, run.power, None)
            runs.append(run)
    else:
        configs = {d: _read_json(os.path.join(d, "config.json")) or {} for d in run_dirs}
        base = _base_batch(configs.values())
        runs = [_run(d, {}, configs[d]) for d in run_dirs]
        for run in runs:
            run.group = (infer_group(run.variant, run.batch_size, run.power, base)
                         if run.variant != "unknown" else run.name)
        runs.sort(key=lambda r: _sort_key(r, base))
    if not any(run.rows for run in runs):
        raise ValueError(f"no runs in {workdir}: no run has logged metrics yet (runs/*/metrics.jsonl)")
    name = (record or {}).get("name") or os.path.basename(workdir)
    return Study(name=name, directory=workdir, runs=runs, record=record or {}, not_started=not_started)


def group_runs(runs: Iterable[Run]) -> dict[str, list[Run]]:
    """Runs by group, groups in order of first appearance, each group's runs sorted by seed."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return {g: sorted(rs, key=lambda r: (r.seed, r.name)) for g, rs in groups.items()}


# ------------------------------------------------------------------------------------------- statistics
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
    from lebm_jax.core.ladder import power_schedule

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


# ------------------------------------------------------------------------------------------- figures
def _figure(width: float, height: float, ncols: int = 1):
    """A figure drawn by the Agg canvas (no pyplot, no global backend change) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def _colours(groups: Iterable[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {g: cmap(i % 10) for i, g in enumerate(groups)}


def _band(ax, steps, mean, lo, hi, colour, label, **line):
    ax.plot(steps, mean, color=colour, label=label, **line)
    if len(steps) and np.any(hi > lo):
        ax.fill_between(steps, lo, hi, color=colour, alpha=0.2, linewidth=0)


def plot_gradient_variance(groups: dict[str, list[Run]], path: str, mcmc: bool = True) -> str | None:
    """Total gradient variance against iteration, EBM and generator panels, log y; MCMC variance dashed."""
    if not any(series(runs, f"gradstats/total_var/{p}", True)[0].size for runs in groups.values() for p in PARTS):
        return None
    colours = _colours(groups)
    fig, axes = _figure(9.0, 3.6, ncols=2)
    for ax, (part, title) in zip(axes, PARTS.items()):
        for group, runs in groups.items():
            _band(ax, *series(runs, f"gradstats/total_var/{part}", True), colours[group], group)
            if mcmc:
                steps, mean, _, _ = series(runs, f"gradstats/mcmc_var/{part}", True)
                ax.plot(steps, mean, color=colours[group], linestyle="--", linewidth=1)
        ax.set(yscale="log", xlabel="iteration", ylabel="gradient variance (mean over coordinates)", title=title)
    axes[0].legend(fontsize=7, title="solid: total, dashed: MCMC", title_fontsize=7)
    return _save(fig, path)


def plot_sample_quality(groups: dict[str, list[Run]], names: QualityNames, path: str) -> str | None:
    """The sample-quality Fréchet distance against iteration, mean over seeds with a min–max band."""
    if names.space is None:
        return None
    key = names.key("fd")
    if not any(series(runs, key)[0].size for runs in groups.values()):
        return None
    colours = _colours(groups)
    fig, axes = _figure(5.5, 3.6)
    for group, runs in groups.items():
        _band(axes[0], *series(runs, key), colours[group], group, marker="o", markersize=3)
    axes[0].set(xlabel="iteration", ylabel=names.long("fd"))
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_quality_vs_variance(points: dict[str, list[Point]], trends: dict[str, Trend | None],
                             group_order: list[str], names: QualityNames, path: str) -> str | None:
    """Distance against gradient variance (log x), one panel per part: a dot per run and evaluation step,
    a large marker per group and step at the mean over seeds with min–max bars in both coordinates, and
    the least-squares trend of distance on log10 variance across runs at their last common step."""
    if not any(points.values()):
        return None
    colours = _colours(group_order)
    fig, axes = _figure(9.0, 3.8, ncols=2)
    for ax, (part, title) in zip(axes, PARTS.items()):
        pts = points.get(part, [])
        for group in group_order:
            mine = [p for p in pts if p.group == group]
            if not mine:
                continue
            ax.scatter([p.variance for p in mine], [p.distance for p in mine], s=14, color=colours[group],
                       alpha=0.6, linewidths=0)
            for i, step in enumerate(sorted({p.step for p in mine})):
                at = [p for p in mine if p.step == step]
                x, y = np.array([p.variance for p in at]), np.array([p.distance for p in at])
                ax.errorbar(x.mean(), y.mean(), xerr=[[x.mean() - x.min()], [x.max() - x.mean()]],
                            yerr=[[y.mean() - y.min()], [y.max() - y.mean()]], color=colours[group], marker="o",
                            markersize=5, capsize=2, linewidth=0.8, label=group if i == 0 else None)
        trend = trends.get(part)
        if trend is not None:
            at = [p.variance for p in pts if p.step == trend.step]
            xs = np.logspace(*np.log10([min(at), max(at)]), 50)
            ax.plot(xs, trend.intercept + trend.slope * np.log10(xs), color="black", linewidth=1,
                    label=f"fit at step {trend.step}: slope {trend.slope:.4g} per decade")
        ax.set(xscale="log", xlabel="total gradient variance", ylabel=names.long("fd"), title=title)
        if pts and max(p.variance for p in pts) > 10 * min(p.variance for p in pts):
            from matplotlib.ticker import NullFormatter  # over a decade, the 10^k labels suffice

            ax.xaxis.set_minor_formatter(NullFormatter())
        if pts:
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_loglik_variance(groups: dict[str, list[Run]], path: str) -> str | None:
    """Per-example variance over MCMC draws of the generator's loss estimate against iteration, log y."""
    key = "gradstats/loss_var/gen"
    if not any(series(runs, key, True)[0].size for runs in groups.values()):
        return None
    colours = _colours(groups)
    fig, axes = _figure(5.5, 3.6)
    for group, runs in groups.items():
        _band(axes[0], *series(runs, key, True), colours[group], group)
    axes[0].set(yscale="log", xlabel="iteration", ylabel="variance over MCMC draws",
                title="loss estimate: ti −log p̂(x), vanilla −log p(x|z⁺)")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_ti_schedule(integrands: dict[str, tuple[np.ndarray, np.ndarray, int]], path: str) -> str | None:
    """Left: the ladders t_i against i/(N−1), one per ti group. Right: the TI integrand E_t against t."""
    if not integrands:
        return None
    colours = _colours(integrands)
    fig, axes = _figure(9.0, 3.6, ncols=2)
    for group, (ts, e, _) in integrands.items():
        u = np.linspace(0.0, 1.0, ts.size)
        axes[0].plot(u, ts, color=colours[group], marker="o", markersize=3, label=group)
        axes[1].plot(ts, e, color=colours[group], marker="o", markersize=3, label=group)
    axes[0].plot([0, 1], [0, 1], color="grey", linewidth=0.5, linestyle=":")
    axes[0].set(xlabel="$i\\,/\\,(N-1)$", ylabel="temperature $t_i$", title="ladders $t_i = (i/(N-1))^p$")
    axes[1].set(xlabel="temperature $t$", ylabel="$E_t[\\log p(x|z)]$ (batch mean)", title="TI integrand")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_samples(grids: dict[str, tuple[str, str]], path: str) -> str | None:
    """The final sample grids side by side; ``grids``: group -> (PNG path, subtitle)."""
    if not grids:
        return None
    from PIL import Image

    fig, axes = _figure(2.4 * len(grids), 2.8, ncols=len(grids))
    for ax, (group, (png, subtitle)) in zip(axes, grids.items()):
        with Image.open(png) as im:
            ax.imshow(np.asarray(im.convert("RGB")), interpolation="nearest")
        ax.set_title(f"{group}\n{subtitle}", fontsize=8)
        ax.axis("off")
    return _save(fig, path)


# ------------------------------------------------------------------------------------------- table
@dataclasses.dataclass(frozen=True)
class Column:
    """A summary column: the logged key, the CSV stem (``<stem>_mean``, ``<stem>_std``) and its header."""

    key: str
    stem: str
    header: str


def summary_columns(names: QualityNames) -> list[Column]:
    quality = []
    if names.space is not None:
        quality = [Column(names.key(m), names.column(m), names.short(m)) for m in ("fd", "kid", "precision", "recall")]
    return quality + [
        Column("heldout/recon_mse", "recon_mse", "held-out recon. MSE"),
        Column("heldout/log_px", "log_px", "held-out log p̂(x)"),
        Column("gradstats/total_var/ebm", "total_var_ebm", "grad. var. EBM"),
        Column("gradstats/total_var/gen", "total_var_gen", "grad. var. gen."),
        Column("gradstats/loss_var/gen", "loss_var_gen", "loss-estimate var."),
    ]


def _g(value: float | None, digits: int = 10) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def summary_rows(groups: dict[str, list[Run]], columns: list[Column]) -> list[dict]:
    """One dict per group: description, seeds, unfinished runs, final step(s), and per column its Stat."""
    rows = []
    for group, runs in groups.items():
        steps = sorted({r.last_step() for r in runs})
        powers = sorted({r.power for r in runs if r.power is not None})
        batches = sorted({r.batch_size for r in runs if r.batch_size is not None})
        rows.append({
            "group": group,
            "variant": "/".join(sorted({r.variant for r in runs})),
            "power": "/".join(_number(p) for p in powers),
            "batch_size": "/".join(str(b) for b in batches),
            "seeds": len(runs),
            "unfinished": sum(not r.finished for r in runs),
            "steps": str(steps[0]) if len(steps) == 1 else f"{steps[0]}–{steps[-1]}",
            "stats": {c.stem: final_stat(runs, c.key) for c in columns},
            "wall": wall_stat(runs),
        })
    return rows


def summary_csv(rows: list[dict], columns: list[Column]) -> str:
    """CSV text: group, variant, power, batch_size, seeds, unfinished, steps, then <stem>_mean, <stem>_std
    per column (sample std, ddof = 1; empty when undefined), wall_seconds_mean, wall_seconds_std."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    stems = [c.stem for c in columns] + ["wall_seconds"]
    writer.writerow(["group", "variant", "power", "batch_size", "seeds", "unfinished", "steps"]
                    + [f"{s}_{m}" for s in stems for m in ("mean", "std")])
    for row in rows:
        stats = {**row["stats"], "wall_seconds": row["wall"]}
        cells = [row[k] for k in ("group", "variant", "power", "batch_size", "seeds", "unfinished", "steps")]
        for s in stems:
            stat = stats[s]
            cells += [_g(stat.mean), _g(stat.std)] if stat is not None else ["", ""]
        writer.writerow(cells)
    return out.getvalue()


def format_stat(stat: Stat | None) -> str:
    """"mean ± std" (4 and 3 significant digits), "mean" for one value, "—" for none."""
    if stat is None:
        return "—"
    if not math.isfinite(stat.std):
        return f"{stat.mean:.4g}"
    return f"{stat.mean:.4g} ± {stat.std:.3g}"


def summary_markdown(rows: list[dict], columns: list[Column]) -> str:
    """The table as Markdown, with a legend under it."""
    header = ["group", "seeds", "steps"] + [c.header for c in columns] + ["wall time per run (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        mark = f" (*{row['unfinished']} unfinished*)" if row["unfinished"] else ""
        cells = [row["group"] + mark, str(row["seeds"]), row["steps"]]
        cells += [format_stat(row["stats"][c.stem]) for c in columns] + [format_stat(row["wall"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Final values (each run's last logged finite value) as mean ± sample standard deviation (ddof = 1) over "
        "seeds; — : not logged. Gradient variances are total variances averaged over parameter coordinates; "
        "the loss-estimate variance is the per-example variance over MCMC draws of the generator loss "
        "(−log p̂(x) for ti, −log p(x|z⁺) for vanilla). Wall time: done.json of finished runs (a resumed run "
        "counts its last attempt). Unfinished runs report their last logged step.",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- the page
def _seconds(value: float) -> str:
    s = int(round(value))
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d} ({value:.0f} s)"


def _machine_lines(machine, wall_seconds) -> list[str]:
    lines = []
    if isinstance(machine, dict):
        lines += [f"- {k}: {machine[k]}" for k in sorted(machine)]
    elif machine:
        lines.append(f"- machine: {machine}")
    if wall_seconds is not None:
        lines.append(f"- study wall time: {_seconds(float(wall_seconds))}")
    return lines


def _figure_section(title: str, key: str, written: dict, text: str, missing: str) -> list[str]:
    lines = [f"### {title}", ""]
    if key in written:
        lines += [f"![{title}]({FIGURES[key]})", "", text]
    else:
        lines.append(f"*No figure: {missing}*")
    return lines + [""]


def make_report(study_workdir: str, out_dir: str | None = None, *, machine=None,
                wall_seconds: float | None = None) -> dict[str, str]:
    """Writes the study's figures, summary.csv, summary.md and report.md into ``out_dir`` (default
    <study>/report). ``machine`` / ``wall_seconds`` default to study.json's. Returns {name: path} of the
    files written: the keys of FIGURES that had data, "summary_csv", "summary_md" and "report".
    Raises ValueError naming the directory when it holds no runs."""
    study = load_study(study_workdir)
    out_dir = os.path.abspath(out_dir or os.path.join(study.directory, REPORT_DIR))
    os.makedirs(out_dir, exist_ok=True)
    for name in FIGURES.values():  # a figure that has no data now must not survive from an earlier report
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    groups = group_runs(study.runs)
    names = quality_names(study.runs)
    fig = {k: os.path.join(out_dir, v) for k, v in FIGURES.items()}

    points = {part: quality_variance_points(groups, names.key("fd"), f"gradstats/total_var/{part}")
              for part in PARTS} if names.space else {}
    trends = {part: fit_trend(pts) for part, pts in points.items()}
    integrands = {}
    for group, runs in groups.items():
        if (curve := ti_integrand(runs)) is not None:
            integrands[group] = curve
    grids = {}
    for group, runs in groups.items():
        for run in runs:
            if (png := run.final_samples()) is not None:
                step = int(re.search(r"(\d+)\.png$", png).group(1))
                grids[group] = (png, f"seed {run.seed}, step {step}")
                break

    written = {}
    for key, path in [
        ("gradient_variance", plot_gradient_variance(groups, fig["gradient_variance"])),
        ("sample_quality", plot_sample_quality(groups, names, fig["sample_quality"])),
        ("quality_vs_variance", plot_quality_vs_variance(points, trends, list(groups), names,
                                                         fig["quality_vs_variance"])),
        ("loglik_variance", plot_loglik_variance(groups, fig["loglik_variance"])),
        ("ti_schedule", plot_ti_schedule(integrands, fig["ti_schedule"])),
        ("samples", plot_samples(grids, fig["samples"])),
    ]:
        if path is not None:
            written[key] = path

    columns = summary_columns(names)
    rows = summary_rows(groups, columns)
    table = summary_markdown(rows, columns)
    for key, name, text in [("summary_csv", "summary.csv", summary_csv(rows, columns)),
                            ("summary_md", "summary.md", table)]:
        written[key] = os.path.join(out_dir, name)
        with open(written[key], "w", newline="") as f:
            f.write(text)

    page = report_page(study, groups, names, written, trends, integrands, table,
                       machine if machine is not None else study.record.get("machine"),
                       wall_seconds if wall_seconds is not None else study.record.get("wall_seconds"))
    written["report"] = os.path.join(out_dir, "report.md")
    with open(written["report"], "w") as f:
        f.write(page)
    return written


def report_page(study: Study, groups: dict[str, list[Run]], names: QualityNames, written: dict,
                trends: dict[str, Trend | None], integrands: dict, table: str, machine, wall_seconds) -> str:
    """The Markdown page: what was run, each figure with how to read it, the table, the machine."""
    runs = study.runs
    unfinished = [r.name for r in runs if not r.finished]
    lines = [f"# Variance study: {study.name}", ""]
    lines += [
        f"- data set: {study.data_set}",
        f"- sample quality: {names.long('fd') if names.space else 'not logged'}",
        f"- {len(runs)} runs in {len(groups)} groups: "
        + ", ".join(f"{g} ({len(rs)} seeds)" for g, rs in groups.items()),
    ]
    if unfinished:
        lines.append(f"- unfinished (reported at their last logged step): {', '.join(unfinished)}")
    if study.not_started:
        lines.append(f"- not started (no metrics yet): {', '.join(study.not_started)}")
    lines += ["", "Curves are the mean over a group's seeds; shaded bands span the minimum to the maximum over "
              "seeds. Non-finite values are left out of means, fits and log scales.", "", "## Figures", ""]

    lines += _figure_section(
        "Gradient variance", "gradient_variance", written,
        "Total variance of the learning gradient over minibatches and MCMC noise (R independent draws at fixed "
        "parameters, averaged over coordinates; DESIGN §5) against iteration, EBM parameters left and generator "
        "right, log scale. Dashed: the MCMC part alone (same minibatch, fresh chains). Lower is a less noisy "
        "gradient; the gap between solid and dashed is the minibatch (data) part.",
        "no run logged gradstats/total_var.")
    fd = names.short("fd") if names.space else "the sample-quality distance"
    lines += _figure_section(
        "Sample quality", "sample_quality", written,
        f"{names.long('fd') if names.space else ''} of generated samples against iteration. Lower is better; "
        "differences smaller than the spread of a group's band are within seed-to-seed variation.",
        "no run logged a sample-quality Fréchet distance (eval/…).")
    slopes = "; ".join(f"{PARTS[p]}: slope {t.slope:.4g} per decade of variance over {t.n} runs at step {t.step}"
                       for p, t in trends.items() if t is not None) or "too few points for a fit"
    lines += _figure_section(
        f"{fd} against gradient variance", "quality_vs_variance", written,
        f"Each small dot is one run at one evaluation step where both {fd} and the gradient variance were "
        f"measured (matched by step); large markers are a group's mean over seeds at that step, with bars from "
        f"the smallest to the largest seed in both coordinates. A single {fd} measurement logs no standard "
        f"error, so the seed spread (training and measurement noise together) is the only error shown, and "
        f"dots carry none. Black line: least squares of {fd} on log10 of the variance across the runs at their "
        f"last common evaluation step, one dot per run ({slopes}); earlier steps sit at high {fd} for every "
        f"variant, and fitting them too would mix training progress into the trend.",
        "no step has both a sample-quality distance and a gradient variance.")
    lines += _figure_section(
        "Variance of the log-likelihood estimate", "loglik_variance", written,
        "Per-example variance over MCMC draws of the generator loss estimate, averaged over examples, log scale. "
        "For ti it is the variance of the TI estimate −log p̂(x); for vanilla that of −log p(x|z⁺) at one "
        "posterior sample, a different quantity; compare ti groups with each other.",
        "no run logged gradstats/loss_var/gen.")
    steps = sorted({s for (_, _, s) in integrands.values()})
    lines += _figure_section(
        "Temperature ladders and the TI integrand", "ti_schedule", written,
        "Left: the rungs t_i = (i/(N−1))^p of each ti group (dotted: p = 1); p < 1 packs rungs near the "
        "posterior (t = 1), p > 1 near the prior (t = 0). Right: the integrand E_t = E_{π_t}[log p(x|z)] on "
        f"those rungs at the last logged training step (step {', '.join(map(str, steps))}), batch mean, mean "
        "over seeds; log p̂(x) is the trapezoid area under it, so rungs belong where it bends.",
        "no ti run logged rung_log_lik.")
    lines += _figure_section(
        "Final samples", "samples", written,
        "The last sample grid of each group's first seed (prior Langevin chain, then the generator mean).",
        "no run wrote samples/samples_*.png.")

    lines += ["## Summary", "", "Also as [summary.csv](summary.csv) and [summary.md](summary.md).", "", table]
    machine_lines = _machine_lines(machine, wall_seconds)
    if machine_lines:
        lines += ["## Machine and time", ""] + machine_lines + [""]
    return "\n".join(lines)
