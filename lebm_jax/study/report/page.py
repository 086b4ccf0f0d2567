"""The report of a study workdir: `make_report` writes the figures, the summary table and report.md, the
page (`report_page`) that shows each figure with how to read it, the table, and the machine.

It writes into <study>/report/ (or ``out_dir``) the figures of `figures.FIGURES` that have data,
summary.csv, differences.csv and summary.md (`table`), rungs.csv when some run logged an adaptive ladder or
replica exchange, and report.md; a figure without data is not written
and the page says so. Every sentence that compares is generated from the numbers with their uncertainty
(`stats`): a trend is called distinguishable from zero only when its confidence interval excludes zero, and
a group difference beyond the seed spread only when it exceeds twice its standard error; the page says how
often the latter happens by chance.
"""

from __future__ import annotations

import math
import os

from lebm_jax.study.layout import REPORT_DIR
from lebm_jax.study.report.figures import FIGURES, FigureData, draw_figures, figure_data
from lebm_jax.study.report.load import Study, group_runs, load_study
from lebm_jax.study.report.stats import (CONFIDENCE, PARTS, SPREAD_FACTOR, ProtocolCheck, QualityNames, Trend,
                                         chance_beyond, protocol_check, quality_names)
from lebm_jax.study.report.table import (Column, comparisons, differences_csv, ladder_markdown, rungs_csv,
                                         summary_columns, summary_csv, summary_differences, summary_markdown,
                                         summary_rows, swap_markdown)

SUMMARY_CSV = "summary.csv"
DIFFERENCES_CSV = "differences.csv"
RUNGS_CSV = "rungs.csv"
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


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _seeds(lo: int, hi: int) -> str:
    count = f"{lo}" if lo == hi else f"{lo}–{hi}"
    return f"{count} seed{'' if hi == 1 else 's'} per group"


def trend_sentence(distance: str, part: str, trend: Trend | None) -> str:
    """One sentence on the fit of ``distance`` on log10 of the ``part`` gradient variance: the slope with its
    t interval, p-value, runs and seeds, and the bootstrap-over-runs interval; "distinguishable from zero"
    only when the t interval excludes zero, and then as an association only."""
    variance = f"the {PARTS[part]} gradient variance"
    if trend is None:
        return f"{distance} against {variance}: too few runs with distinct variances for a fit."
    runs = f"{trend.n} runs, {_seeds(*trend.seeds)}, at step {trend.step}"
    slope = f"slope {trend.slope:.3g} per decade of variance"
    if trend.excludes_zero is None:
        return (f"{distance} against {variance}: {slope} ({runs}): too few runs for a confidence interval "
                "(it needs 3), so no claim either way.")
    (lo, hi), (blo, bhi) = trend.ci, trend.bootstrap_ci
    level = f"{CONFIDENCE:.0%}"
    detail = (f"{slope} ({level} CI {lo:.3g} to {hi:.3g}, {_p(trend.p_value)}, {runs}; "
              f"bootstrap over runs {level} CI {blo:.3g} to {bhi:.3g})")
    if not trend.excludes_zero:
        return f"{distance} against {variance}: {detail}: not distinguishable from zero."
    text = (f"{distance} {'falls' if trend.slope < 0 else 'rises'} as {variance} grows: {detail}: "
            f"distinguishable from zero at the {1 - CONFIDENCE:.0%} level.")
    if math.isfinite(blo) and blo <= 0.0 <= bhi:
        text += " The bootstrap interval contains zero, though: the evidence rests on the fit's normal errors."
    return text + (" An association across runs, not a cause: the groups differ in more than their gradient "
                   "variance.")


