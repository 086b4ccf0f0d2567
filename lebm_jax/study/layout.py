"""The names of a study workdir's files, shared by the runner that writes them and the report that reads them.

    study.json              the grid, the machine, and the study's wall time so far
    runs/<name>/            one training workdir per run:
        config.json             the run's training config
        metrics.jsonl           the rows `writers.JsonlWriter` wrote
        checkpoints/            what resuming an interrupted run starts from
        samples/                sample grids samples_<step:07d>.png
        done.json               written when the run has finished: {"wall_seconds", "final_step", "finished"}
    report/                 figures, tables and report.md

Run and group names spell numbers with `number` (``ti_p0.3_b50_s0`` in group ``ti p=0.3``).
"""

from __future__ import annotations

import os

STUDY_FILE = "study.json"
RUNS_DIR = "runs"
DONE_FILE = "done.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
SAMPLES_GLOB = "samples_*.png"
REPORT_DIR = "report"


def run_directory(workdir: str, name: str) -> str:
    """The training workdir of run ``name``."""
    return os.path.join(workdir, RUNS_DIR, name)


def number(value: float) -> str:
    """A number as run and group names spell it (``0.3``, ``1``, ``10``)."""
    return f"{value:g}"
