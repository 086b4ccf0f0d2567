"""The report's figures, each a PNG drawn with matplotlib's Agg canvas (no pyplot state).

    gradient_variance.png       total gradient variance (docs/design.md §5) against iteration, EBM and generator
    sample_quality.png          the sample-quality Fréchet distance against iteration
    quality_vs_variance.png     that distance against the gradient variance, with a least-squares trend
    loglik_variance.png         variance of the generator's loss estimate over MCMC draws against iteration
    training_estimate.png       bias and variance of each run's training estimate of log p(x) against iteration
    ti_schedule.png             the temperature ladders t_i = (i/(N−1))^p (an adaptive group: its final ladder)
                                and the TI integrand E_t against t
    rung_placement.png          the rungs t_i of each adaptive ladder against iteration, beside the fixed ladders
    swap_acceptance.png         replica exchange: each pair's swap acceptance against iteration, and at the end
    samples.png                 the final sample grid of each group

Every group keeps one colour in every figure (`group_colours`).

Each ``plot_*`` returns the path it wrote, or None (and writes nothing) when it has no data. A new figure
is a ``plot_*`` function here and a line in `_DRAWN` at the bottom (its key and file name); the page
(`lebm_jax.study.report.page`) gives it a section.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable, Iterable

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from PIL import Image

from lebm_jax.study.report.load import Run
from lebm_jax.study.report.stats import (CONFIDENCE, PARTS, IndexedCurves, Point, QualityNames, Trend,
                                         adaptive_ladders, fit_trend, fixed_ladders, mean_se_series,
                                         quality_variance_points, series, swap_acceptance, ti_integrand)

DPI = 100


@dataclasses.dataclass(frozen=True)
class FigureData:
    """What the figures are drawn from (the page cites the trends and the integrands' steps too)."""

    groups: dict[str, list[Run]]
    names: QualityNames
    points: dict[str, list[Point]]  # part -> (variance, distance) points, empty without sample quality
    trends: dict[str, Trend | None]  # part -> trend of distance on log10 variance
    integrands: dict[str, tuple[np.ndarray, np.ndarray, int]]  # ti group -> (t_i, E_i, step)
    grids: dict[str, tuple[str, str]]  # group -> (final sample grid PNG, subtitle)
    ladders: dict[str, IndexedCurves] = dataclasses.field(default_factory=dict)  # adaptive group -> rung_t/i
    references: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # "p=<p>" -> fixed ladder
    swaps: dict[str, IndexedCurves] = dataclasses.field(default_factory=dict)  # exchange group -> swap_accept/i
    adaptive: frozenset = frozenset()  # groups that logged an adaptive ladder

    @property
    def colours(self) -> dict[str, tuple]:
        return group_colours(self.groups)


def figure_data(groups: dict[str, list[Run]], names: QualityNames) -> FigureData:
    """The points, trends, TI integrands, adaptive ladders, swap acceptances and final sample grids of the
    study's groups."""
    points = {part: quality_variance_points(groups, names.key("fd"), f"gradstats/total_var/{part}",
                                            names.key("fd_se"))
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
    ladders = adaptive_ladders(groups)
    return FigureData(groups, names, points, trends, integrands, grids, ladders, fixed_ladders(groups),
                      swap_acceptance(groups), frozenset(ladders))


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1):
    """A figure drawn by the Agg canvas (no pyplot, no global backend change) and its axes: a row of
    ``ncols`` axes, or with ``nrows`` > 1 an (nrows, ncols) array of them."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, (axes[0] if nrows == 1 else axes)


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def group_colours(groups: Iterable[str]) -> dict[str, tuple]:
    """A colour per group, in order: tab10's ten, then their lighter tab20 partners (twenty distinct; a
    full-scale study has 13 groups), then again from the start."""
    cmap = colormaps["tab20"]
    return {g: cmap(2 * (i % 10) + (i // 10) % 2) for i, g in enumerate(groups)}



def _band(ax, steps, mean, lo, hi, colour, label, **line):
    ax.plot(steps, mean, color=colour, label=label, **line)
    if len(steps) and np.any(hi > lo):
        ax.fill_between(steps, lo, hi, color=colour, alpha=0.2, linewidth=0)


def plot_gradient_variance(groups: dict[str, list[Run]], path: str, mcmc: bool = True) -> str | None:
    """Total gradient variance against iteration, EBM and generator panels, log y; MCMC variance dashed."""
    if not any(series(runs, f"gradstats/total_var/{p}", True)[0].size for runs in groups.values() for p in PARTS):
        return None
    colours = group_colours(groups)
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


def _error_bars(ax, steps, mean, se, colour):
    """±se bars where se is finite (a run that logs no standard error draws none)."""
    ok = np.isfinite(se)
    if ok.any():
        ax.errorbar(steps[ok], mean[ok], yerr=se[ok], color=colour, linestyle="none", capsize=2, linewidth=0.8)


def plot_sample_quality(groups: dict[str, list[Run]], names: QualityNames, path: str) -> str | None:
    """The sample-quality Fréchet distance against iteration, mean over seeds with a min–max band and ±1
    standard error bars of that mean from the runs' bootstrap standard errors (where logged)."""
    if names.space is None:
        return None
    key = names.key("fd")
    if not any(series(runs, key)[0].size for runs in groups.values()):
        return None
    colours = group_colours(groups)
    fig, axes = _figure(5.5, 3.6)
    for group, runs in groups.items():
        _band(axes[0], *series(runs, key), colours[group], group, marker="o", markersize=3)
        _error_bars(axes[0], *mean_se_series(runs, key, names.key("fd_se")), colours[group])
    axes[0].set(xlabel="iteration", ylabel=names.long("fd"))
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_quality_vs_variance(points: dict[str, list[Point]], trends: dict[str, Trend | None],
                             group_order: list[str], names: QualityNames, path: str) -> str | None:
    """Distance against gradient variance (log x), one panel per part: a dot per run and evaluation step
    (with ±1 bootstrap standard error bars where logged), a large marker per group and step at the mean over
    seeds with min–max bars in both coordinates, and the least-squares trend of distance on log10 variance
    across runs at their last common step, its slope's t interval in the legend."""
    if not any(points.values()):
        return None
    colours = group_colours(group_order)
    fig, axes = _figure(9.0, 3.8, ncols=2)
    for ax, (part, title) in zip(axes, PARTS.items()):
        pts = points.get(part, [])
        for group in group_order:
            mine = [p for p in pts if p.group == group]
            if not mine:
                continue
            ax.scatter([p.variance for p in mine], [p.distance for p in mine], s=14, color=colours[group],
                       alpha=0.6, linewidths=0)
            with_se = [p for p in mine if np.isfinite(p.distance_se)]
            if with_se:
                ax.errorbar([p.variance for p in with_se], [p.distance for p in with_se],
                            yerr=[p.distance_se for p in with_se], color=colours[group], alpha=0.6,
                            linestyle="none", linewidth=0.6)
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
            lo, hi = trend.ci
            ci = f" ({CONFIDENCE:.0%} CI {lo:.3g} to {hi:.3g})" if np.isfinite(lo) else ""
            ax.plot(xs, trend.intercept + trend.slope * np.log10(xs), color="black", linewidth=1,
                    label=f"fit at step {trend.step}: slope {trend.slope:.4g} per decade{ci}")
        ax.set(xscale="log", xlabel="total gradient variance", ylabel=names.long("fd"), title=title)
        if pts and max(p.variance for p in pts) > 10 * min(p.variance for p in pts):
            ax.xaxis.set_minor_formatter(NullFormatter())  # over a decade, the 10^k labels suffice
        if pts:
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_loglik_variance(groups: dict[str, list[Run]], path: str) -> str | None:
    """Per-example variance over MCMC draws of the generator's loss estimate against iteration, log y."""
    key = "gradstats/loss_var/gen"
    if not any(series(runs, key, True)[0].size for runs in groups.values()):
        return None
    colours = group_colours(groups)
    fig, axes = _figure(5.5, 3.6)
    for group, runs in groups.items():
        _band(axes[0], *series(runs, key, True), colours[group], group)
    axes[0].set(yscale="log", xlabel="iteration", ylabel="variance over MCMC draws",
                title="loss estimate: ti −log p̂(x), vanilla −log p(x|z⁺)")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_training_estimate(groups: dict[str, list[Run]], path: str) -> str | None:
    """The run's own training estimate of log p(x) against the held-out protocol's TI, against iteration:
    left its bias (loglik/train_bias; mean over seeds, min–max band, ±1 standard error bars of the mean from
    the runs' own), right its variance over chain draws (loglik/train_var, log y)."""
    bias, var = "loglik/train_bias", "loglik/train_var"
    if not any(series(runs, k)[0].size for runs in groups.values() for k in (bias, var)):
        return None
    colours = group_colours(groups)
    fig, axes = _figure(9.0, 3.6, ncols=2)
    for group, runs in groups.items():
        _band(axes[0], *series(runs, bias), colours[group], group, marker="o", markersize=3)
        _error_bars(axes[0], *mean_se_series(runs, bias, "loglik/train_bias_se"), colours[group])
        _band(axes[1], *series(runs, var, True), colours[group], group, marker="o", markersize=3)
    axes[0].axhline(0.0, color="grey", linewidth=0.5, linestyle=":")
    axes[0].set(xlabel="iteration", ylabel="training estimate − protocol TI",
                title="bias of the training estimate of log p(x)")
    axes[1].set(yscale="log", xlabel="iteration", ylabel="variance over chain draws",
                title="variance of the training estimate")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def plot_ti_schedule(integrands: dict[str, tuple[np.ndarray, np.ndarray, int]], path: str,
                     colours: dict[str, tuple] | None = None, adaptive: Iterable[str] = (),
                     exchange: Iterable[str] = ()) -> str | None:
    """Left: the ladders t_i against i/(N−1), one per ti group (an ``adaptive`` group's dashed: the ladder
    of its last logged step, mean over seeds; an ``exchange`` group's with open squares, as it shares its
    power's ladder). Right: the TI integrand E_t against t on those ladders. ``colours``: group -> colour
    (default: by the order of ``integrands``)."""
    if not integrands:
        return None
    colours = colours or group_colours(integrands)
    adaptive, exchange = set(adaptive), set(exchange)
    fig, axes = _figure(9.0, 3.6, ncols=2)
    for group, (ts, e, _) in integrands.items():
        u = np.linspace(0.0, 1.0, ts.size)
        style = {"color": colours[group], "marker": "s" if group in exchange else "o",
                 "markersize": 5 if group in exchange else 3, "label": group,
                 "markerfacecolor": "none" if group in exchange else colours[group],
                 "linestyle": "--" if group in adaptive else "-"}
        axes[0].plot(u, ts, **style)
        axes[1].plot(ts, e, **style)
    axes[0].plot([0, 1], [0, 1], color="grey", linewidth=0.5, linestyle=":")
    title = "ladders $t_i = (i/(N-1))^p$" + (" (dashed: adapted)" if adaptive & set(integrands) else "")
    axes[0].set(xlabel="$i\\,/\\,(N-1)$", ylabel="temperature $t_i$", title=title)
    axes[1].set(xlabel="temperature $t$", ylabel="$E_t[\\log p(x|z)]$ (batch mean)", title="TI integrand")
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def _rung_colours(count: int) -> list[tuple]:
    cmap = colormaps["viridis"]
    return [cmap(i / max(count - 1, 1)) for i in range(count)]