def difference_sentences(rows: list[dict], columns: list[Column]) -> list[str]:
    """Per compared pair (`table.comparisons`: each group against the reference group, each option group
    against its fixed ladder), which differences are beyond the seed spread (with Δ ± SE), which within it
    and which cannot be judged; then how many would be marked beyond by chance alone."""
    pairs = comparisons(rows, columns)
    if not pairs:
        return []
    headers = {c.stem: c.header for c in columns}
    lines, judged = [], 0
    for group, reference, by_stem in pairs:
        found = {v: [(headers[s], d) for s, d in by_stem.items() if d is not None and d.verdict == v]
                 for v in ("beyond", "within", "n/a")}
        judged += len(found["beyond"]) + len(found["within"])
        parts = []
        if found["beyond"]:
            parts.append("beyond the seed spread in " + ", ".join(f"{h} ({d.delta:+.3g} ± {d.se:.2g})"
                                                                   for h, d in found["beyond"]))
        if found["within"]:
            parts.append(("within it" if found["beyond"] else "within the seed spread") + " in "
                         + ", ".join(h for h, _ in found["within"]))
        if found["n/a"]:
            parts.append("not judged (fewer than 2 seeds) in " + ", ".join(h for h, _ in found["n/a"]))
        text = "; ".join(parts) or "no metric in common"
        lines.append(f"- {group} against {reference}: {text.rstrip('.')}.")
    seeds = [row["seeds"] for row in rows if row["seeds"] >= 2]
    if judged and seeds:
        n = min(seeds)
        chance = chance_beyond(n)
        with_seeds = f"{n} seeds per group" if len(set(seeds)) == 1 else f"as few as {n} seeds in a group"
        lines += ["", f"With {with_seeds}, a difference passes {SPREAD_FACTOR:g} standard errors by chance "
                  f"alone with probability {chance:.2g} (Student-t with {2 * (n - 1)} degrees of freedom, equal "
                  f"spreads); of the {judged} differences judged here, about {judged * chance:.1f} would be marked "
                  "beyond with no real difference anywhere. A marker of size, not a significance test."]
    return lines


def protocol_sentences(check: ProtocolCheck | None, reference: str | None = None,
                       ti_differences: list[float] = ()) -> list[str]:
    """What the held-out log-likelihood protocol's self-checks show, or that no run logged it.
    ``ti_differences``: each group's final mean log p̂(x) by TI minus ``reference``'s, against which the
    half-ladder check is read (the standard error over examples measures which images were drawn, not the
    estimator's own error, so it is not the yardstick)."""
    if check is None:
        return ["No run logged the held-out log-likelihood protocol (loglik/…): the table's log p̂(x) columns "
                "are empty."]
    lines = [f"{check.runs} runs logged the protocol; the standard error over held-out examples of a run's TI "
             f"estimate is {check.ti_se[0]:.2g} to {check.ti_se[1]:.2g}."]
    if math.isfinite(check.max_ti_minus_ais):
        if check.ais_disagrees:
            lines.append(f"TI and AIS differ by more than {SPREAD_FACTOR:g} standard errors in "
                         f"{len(check.ais_disagrees)} of {check.runs} runs ({', '.join(check.ais_disagrees)}; "
                         f"largest |TI − AIS| = {check.max_ti_minus_ais:.3g}): there the protocol has not "
                         "converged, and at least one of the two is off by half the difference or more.")
        else:
            lines.append(f"TI and AIS agree within {SPREAD_FACTOR:g} standard errors in every run (largest "
                         f"|TI − AIS| = {check.max_ti_minus_ais:.3g}).")
    if math.isfinite(check.max_half_diff):
        text = f"Halving the ladder moves a run's TI estimate by at most {check.max_half_diff:.3g}"
        if ti_differences:
            smallest = min(abs(d) for d in ti_differences)
            text += (f", less than the smallest difference of a group's mean from {reference}'s ({smallest:.3g})"
                     if check.max_half_diff < smallest else
                     f", not less than the smallest difference of a group's mean from {reference}'s ({smallest:.3g}):"
                     " a difference that small cannot be told from the ladder's discretisation")
        lines.append(text + ".")
    if math.isfinite(check.ess[0]) or math.isfinite(check.accept[0]):
        lines.append(f"AIS effective-sample fraction {check.ess[0]:.2g} to {check.ess[1]:.2g}; MALA acceptance "
                     f"{check.accept[0]:.2g} to {check.accept[1]:.2g}.")
    return [" ".join(lines)]


def training_estimate_sentences(rows: list[dict]) -> list[str]:
    """Per group, the training estimator's final bias against the protocol's TI with the standard error of
    the seeds' mean from the runs' own (RMS SE / √runs), whether it is beyond twice that from zero, and its
    variance over chain draws."""
    lines = []
    for row in rows:
        bias, var = row["stats"].get("loglik_train_bias"), row["stats"].get("loglik_train_var")
        if bias is None:
            continue
        se = bias.se / math.sqrt(bias.count)
        spread = f", seed std {bias.std:.3g}" if math.isfinite(bias.std) else ""
        if not math.isfinite(se):
            verdict = "no standard error logged, so no claim about its sign"
        elif abs(bias.mean) > SPREAD_FACTOR * se:
            verdict = f"{'above' if bias.mean > 0 else 'below'} the protocol's TI by more than {SPREAD_FACTOR:g} SE"
        else:
            verdict = f"within {SPREAD_FACTOR:g} SE of zero: no bias shown at this precision"
        variance = f"; variance over chain draws {var.mean:.3g}" if var is not None else ""
        lines.append(f"- {row['group']}: bias {bias.mean:+.3g} (SE {se:.2g}{spread}): {verdict}{variance}.")
    return lines


