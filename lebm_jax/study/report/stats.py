"""The statistics the report shows: curves over seeds, final values and their differences between groups,
sample-quality names, the trend of sample quality against gradient variance with its uncertainty, the
held-out log-likelihood protocol's checks, and the TI integrand.

Curves are the mean over a group's seeds with a min–max band; final values are mean ± sample standard
deviation (ddof = 1) over seeds, with the runs' own standard errors where a metric logs one (``<name>_se``).
A group differs from the reference group "beyond the seed spread" when the difference of the means exceeds
twice its Welch standard error √(s1²/n1 + s2²/n2). The trend's slope has an OLS standard error, a t interval,
a p-value and a bootstrap-over-runs interval. Non-finite values are dropped from means, fits and log scales.
The Fréchet distance is called FID only in Inception space (`metrics.metric_name`); in any other feature
space it is "Fréchet distance (<space> features)".
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Iterable

import numpy as np
import scipy.optimize
import scipy.stats

from lebm_jax.core.ladder import power_schedule
from lebm_jax.measure import metrics as metrics_lib
from lebm_jax.study.report.load import Run

PARTS = {"ebm": "EBM f_α", "gen": "generator g_β"}  # gradstats suffix -> panel title
REFERENCE_GROUP = "vanilla"  # what other groups are compared with, when the study has it
SPREAD_FACTOR = 2.0  # |Δ| > SPREAD_FACTOR · SE(Δ): a difference beyond the seed spread
CONFIDENCE = 0.95  # of every interval the report gives
BOOTSTRAP_RESAMPLES = 2000  # resamples of the runs for the trend's bootstrap interval
BOOTSTRAP_SEED = 0  # fixed: a report depends only on the study's files


def _at(run: Run, key: str) -> dict[int, float]:
    steps, values = run.values(key)
    return dict(zip(steps.tolist(), values.tolist()))


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


def mean_se_series(runs: Iterable[Run], key: str, se_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, se) of ``key`` over runs, at each step where some run has a finite value: the mean over
    those runs and its standard error from their own, √(Σ se_r²)/k over the k runs (NaN at a step where one
    of them logged no finite ``se_key``). This is the measurement error of the mean; ``series``'s band is the
    spread over seeds."""
    runs = list(runs)
    values, ses = [_at(r, key) for r in runs], [_at(r, se_key) for r in runs]
    steps = sorted({s for v in values for s, x in v.items() if math.isfinite(x)})
    mean, se = [], []
    for step in steps:
        at = [(v[step], e.get(step, math.nan)) for v, e in zip(values, ses) if math.isfinite(v.get(step, math.nan))]
        x, e = np.array(at).T
        mean.append(x.mean())
        se.append(math.sqrt(np.sum(e**2)) / e.size if np.all(np.isfinite(e)) else math.nan)
    return np.array(steps, dtype=np.int64), np.array(mean), np.array(se)