def plot_rung_placement(ladders: dict[str, IndexedCurves], references: dict[str, np.ndarray], path: str,
                        colours: dict[str, tuple] | None = None) -> str | None:
    """One panel per adaptive group: each rung t_i against iteration (mean over seeds; rungs coloured from
    t_0 to t_{N−1}), and to the right of the last step, as short bars, the fixed power ladders of the
    study's other ti groups (``references``: label -> ladder), each in a column of its own."""
    if not ladders:
        return None
    fig, axes = _figure(5.5 * len(ladders), 3.8, ncols=len(ladders))
    grey = colormaps["Greys"]
    for ax, (group, curves) in zip(axes, ladders.items()):
        steps = curves.steps
        for i, colour in enumerate(_rung_colours(curves.mean.shape[1])):
            ok = np.isfinite(curves.mean[:, i])
            ax.plot(steps[ok], curves.mean[ok, i], color=colour, linewidth=1.2, marker="o", markersize=2)
        span = max(float(steps.max() - steps.min()), 1.0)
        ax.axvline(float(steps.max()), color="grey", linewidth=0.5, linestyle=":")
        for j, (label, ts) in enumerate(references.items()):
            x = float(steps.max()) + span * 0.07 * (j + 1)
            ax.plot(np.full(ts.size, x), ts, linestyle="none", marker="_", markersize=12, markeredgewidth=1.5,
                    color=grey(0.45 + 0.5 * j / max(len(references) - 1, 1)), label=f"{label} (fixed)")
            ax.annotate(label, (x, 1.02), ha="center", fontsize=6, annotation_clip=False)
        ax.set(xlabel="iteration", ylabel="temperature $t_i$", ylim=(-0.03, 1.06),
               title=f"{group}: rungs $t_0$ (bottom) to $t_{{{curves.mean.shape[1] - 1}}}$ (top)")
        if colours and group in colours:
            ax.title.set_color(colours[group])
        if references:
            ax.legend(fontsize=6, loc="best", title="fixed ladders, right", title_fontsize=6)
    return _save(fig, path)