def make_report(study_workdir: str, out_dir: str | None = None, *, machine=None,
                wall_seconds: float | None = None) -> dict[str, str]:
    """Writes the study's figures, summary.csv, differences.csv, summary.md and report.md into ``out_dir``
    (default <study>/report). ``machine`` / ``wall_seconds`` default to study.json's. Returns {name: path}
    of the files written: the keys of FIGURES that had data, "summary_csv", "differences_csv", "summary_md",
    "rungs_csv" (when some group logged an adaptive ladder or swap acceptances; an older one is removed
    otherwise) and "report". Raises ValueError naming the directory when it holds no runs."""
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
                            ("differences_csv", DIFFERENCES_CSV, differences_csv(comparisons(rows, columns))),
                            ("summary_md", SUMMARY_MD, table)]:
        written[key] = os.path.join(out_dir, name)
        with open(written[key], "w", newline="") as f:
            f.write(text)
    rungs = os.path.join(out_dir, RUNGS_CSV)
    if data.ladders or data.swaps:
        written["rungs_csv"] = rungs
        with open(rungs, "w", newline="") as f:
            f.write(rungs_csv(data.ladders, data.swaps))
    elif os.path.exists(rungs):
        os.remove(rungs)

    page = report_page(study, data, rows, columns, written, table,
                       machine if machine is not None else study.record.get("machine"),
                       wall_seconds if wall_seconds is not None else study.record.get("wall_seconds"))
    written["report"] = os.path.join(out_dir, PAGE)
    with open(written["report"], "w") as f:
        f.write(page)
    return written


