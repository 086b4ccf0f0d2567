"""The summary table: one row per group, each column a final metric as mean ± std over seeds (with the
runs' own standard error where the metric logs one), as CSV (summary.csv) and Markdown (summary.md); and
each group's differences from the reference group, and each replica-exchange or adaptive-ladder group's from
the fixed-ladder group it modifies, marked as within or beyond the seed spread (differences.csv and further
Markdown tables); and the final adapted ladders and swap acceptances of the
groups that logged them (rungs.csv and two Markdown tables for report.md). All depend only on the study's
files (no timestamps).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math

import numpy as np

from lebm_jax.study.layout import number, ti_group
from lebm_jax.study.report.load import Run
from lebm_jax.study.report.stats import (SPREAD_FACTOR, Difference, IndexedCurves, QualityNames, Stat, closest_power,
                                         difference, final_stat, reference_group, wall_stat)


@dataclasses.dataclass(frozen=True)
class Column:
    """A summary column: the logged key, the CSV stem (``<stem>_mean``, ``<stem>_std``, with ``se_key``
    also ``<stem>_se``), its header, the key of the standard error the metric logs beside it, and whether
    groups are compared on it (diagnostics of the measurement itself are not)."""

    key: str
    stem: str
    header: str
    se_key: str | None = None
    compare: bool = True


def summary_columns(names: QualityNames) -> list[Column]:
    quality = []
    if names.space is not None:
        quality = [Column(names.key("fd"), names.column("fd"), names.short("fd"), names.key("fd_se"))]
        quality += [Column(names.key(m), names.column(m), names.short(m)) for m in ("kid", "precision", "recall")]
    return quality + [
        Column("heldout/recon_mse", "recon_mse", "held-out recon. MSE"),
        Column("loglik/ti", "loglik_ti", "held-out log p̂(x) by TI", "loglik/ti_se"),
        Column("loglik/ais", "loglik_ais", "held-out log p̂(x) by AIS", "loglik/ais_se"),
        Column("loglik/ti_minus_ais", "loglik_ti_minus_ais", "TI − AIS", "loglik/ti_minus_ais_se", compare=False),
        Column("loglik/ti_half_diff", "loglik_ti_half_diff", "TI full − half ladder", compare=False),
        Column("loglik/train_bias", "loglik_train_bias", "training-estimate bias", "loglik/train_bias_se"),
        Column("loglik/train_var", "loglik_train_var", "training-estimate var."),
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
            "base": base_group(group, runs),
            "variant": "/".join(sorted({r.variant for r in runs})),
            "power": "/".join(number(p) for p in powers),
            "batch_size": "/".join(str(b) for b in batches),
            "seeds": len(runs),
            "unfinished": sum(not r.finished for r in runs),
            "steps": str(steps[0]) if len(steps) == 1 else f"{steps[0]}–{steps[-1]}",
            "stats": {c.stem: final_stat(runs, c.key, c.se_key) for c in columns},
            "wall": wall_stat(runs),
        })
    return rows


def base_group(group: str, runs: list[Run]) -> str | None:
    """The fixed-ladder group a replica-exchange or adaptive-ladder group modifies ("ti p=1 +RE" and
    "ti adaptive (from p=1)" → "ti p=1", with the same " B=<b>" suffix); None for any other group, or when the
    group's runs do not share one power and one option."""
    kinds = {(r.power, r.exchange_every > 0, r.adapt_every > 0) for r in runs}
    if len(kinds) != 1:
        return None
    power, exchange, adapt = kinds.pop()
    if power is None or not (exchange or adapt):
        return None
    stem = ti_group(power, int(exchange), int(adapt))
    return ti_group(power) + group[len(stem):] if group.startswith(stem) else None


def option_differences(rows: list[dict], columns: list[Column]) -> dict[str, tuple[str, dict]]:
    """{group: (its fixed-ladder group, {stem: Difference or None})} for each replica-exchange or
    adaptive-ladder group whose fixed-ladder group is in the study: what the option changed from the same
    starting power (`stats.difference`)."""
    by_group = {row["group"]: row for row in rows}

    def compare(row, base):
        return {c.stem: difference(row["stats"][c.stem], base["stats"][c.stem]) for c in columns if c.compare}

    return {row["group"]: (row["base"], compare(row, by_group[row["base"]]))
            for row in rows if row["base"] in by_group}


def summary_differences(rows: list[dict], columns: list[Column]) -> tuple[str | None, dict[str, dict]]:
    """(reference group, {group: {stem: Difference or None}}): each other group's final mean minus the
    reference group's on every compared column (`stats.difference`)."""
    reference = reference_group(row["group"] for row in rows)
    ref = next((row for row in rows if row["group"] == reference), None)
    diffs = {row["group"]: {c.stem: difference(row["stats"][c.stem], ref["stats"][c.stem])
                            for c in columns if c.compare}
             for row in rows if row["group"] != reference}
    return reference, diffs