def plot_swap_acceptance(swaps: dict[str, IndexedCurves], path: str,
                         colours: dict[str, tuple] | None = None) -> str | None:
    """One row per replica-exchange group. Left: each pair (i, i+1)'s swap acceptance against iteration
    (mean over seeds). Right: its final value per pair, mean over seeds with ± the seeds' standard deviation
    (ddof = 1) as error bars and each seed's value as a dot."""
    if not swaps:
        return None
    fig, axes = _figure(10.0, 3.6 * len(swaps), ncols=2, nrows=len(swaps))
    rows = axes if len(swaps) > 1 else [axes]
    for (left, right), (group, curves) in zip(rows, swaps.items()):
        pairs = curves.mean.shape[1]
        for i, colour in enumerate(_rung_colours(pairs)):
            ok = np.isfinite(curves.mean[:, i])
            left.plot(curves.steps[ok], curves.mean[ok, i], color=colour, linewidth=1.2, label=f"({i},{i + 1})")
        left.set(xlabel="iteration", ylabel="swap acceptance", ylim=(-0.03, 1.03),
                 title=f"{group}: acceptance per pair (i, i+1)")
        left.legend(fontsize=6, ncol=3, title="pair", title_fontsize=6)
        colour = (colours or {}).get(group, "black")
        index = np.arange(pairs)
        mean = np.array([st.mean if st is not None else np.nan for st in curves.final])
        spread = np.array([st.std if st is not None and np.isfinite(st.std) else 0.0 for st in curves.final])
        right.errorbar(index, mean, yerr=spread, color=colour, marker="o", markersize=5, capsize=3, linewidth=1,
                       label="mean ± seed std")
        for i, values in enumerate(curves.seeds):
            right.scatter(np.full(values.size, i), values, s=10, color="black", alpha=0.5, linewidths=0,
                          label="one seed" if i == 0 else None)
        right.set(xlabel="pair (i, i+1), by i", ylabel="final swap acceptance", ylim=(-0.03, 1.03),
                  xticks=index, title=f"{group}: at the last logged step")
        right.legend(fontsize=6)
    return _save(fig, path)