def report_page(study: Study, data: FigureData, rows: list[dict], columns: list[Column], written: dict,
                table: str, machine, wall_seconds) -> str:
    """The Markdown page: what was run, each figure with how to read it and what its numbers show, the
    differences between groups, the table, the machine."""
    runs, groups, names = study.runs, data.groups, data.names
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
              "seeds, error bars ±1 standard error of that mean from the runs' own standard errors (measurement "
              "noise only, where logged). Non-finite values are left out of means, fits and log scales.", "",
              "## Figures", ""]

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
        f"{names.long('fd') if names.space else ''} of generated samples against iteration. Lower is better. "
        "Error bars: the bootstrap standard error over the generated samples (measurement noise alone); the "
        "band adds training noise between seeds. Which final differences exceed the seed spread is listed "
        "under Differences between groups.",
        "no run logged a sample-quality Fréchet distance (eval/…).")
    trend_text = " ".join(trend_sentence(fd, part, data.trends.get(part)) for part in PARTS)
    lines += _figure_section(
        f"{fd} against gradient variance", "quality_vs_variance", written,
        f"Each small dot is one run at one evaluation step where both {fd} and the gradient variance were "
        f"measured (matched by step), with ±1 bootstrap standard error of its {fd} where logged (resampling the "
        f"generated samples: measurement noise, not training noise); large markers are a group's mean over seeds "
        f"at that step, with bars from the smallest to the largest seed in both coordinates. Black line: least "
        f"squares of {fd} on log10 of the variance across the runs at their last common evaluation step, one "
        f"dot per run; earlier steps sit at high {fd} for every variant, and fitting them too would mix training "
        f"progress into the trend. The slope's interval treats runs as independent points; the bootstrap "
        f"interval resamples the runs.\n\n{trend_text}",
        "no step has both a sample-quality distance and a gradient variance.")
    lines += _figure_section(
        "Variance of the log-likelihood estimate", "loglik_variance", written,
        "Per-example variance over MCMC draws of the generator loss estimate, averaged over examples, log scale. "
        "For ti it is the variance of the TI estimate −log p̂(x); for vanilla that of −log p(x|z⁺) at one "
        "posterior sample, a different quantity; compare ti groups with each other.",
        "no run logged gradstats/loss_var/gen.")
    reference, diffs = summary_differences(rows, columns)
    ti_differences = [d["loglik_ti"].delta for d in diffs.values() if d.get("loglik_ti") is not None]
    lines += ["### Held-out log-likelihood protocol", ""]
    lines += protocol_sentences(protocol_check(runs), reference, ti_differences) + [""]
    lines += _figure_section(
        "Bias and variance of the training estimate of log p(x)", "training_estimate", written,
        "Left: each run's own training estimator of log p(x) (ti: the trapezoid on its training ladder; "
        "vanilla: E log p(x|z⁺) over posterior samples) minus the held-out protocol's TI estimate on the same "
        "examples, mean over examples, against iteration; error bars ±1 standard error over examples. Right: "
        "the training estimator's variance over chain draws, mean over examples, log scale.",
        "no run logged loglik/train_bias or loglik/train_var.")
    bias_lines = training_estimate_sentences(rows)
    if bias_lines:
        lines += ["The training estimate against the protocol at the last logged step, mean over seeds (SE: of "
                  "that mean, from the runs' own standard errors over examples):", ""] + bias_lines + [""]
    steps = sorted({s for (_, _, s) in data.integrands.values()})
    lines += _figure_section(
        "Temperature ladders and the TI integrand", "ti_schedule", written,
        "Left: the rungs t_i = (i/(N−1))^p of each ti group (dotted: p = 1); p < 1 packs rungs near the "
        "posterior (t = 1), p > 1 near the prior (t = 0). "
        + ("Dashed: an adaptive group's ladder at its last logged step (mean over seeds); a group with replica "
           "exchange shares its power's ladder. " if data.ladders else "")
        + "Right: the integrand E_t = E_{π_t}[log p(x|z)] on "
        f"those rungs at the last logged training step (step {', '.join(map(str, steps))}), batch mean, mean "
        "over seeds; log p̂(x) is the trapezoid area under it, so rungs belong where it bends.",
        "no ti run logged rung_log_lik.")
    lines += _figure_section(
        "Adaptive ladders: rung placement over training", "rung_placement", written,
        "Each rung t_i of each adaptive ladder against iteration, mean over seeds of the ladder the logged "
        "training step ran on (rung_t/i), from t_0 = 0 at the bottom to t_{N−1} = 1 at the top; the ladder "
        "starts as the power ladder of its starting p and is re-placed every ti.adapt_every steps at equal "
        "thermodynamic length (docs/design.md §3). The short bars right of the dotted line are the fixed power "
        "ladders of the study's other ti groups, for reference: rungs crowded near t = 0 resemble p > 1. The "
        "table gives the final ladder and the power ladder closest to it.",
        "no run logged rung_t/… (no ti run with an adaptive ladder, ti.adapt_every > 0).")
    if data.ladders:
        lines += ["Final adapted ladder (each run's last logged t_i, mean ± sample standard deviation over "
                  "seeds), the power p whose ladder (i/(N−1))^p is closest to that mean in least squares over "
                  "the inner rungs (with the RMS distance), and the fixed ladders for reference:", "",
                  ladder_markdown(data.ladders, data.references)]
    lines += _figure_section(
        "Replica exchange: swap acceptance", "swap_acceptance", written,
        "Left: the fraction of accepted swaps between neighbouring rungs (i, i+1) against iteration, over the "
        "exchange rounds, chains and examples of the logged training step (swap_accept/i), mean over seeds. "
        "Right: each pair's value at the last logged step, mean over seeds with ± the seeds' standard deviation, "
        "dots the seeds. A pair that rarely swaps is where the ladder's neighbouring posteriors overlap least.",
        "no run logged swap_accept/… (no ti run with replica exchange, ti.exchange_every > 0).")
    if data.swaps:
        lines += ["Final swap acceptance per pair (each run's last logged value, mean ± sample standard "
                  "deviation over seeds):", "", swap_markdown(data.swaps)]
    lines += _figure_section(
        "Final samples", "samples", written,
        "The last sample grid of each group's first seed (prior Langevin chain, then the generator mean).",
        "no run wrote samples/samples_*.png.")

    differences = difference_sentences(rows, columns)
    if differences:
        lines += ["## Differences between groups", "",
                  "Final means against the reference group, and each replica-exchange or adaptive-ladder "
                  f"group's against the fixed-ladder group it modifies; beyond the seed spread: "
                  f"|Δ| > {SPREAD_FACTOR:g} standard errors of the difference, √(s₁²/n₁ + s₂²/n₂) over seeds.",
                  ""] + differences + [""]
    also = ("[summary.csv](summary.csv), [differences.csv](differences.csv), [rungs.csv](rungs.csv) and "
            if "rungs_csv" in written else "[summary.csv](summary.csv), [differences.csv](differences.csv) and ")
    lines += ["## Summary", "", f"Also as {also}[summary.md](summary.md).", "", table]
    machine_lines = _machine_lines(machine, wall_seconds)
    if machine_lines:
        lines += ["## Machine and time", ""] + machine_lines + [""]
    return "\n".join(lines)
