"""The names of a study workdir's files, shared by the runner that writes them and the report that reads them.

    study.json              the grid, the machine, and the study's wall time so far
    runs/<name>/            one training workdir per run:
        config.json             the run's training config
        metrics.jsonl           the rows `writers.JsonlWriter` wrote
        checkpoints/            what resuming an interrupted run starts from
        samples/                sample grids samples_<step:07d>.png
        done.json               written when the run has finished: {"wall_seconds", "final_step", "finished"}
    evaluation_cache/       results evaluators keep for the runs to share (`training.loop`'s evaluation_cache):
        loglik/<hash>.npz       the held-out log-likelihood protocol's sweep at given parameters
                                (`measure.loglik.SweepCache`): the runs of one seed start from the same
                                parameters, so their step-0 sweep is computed once
    report/                 figures, tables and report.md

Run and group names spell numbers with `number` and are made by `ti_stem` and `ti_group` for ti runs:
``ti_p0.3_b50_s0`` in group ``ti p=0.3``, with replica exchange every 5 posterior steps ``ti_p1_re5_b50_s0``
in ``ti p=1 +RE``, with the adaptive ladder started from p = 1 ``ti_adapt_p1_b50_s0`` in
``ti adaptive (from p=1)``.
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
EVALUATION_CACHE_DIR = "evaluation_cache"


def run_directory(workdir: str, name: str) -> str:
    """The training workdir of run ``name``."""
    return os.path.join(workdir, RUNS_DIR, name)


def number(value: float) -> str:
    """A number as run and group names spell it (``0.3``, ``1``, ``10``)."""
    return f"{value:g}"


def ti_stem(power: float, batch_size: int, exchange_every: int = 0, adapt_every: int = 0) -> str:
    """The name of a ti run without its seed: ``ti_p1_b50``; ``ti_p1_re5_b50`` with replica exchange every 5
    posterior steps; ``ti_adapt_p1_b50`` with the adaptive ladder (started from p = 1)."""
    kind = "ti_adapt" if adapt_every else "ti"
    exchange = f"_re{int(exchange_every)}" if exchange_every else ""
    return f"{kind}_p{number(power)}{exchange}_b{int(batch_size)}"


def ti_group(power: float, exchange_every: int = 0, adapt_every: int = 0) -> str:
    """The group of a ti run: ``ti p=1``, ``ti p=1 +RE`` (replica exchange), ``ti adaptive (from p=1)``
    (adaptive ladder started from the power ladder of p = 1; with exchange too, `` +RE`` after it)."""
    label = f"ti adaptive (from p={number(power)})" if adapt_every else f"ti p={number(power)}"
    return label + (" +RE" if exchange_every else "")