@dataclasses.dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof = 1) over the finite final values of a group's runs, and
    the root mean square of the runs' own standard errors of those values (the typical measurement error of
    one run, to hold against the seed spread)."""

    mean: float
    std: float  # NaN with fewer than two values
    count: int
    se: float = math.nan  # NaN unless every counted run logged a finite standard error at its final step


def _final(run: Run, key: str, se_key: str | None) -> tuple[float, float]:
    """(value, se) at the last step where ``key`` is finite: se is ``se_key`` at that same step (NaN when
    not logged there); (NaN, NaN) when ``key`` never is finite."""
    steps, values = run.values(key)
    ok = np.isfinite(values)
    if not ok.any():
        return math.nan, math.nan
    step, value = int(steps[ok][-1]), float(values[ok][-1])
    return value, _at(run, se_key).get(step, math.nan) if se_key else math.nan


def final_stat(runs: Iterable[Run], key: str, se_key: str | None = None) -> Stat | None:
    """Stat of each run's final finite value of ``key`` (with ``se_key``: and of its standard error logged
    at the same step); None when no run has one."""
    pairs = np.array([_final(run, key, se_key) for run in runs]).reshape(-1, 2)
    values, ses = pairs[np.isfinite(pairs[:, 0])].T
    if not values.size:
        return None
    std = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
    se = float(np.sqrt(np.mean(ses**2))) if np.all(np.isfinite(ses)) else math.nan
    return Stat(float(np.mean(values)), std, int(values.size), se)


def reference_group(groups: Iterable[str]) -> str | None:
    """The group others are compared with: REFERENCE_GROUP when present, else the first; None without groups."""
    groups = list(groups)
    return REFERENCE_GROUP if REFERENCE_GROUP in groups else (groups[0] if groups else None)


@dataclasses.dataclass(frozen=True)
class Difference:
    """A group's mean minus the reference group's, Δ, with the standard error of Δ from the two groups' seed
    spreads, √(s1²/n1 + s2²/n2) (Welch's; each run's measurement noise is part of its group's spread)."""

    delta: float
    se: float  # NaN with fewer than two seeds in either group

    @property
    def verdict(self) -> str:
        """"beyond" the seed spread when |Δ| > SPREAD_FACTOR · se, else "within"; "n/a" without se."""
        if not math.isfinite(self.se):
            return "n/a"
        return "beyond" if abs(self.delta) > SPREAD_FACTOR * self.se else "within"


def difference(stat: Stat | None, reference: Stat | None) -> Difference | None:
    """stat − reference as a Difference; None when either is missing."""
    if stat is None or reference is None:
        return None
    se = math.sqrt(stat.std**2 / stat.count + reference.std**2 / reference.count)
    return Difference(stat.mean - reference.mean, se)


def chance_beyond(seeds: int) -> float:
    """The probability that two groups of ``seeds`` runs each, with no real difference and equal spreads,
    still differ by more than SPREAD_FACTOR standard errors: Δ/se is then Student-t with 2(seeds − 1)
    degrees of freedom. 0.18 for 2 seeds, 0.08 for 5: the criterion marks a difference's size, it is not a
    5% test, and it is applied to many metrics and groups at once."""
    return float(2.0 * scipy.stats.t.sf(SPREAD_FACTOR, 2 * (seeds - 1)))


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
    distance_se: float = math.nan  # the distance's bootstrap standard error; NaN when not logged


def quality_variance_points(groups: dict[str, list[Run]], distance_key: str, variance_key: str,
                            se_key: str | None = None) -> list[Point]:
    """Points (variance, distance) matched by step, finite with variance > 0 (a log axis); with ``se_key``
    each carries the distance's standard error logged at its step."""
    points = []
    for group, runs in groups.items():
        for run in runs:
            variance = _at(run, variance_key)
            se = _at(run, se_key) if se_key else {}
            for step, d in _at(run, distance_key).items():
                v = variance.get(step, math.nan)
                if math.isfinite(v) and v > 0 and math.isfinite(d):
                    points.append(Point(group, run.name, step, v, d, se.get(step, math.nan)))
    return points


@dataclasses.dataclass(frozen=True)
class LineFit:
    """Ordinary least squares y ≈ intercept + slope · x over n points, with the slope's standard error
    se = √(RSS/(n − 2) / Σ(x − x̄)²) on n − 2 degrees of freedom (NaN for n = 2: no residual freedom)."""

    slope: float
    intercept: float
    slope_se: float
    n: int


def fit_line(x, y) -> LineFit:
    """LineFit of y on x (1-d, one length); raises ValueError with fewer than two distinct x."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 1 or x.shape != y.shape or np.unique(x).size < 2:
        raise ValueError(f"a line needs >= 2 distinct x of one length; got x {x.tolist()}, y {y.tolist()}")
    sxx = np.sum((x - x.mean()) ** 2)
    slope = np.sum((x - x.mean()) * (y - y.mean())) / sxx
    intercept = y.mean() - slope * x.mean()
    rss = np.sum((y - intercept - slope * x) ** 2)
    se = math.sqrt(rss / (x.size - 2) / sxx) if x.size > 2 else math.nan
    return LineFit(float(slope), float(intercept), se, int(x.size))


def t_interval(estimate: float, se: float, df: int, level: float = CONFIDENCE) -> tuple[float, float]:
    """estimate ∓ q · se, q the (1 + level)/2 quantile of Student's t with df degrees of freedom; NaNs for
    df < 1 or a NaN se."""
    if df < 1 or not math.isfinite(se):
        return math.nan, math.nan
    q = float(scipy.stats.t.ppf((1.0 + level) / 2.0, df))
    return estimate - q * se, estimate + q * se


def two_sided_p(estimate: float, se: float, df: int) -> float:
    """P(|T| ≥ |estimate/se|), T Student-t with df degrees of freedom: the p-value of estimate = 0. NaN for
    df < 1 or a NaN se; with se = 0, 0 for a non-zero estimate and 1 for zero."""
    if df < 1 or not math.isfinite(se):
        return math.nan
    if se == 0.0:
        return 0.0 if estimate != 0.0 else 1.0
    return float(2.0 * scipy.stats.t.sf(abs(estimate / se), df))


def bootstrap_slope_interval(x, y, num_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                             level: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of the OLS slope over ``num_resamples`` resamples of the n points with
    replacement (``np.random.default_rng(seed)``); a resample with fewer than two distinct x has no slope and
    is left out. NaNs with fewer than three points (two points resample only to themselves) or no slope.
    With few points it is narrower than it should be (the resamples hold at most n distinct points)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 3:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, x.size, (num_resamples, x.size))
    xb, yb = x[idx], y[idx]
    xc = xb - xb.mean(axis=1, keepdims=True)
    sxx = np.sum(xc**2, axis=1)
    ok = np.ptp(xb, axis=1) > 0
    if not ok.any():
        return math.nan, math.nan
    slopes = np.sum(xc * (yb - yb.mean(axis=1, keepdims=True)), axis=1)[ok] / sxx[ok]
    lo, hi = np.quantile(slopes, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


@dataclasses.dataclass(frozen=True)
class Trend:
    """Least squares distance ≈ intercept + slope · log10(variance) over n runs, one point each, at one
    step, with the slope's uncertainty: its OLS standard error, the t interval on n − 2 degrees of freedom,
    the two-sided p-value of slope = 0, and a percentile interval from resampling the runs (intervals at
    CONFIDENCE; NaN with fewer than three runs). ``seeds``: the fewest and most runs any group has among
    the n, over ``groups`` groups."""

    slope: float
    intercept: float
    n: int
    step: int
    slope_se: float
    ci: tuple[float, float]
    p_value: float
    bootstrap_ci: tuple[float, float]
    seeds: tuple[int, int]
    groups: int

    @property
    def excludes_zero(self) -> bool | None:
        """Whether the t interval excludes slope 0; None without an interval."""
        lo, hi = self.ci
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return None
        return lo > 0.0 or hi < 0.0


def last_common_step(points: list[Point]) -> int | None:
    """The last step at which every run with points has one: the smallest of the runs' last steps."""
    last: dict[str, int] = {}
    for p in points:
        last[p.run] = max(last.get(p.run, p.step), p.step)
    return min(last.values()) if last else None


def fit_trend(points: list[Point]) -> Trend | None:
    """Ordinary least squares of distance on log10 variance across runs at their last common step (one
    point per run: earlier steps would mix training progress into the trend), with the slope's standard
    error, t interval, p-value and bootstrap-over-runs interval (`Trend`); None with fewer than two distinct
    variances there."""
    step = last_common_step(points)
    at = [p for p in points if p.step == step]
    x = np.log10([p.variance for p in at])
    y = np.array([p.distance for p in at])
    if np.unique(x).size < 2:
        return None
    fit = fit_line(x, y)
    per_group = collections.Counter(p.group for p in at)
    return Trend(fit.slope, fit.intercept, fit.n, int(step), fit.slope_se,
                 t_interval(fit.slope, fit.slope_se, fit.n - 2), two_sided_p(fit.slope, fit.slope_se, fit.n - 2),
                 bootstrap_slope_interval(x, y), (min(per_group.values()), max(per_group.values())), len(per_group))


@dataclasses.dataclass(frozen=True)
class ProtocolCheck:
    """The held-out log-likelihood protocol's self-checks over the runs that logged it, at each run's final
    ``loglik/ti`` step: TI against AIS on the same sweep, the full ladder against its half, AIS's effective
    sample fraction and MALA's acceptance."""

    runs: int
    ti_se: tuple[float, float]  # smallest and largest SE of a run's loglik/ti
    ais_disagrees: list[str]  # runs with |TI − AIS| > SPREAD_FACTOR · its SE
    max_ti_minus_ais: float  # largest |TI − AIS| over the runs
    max_half_diff: float  # largest |full − half ladder| over the runs
    ess: tuple[float, float]  # smallest and largest AIS effective-sample fraction
    accept: tuple[float, float]  # smallest and largest acceptance


def protocol_check(runs: Iterable[Run]) -> ProtocolCheck | None:
    """ProtocolCheck of the runs with a finite loglik/ti; None without such runs. A value a run did not log
    at that step is left out of the ranges (NaN when no run logged it)."""
    finals = []
    for run in runs:
        steps, values = run.values("loglik/ti")
        ok = np.isfinite(values)
        if ok.any():
            step = int(steps[ok][-1])
            finals.append((run.name, {k: _at(run, f"loglik/{k}").get(step, math.nan) for k in (
                "ti_se", "ti_minus_ais", "ti_minus_ais_se", "ti_half_diff", "ais_ess", "accept")}))
    if not finals:
        return None

    def values(name):
        v = np.array([f[name] for _, f in finals])
        return v[np.isfinite(v)]

    def span(name):
        v = values(name)
        return (float(v.min()), float(v.max())) if v.size else (math.nan, math.nan)

    def largest(name):
        v = np.abs(values(name))
        return float(v.max()) if v.size else math.nan

    disagree = [name for name, f in finals if abs(f["ti_minus_ais"]) > SPREAD_FACTOR * f["ti_minus_ais_se"]]
    return ProtocolCheck(len(finals), span("ti_se"), disagree, largest("ti_minus_ais"), largest("ti_half_diff"),
                         span("ais_ess"), span("accept"))


def ti_integrand(runs: Iterable[Run]) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(t_i, E_i, step) of the TI integrand E_i = rung_log_lik/i at each run's last training row that logged
    it, both means over the runs: t_i is the ladder that row ran on (``rung_t/i``, logged by an adaptive
    ladder; else the power ladder); step the earliest of those rows. The runs share N and p. None without
    such rows."""
    runs = [r for r in runs if r.variant == "ti" and r.power is not None and r.num_temps]
    if not runs:
        return None
    num_temps, power = int(runs[0].num_temps), float(runs[0].power)
    fixed = np.asarray(power_schedule(num_temps, power), np.float64)
    curves, ladders, steps = [], [], []
    for run in runs:
        if (int(run.num_temps), float(run.power)) != (num_temps, power):
            continue
        rows = [r for r in run.rows if all(isinstance(r.get(f"rung_log_lik/{i}"), (int, float))
                                           for i in range(num_temps))]
        if rows:
            last = max(rows, key=lambda r: r["step"])
            curves.append([float(last[f"rung_log_lik/{i}"]) for i in range(num_temps)])
            logged = [last.get(f"rung_t/{i}") for i in range(num_temps)]
            ladders.append([float(t) for t in logged] if all(isinstance(t, (int, float)) for t in logged)
                           else fixed)
            steps.append(int(last["step"]))
    if not curves:
        return None
    return np.mean(np.array(ladders, np.float64), axis=0), np.nanmean(np.array(curves), axis=0), min(steps)


def indexed_keys(runs: Iterable[Run], prefix: str) -> list[str]:
    """``prefix/0``, ``prefix/1``, … up to the largest index any of the runs logged (e.g. ``rung_t/i`` of
    the rungs, ``swap_accept/i`` of the pairs (i, i+1)); [] when none did."""
    pattern = re.compile(re.escape(prefix) + r"/(\d+)")
    found = {int(m.group(1)) for run in runs for row in run.rows for k in row if (m := pattern.fullmatch(k))}
    return [f"{prefix}/{i}" for i in range(max(found) + 1)] if found else []


@dataclasses.dataclass(frozen=True)
class IndexedCurves:
    """A per-rung (or per-pair) metric of one group over training and at the end: ``mean[s, i]`` the mean
    over seeds of ``<prefix>/i`` at ``steps[s]`` (NaN where no run has a finite value); ``final[i]`` the Stat
    of the runs' last finite values (None where none has one), ``seeds[i]`` those values run by run."""

    steps: np.ndarray  # (S,)
    mean: np.ndarray  # (S, K)
    final: list[Stat | None]
    seeds: list[np.ndarray]


def indexed_curves(runs: Iterable[Run], prefix: str) -> IndexedCurves | None:
    """IndexedCurves of ``prefix/i`` over a group's runs; None when none of them logged a finite value."""
    runs = list(runs)
    keys = indexed_keys(runs, prefix)
    per_key = [series(runs, k) for k in keys]
    steps = sorted(set().union(*[s.tolist() for s, *_ in per_key])) if per_key else []
    if not steps:
        return None
    where = {s: j for j, s in enumerate(steps)}
    mean = np.full((len(steps), len(keys)), np.nan)
    for i, (s, m, _, _) in enumerate(per_key):
        mean[[where[x] for x in s.tolist()], i] = m
    finals = [np.array([run.final(k) for run in runs]) for k in keys]
    return IndexedCurves(np.array(steps, dtype=np.int64), mean, [final_stat(runs, k) for k in keys],
                         [v[np.isfinite(v)] for v in finals])


def adaptive_ladders(groups: dict[str, list[Run]]) -> dict[str, IndexedCurves]:
    """The groups whose runs logged an adaptive ladder (``rung_t/i``) -> its rungs over training."""
    out = {}
    for group, runs in groups.items():
        if (curves := indexed_curves(runs, "rung_t")) is not None:
            out[group] = curves
    return out


def swap_acceptance(groups: dict[str, list[Run]]) -> dict[str, IndexedCurves]:
    """The groups whose runs logged replica exchange (``swap_accept/i``) -> its acceptance per pair."""
    out = {}
    for group, runs in groups.items():
        if (curves := indexed_curves(runs, "swap_accept")) is not None:
            out[group] = curves
    return out


def fixed_ladders(groups: dict[str, list[Run]]) -> dict[str, np.ndarray]:
    """The power ladders t_i = (i/(N−1))^p of the ti groups whose ladder is fixed, labelled "p=<p>" (with
    ", N=<N>" when the groups differ in N), one per distinct (N, p), in the groups' order: what an adaptive
    ladder is read against."""
    found: list[tuple[int, float]] = []
    for runs in groups.values():
        ti = [r for r in runs if r.variant == "ti" and r.power is not None and r.num_temps]
        if not ti or any(r.adapt_every for r in ti) or indexed_keys(ti, "rung_t"):
            continue
        if (ladder := (int(ti[0].num_temps), float(ti[0].power))) not in found:
            found.append(ladder)
    one_n = len({n for n, _ in found}) <= 1
    return {f"p={p:g}" + ("" if one_n else f", N={n}"): np.asarray(power_schedule(n, p), np.float64)
            for n, p in found}


def closest_power(ts) -> tuple[float, float]:
    """(p, rms): the power ladder (i/(N−1))^p closest to the ladder ``ts`` (N ≥ 3 rungs, t_0 = 0 and
    t_{N−1} = 1) in least squares over its inner rungs, p searched in [0.01, 100] on a log scale, and the
    root mean square distance over those rungs; NaNs when ``ts`` has fewer than 3 rungs or is not finite. A
    one-number reading of where an adaptive ladder put its rungs."""
    ts = np.asarray(ts, np.float64)
    if ts.size < 3 or not np.all(np.isfinite(ts)):
        return math.nan, math.nan
    u = np.linspace(0.0, 1.0, ts.size)[1:-1]

    def loss(log_p):
        return float(np.mean((u ** math.exp(log_p) - ts[1:-1]) ** 2))

    res = scipy.optimize.minimize_scalar(loss, bounds=(math.log(0.01), math.log(100.0)), method="bounded",
                                         options={"xatol": 1e-10})
    return math.exp(res.x), math.sqrt(loss(res.x))