SAMPLES_PER_ROW = 7


def plot_samples(grids: dict[str, tuple[str, str]], path: str) -> str | None:
    """The final sample grids side by side, SAMPLES_PER_ROW to a row; ``grids``: group -> (PNG path,
    subtitle)."""
    if not grids:
        return None
    ncols = min(len(grids), SAMPLES_PER_ROW)
    nrows = -(-len(grids) // ncols)
    fig, axes = _figure(2.4 * ncols, 2.8 * nrows, ncols=ncols, nrows=nrows)
    axes = np.asarray(axes).reshape(-1)
    for ax, (group, (png, subtitle)) in zip(axes, grids.items()):
        with Image.open(png) as im:
            ax.imshow(np.asarray(im.convert("RGB")), interpolation="nearest")
        ax.set_title(f"{group}\n{subtitle}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    return _save(fig, path)


# ------------------------------------------------------------------------------------------- the figures
_DRAWN: tuple[tuple[str, str, Callable[[FigureData, str], str | None]], ...] = (
    # (key in make_report's result, file name, how it is drawn), in the page's order
    ("gradient_variance", "gradient_variance.png", lambda d, path: plot_gradient_variance(d.groups, path)),
    ("sample_quality", "sample_quality.png", lambda d, path: plot_sample_quality(d.groups, d.names, path)),
    ("quality_vs_variance", "quality_vs_variance.png",
     lambda d, path: plot_quality_vs_variance(d.points, d.trends, list(d.groups), d.names, path)),
    ("loglik_variance", "loglik_variance.png", lambda d, path: plot_loglik_variance(d.groups, path)),
    ("training_estimate", "training_estimate.png", lambda d, path: plot_training_estimate(d.groups, path)),
    ("ti_schedule", "ti_schedule.png",
     lambda d, path: plot_ti_schedule(d.integrands, path, d.colours, d.adaptive, d.swaps)),
    ("rung_placement", "rung_placement.png",
     lambda d, path: plot_rung_placement(d.ladders, d.references, path, d.colours)),
    ("swap_acceptance", "swap_acceptance.png", lambda d, path: plot_swap_acceptance(d.swaps, path, d.colours)),
    ("samples", "samples.png", lambda d, path: plot_samples(d.grids, path)),
)
FIGURES = {key: name for key, name, _ in _DRAWN}  # key in make_report's result -> file name


def draw_figures(data: FigureData, out_dir: str) -> dict[str, str]:
    """Draws every figure that has data into ``out_dir``; returns {key: path} of those written. A figure
    file left by an earlier report is removed first, so a figure without data now does not survive."""
    for name in FIGURES.values():
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    written = {}
    for key, name, draw in _DRAWN:
        if (path := draw(data, os.path.join(out_dir, name))) is not None:
            written[key] = path
    return written
