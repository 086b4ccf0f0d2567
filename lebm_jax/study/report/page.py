"""The report of a study workdir: `make_report` writes the figures, the summary table and report.md, the
page (`report_page`) that shows each figure with how to read it, the table, and the machine.

It writes into <study>/report/ (or ``out_dir``) the figures of `figures.FIGURES` that have data,
summary.csv and summary.md (`table`) and report.md; a figure without data is not written and the page
says so.
"""

from __future__ import annotations

import os

from lebm_jax.study.layout import REPORT_DIR
from lebm_jax.study.report.figures import FIGURES, draw_figures, figure_data
from lebm_jax.study.report.load import Run, Study, group_runs, load_study
from lebm_jax.study.report.stats import PARTS, QualityNames, Trend, quality_names
from lebm_jax.study.report.table import summary_columns, summary_csv, summary_markdown, summary_rows

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
PAGE = "report.md"


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
    groups = group_runs(study.runs)
    names = quality_names(study.runs)
    data = figure_data(groups, names)
    written = draw_figures(data, out_dir)

    columns = summary_columns(names)
    rows = summary_rows(groups, columns)
    table = summary_markdown(rows, columns)
    for key, name, text in [("summary_csv", SUMMARY_CSV, summary_csv(rows, columns)),
                            ("summary_md", SUMMARY_MD, table)]:
        written[key] = os.path.join(out_dir, name)
        with open(written[key], "w", newline="") as f:
            f.write(text)

    page = report_page(study, groups, names, written, data.trends, data.integrands, table,
                       machine if machine is not None else study.record.get("machine"),
                       wall_seconds if wall_seconds is not None else study.record.get("wall_seconds"))
    written["report"] = os.path.join(out_dir, PAGE)
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
        "parameters, averaged over coordinates; docs/design.md §5) against iteration, EBM parameters left and "
        "generator right, log scale. Dashed: the MCMC part alone (same minibatch, fresh chains). Lower is a less noisy "
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