def summary_csv(rows: list[dict], columns: list[Column]) -> str:
    """CSV text: group, variant, power, batch_size, seeds, unfinished, steps, then <stem>_mean, <stem>_std
    (sample std over seeds, ddof = 1) and, for a column with a logged standard error, <stem>_se (root mean
    square of the runs' own) per column, empty when undefined; then wall_seconds_mean, wall_seconds_std."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    fields = [(c.stem, ("mean", "std", "se") if c.se_key else ("mean", "std")) for c in columns]
    fields.append(("wall_seconds", ("mean", "std")))
    writer.writerow(["group", "variant", "power", "batch_size", "seeds", "unfinished", "steps"]
                    + [f"{s}_{m}" for s, ms in fields for m in ms])
    for row in rows:
        stats = {**row["stats"], "wall_seconds": row["wall"]}
        cells = [row[k] for k in ("group", "variant", "power", "batch_size", "seeds", "unfinished", "steps")]
        for s, ms in fields:
            stat = stats[s]
            cells += [_g(getattr(stat, m)) if stat is not None else "" for m in ms]
        writer.writerow(cells)
    return out.getvalue()


def comparisons(rows: list[dict], columns: list[Column]) -> list[tuple[str, str, dict[str, Difference | None]]]:
    """(group, reference, {stem: Difference or None}): every group against the reference group
    (`summary_differences`), then each option group against its fixed ladder (`option_differences`)."""
    reference, diffs = summary_differences(rows, columns)
    pairs = [(group, reference, by_stem) for group, by_stem in diffs.items()]
    return pairs + [(group, base, by_stem) for group, (base, by_stem) in option_differences(rows, columns).items()]


def differences_csv(pairs: list[tuple[str, str, dict[str, Difference | None]]]) -> str:
    """CSV text of `comparisons`, one line per compared pair and column: group, reference, metric (the
    column's stem), delta (group mean − reference mean), se (√(s1²/n1 + s2²/n2), empty with fewer than two
    seeds), verdict (beyond, within or n/a). Columns a group or its reference did not log are left out."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["group", "reference", "metric", "delta", "se", "verdict"])
    for group, reference, by_stem in pairs:
        for stem, d in by_stem.items():
            if d is not None:
                writer.writerow([group, reference, stem, _g(d.delta), _g(d.se), d.verdict])
    return out.getvalue()


def format_stat(stat: Stat | None) -> str:
    """"mean ± std" (4 and 3 significant digits), "mean" for one value, "—" for none; then " (SE se)"
    when the runs logged a standard error."""
    if stat is None:
        return "—"
    text = f"{stat.mean:.4g}" if not math.isfinite(stat.std) else f"{stat.mean:.4g} ± {stat.std:.3g}"
    return text + (f" (SE {stat.se:.2g})" if math.isfinite(stat.se) else "")


def format_difference(d: Difference | None) -> str:
    """"Δ ± se: verdict" (Δ with its sign), "Δ: n/a" without se, "—" when either group lacks the metric."""
    if d is None:
        return "—"
    if not math.isfinite(d.se):
        return f"{d.delta:+.3g}: n/a"
    return f"{d.delta:+.3g} ± {d.se:.2g}: {d.verdict}"


