"""The report of a variance study: figures, a summary table and one page that ties them together.

    load      reading a study workdir: Run, Study, load_study, group_runs
    stats     curves over seeds, final mean ± std (and the runs' own SE), differences from the reference group
              against the seed spread, sample-quality names, the quality-vs-variance trend with its slope's
              intervals and p-value, the held-out log-likelihood protocol's checks, TI integrand
    figures   every plot_* and the FIGURES they are written to
    table     the summary table's columns and rows, and the differences, as CSV and Markdown
    page      make_report (writes everything into <study>/report/), the page report_page and its sentences
"""

from lebm_jax.study.report.figures import FIGURES
from lebm_jax.study.report.load import Run, Study, group_runs, load_study
from lebm_jax.study.report.page import make_report, report_page
from lebm_jax.study.report.stats import Point, fit_trend, last_common_step, quality_variance_points, series

__all__ = [
    "FIGURES", "Point", "Run", "Study", "fit_trend", "group_runs", "last_common_step", "load_study", "make_report",
    "quality_variance_points", "report_page", "series",
]
