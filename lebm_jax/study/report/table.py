"""The summary table: one row per group, each column a final metric as mean ± std over seeds, as CSV
(summary.csv) and Markdown (summary.md). Both depend only on the study's files (no timestamps).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math

from lebm_jax.study.layout import number
from lebm_jax.study.report.load import Run
from lebm_jax.study.report.stats import QualityNames, Stat, final_stat, wall_stat


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
            "power": "/".join(number(p) for p in powers),
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