def summary_markdown(rows: list[dict], columns: list[Column]) -> str:
    """The table as Markdown, with a legend under it, then the differences from the reference group."""
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
        "seeds; — : not logged. (SE …): the root mean square of the runs' own standard errors of that value, one "
        "run's measurement error, to hold against the seed spread: for the Fréchet distance a bootstrap over the "
        "generated samples, for the held-out log-likelihoods the standard error of the mean over held-out "
        "examples. Held-out log p̂(x) is estimated on one common protocol for every run (the same test images, "
        "ladder, sampler and keys), by thermodynamic integration (TI) and by annealed importance sampling (AIS) "
        "on the same sweep; TI − AIS (paired over examples) and TI full − half ladder (the estimate on every "
        "rung minus on every other rung) check the protocol's own convergence and should be small against the "
        "differences between groups. Training-estimate bias: the run's own training estimator of log p(x) (ti: "
        "the trapezoid on its training ladder; vanilla: E log p(x|z⁺) over posterior samples) minus the protocol's "
        "TI, mean over examples; training-estimate var.: its variance over chain draws, mean over examples. "
        "Gradient variances are total variances averaged over parameter coordinates; the loss-estimate variance "
        "is the per-example variance over MCMC draws of the generator loss (−log p̂(x) for ti, −log p(x|z⁺) for "
        "vanilla). Wall time: done.json of finished runs (a resumed run counts its last attempt). Unfinished "
        "runs report their last logged step.",
    ]
    reference, diffs = summary_differences(rows, columns)
    compared = [c for c in columns if c.compare]
    if diffs:
        header = ["group"] + [c.header for c in compared]
        lines += ["", f"Differences from {reference}:", "",
                  "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for group, by_stem in diffs.items():
            lines.append("| " + " | ".join([group] + [format_difference(by_stem[c.stem]) for c in compared]) + " |")
        lines += [
            "",
            f"Group mean minus {reference}'s mean ± the standard error of that difference from both groups' seed "
            f"spreads, √(s₁²/n₁ + s₂²/n₂). beyond: |Δ| > {SPREAD_FACTOR:g} standard errors; within: not; n/a: "
            "fewer than 2 seeds in a group, so no spread to compare with. A marker of size, not a significance "
            "test: with few seeds and many columns some differences pass it by chance (see report.md).",
        ]
    options = option_differences(rows, columns)
    if options:
        header = ["group", "against"] + [c.header for c in compared]
        lines += ["", "Differences of each replica-exchange or adaptive-ladder group from the fixed-ladder group it "
                  "modifies (the same starting power):", "",
                  "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
        for group, (base, by_stem) in options.items():
            lines.append("| " + " | ".join([group, base] + [format_difference(by_stem[c.stem]) for c in compared])
                         + " |")
        lines += ["", "Group mean minus the fixed-ladder group's mean, with the same standard error and markers."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------- adaptive ladders and replica exchange
def _pm(stat: Stat | None) -> str:
    """"mean ± std" (3 and 2 significant digits), "mean" for one seed, "—" for none."""
    if stat is None:
        return "—"
    return f"{stat.mean:.3g}" if not math.isfinite(stat.std) else f"{stat.mean:.3g} ± {stat.std:.2g}"


def _seeds(curves: IndexedCurves) -> int:
    return max((st.count for st in curves.final if st is not None), default=0)


def ladder_markdown(ladders: dict[str, IndexedCurves], references: dict[str, np.ndarray]) -> str:
    """The final adapted ladder of each adaptive group (each rung's last logged t_i, mean ± seed std), the
    power ladder closest to it (`stats.closest_power`) and, as reference rows, the study's fixed ladders."""
    width = max([c.mean.shape[1] for c in ladders.values()] + [t.size for t in references.values()])
    header = ["group", "seeds", "closest power p (RMS distance)"] + [f"t_{i}" for i in range(width)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for group, curves in ladders.items():
        finals = list(curves.final) + [None] * (width - len(curves.final))
        p, rms = closest_power([st.mean if st is not None else math.nan for st in curves.final])
        closest = f"{p:.3g} ({rms:.2g})" if math.isfinite(p) else "—"
        lines.append("| " + " | ".join([group, str(_seeds(curves)), closest] + [_pm(st) for st in finals]) + " |")
    for label, ts in references.items():
        cells = [f"{t:.3g}" for t in ts] + ["—"] * (width - ts.size)
        lines.append("| " + " | ".join([f"{label} (fixed)", "", ""] + cells) + " |")
    return "\n".join(lines) + "\n"


def swap_markdown(swaps: dict[str, IndexedCurves]) -> str:
    """The final swap acceptance of each pair (i, i+1) of each replica-exchange group, mean ± seed std."""
    width = max(c.mean.shape[1] for c in swaps.values())
    header = ["group", "seeds"] + [f"({i},{i + 1})" for i in range(width)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for group, curves in swaps.items():
        finals = list(curves.final) + [None] * (width - len(curves.final))
        lines.append("| " + " | ".join([group, str(_seeds(curves))] + [_pm(st) for st in finals]) + " |")
    return "\n".join(lines) + "\n"


def rungs_csv(ladders: dict[str, IndexedCurves], swaps: dict[str, IndexedCurves]) -> str:
    """CSV text, one line per group and rung (quantity rung_t: the final adapted t_i) or pair (quantity
    swap_accept: the final acceptance of (i, i+1)): group, quantity, index, mean, std (ddof = 1, empty with
    one seed), seeds."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["group", "quantity", "index", "mean", "std", "seeds"])
    for quantity, by_group in (("rung_t", ladders), ("swap_accept", swaps)):
        for group, curves in by_group.items():
            for i, st in enumerate(curves.final):
                if st is not None:
                    writer.writerow([group, quantity, i, _g(st.mean), _g(st.std), st.count])
    return out.getvalue()
