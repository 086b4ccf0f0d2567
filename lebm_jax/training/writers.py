"""Metric writers: TensorBoard (clu) plus a JSON-lines file that plots can read without TensorBoard.

``metrics.jsonl`` is the run's record: each (step, metric) once. A resumed run first drops its rows
after the step it resumes from (logged by an attempt that stopped after its last checkpoint: killed,
or stopped by a non-finite step) and then logs those steps again, so a retry leaves no duplicate and
nothing of the failed attempt past the last good checkpoint.

TensorBoard gets one events file per start of the run, not one per run: an events file cannot be
appended to (each writer opens a new file named by time and host), and TensorBoard reads every events
file in the folder, in order, as one run. The points a stopped attempt logged after its last
checkpoint stay in its file, and the resumed run logs those steps again in its own: TensorBoard drops
such orphaned points only when a SessionLog START event marks the restart, which TF2's summary writers
(clu's) never write, so its plots may show two values at those steps. Rewriting events files to drop
them is not worth their format: read metrics.jsonl where exactly one value per step matters.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping

from absl import logging as absl_logging
from clu import metric_writers

from lebm_jax.data.files import write_atomic


class JsonlWriter(metric_writers.MetricWriter):
    """Appends one line {"step": n, name: value, ...} per `write_scalars` call to ``path``."""

    def __init__(self, path: str, keep_until: int | None = None):
        """``keep_until``: drop rows of steps after it first (a resumed run rewrites what follows)."""
        self._path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if keep_until is not None and os.path.exists(path):
            rows = [r for r in read_jsonl(path) if r["step"] <= keep_until]
            write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows).encode())
        self._file = open(path, "a", buffering=1)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        row = {"step": int(step)}
        for name, value in scalars.items():
            value = float(value)
            row[name] = value if math.isfinite(value) else str(value)  # JSON has no NaN/inf
        self._file.write(json.dumps(row) + "\n")

    def write_summaries(self, step, values, metadata=None):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def read_jsonl(path: str) -> list[dict]:
    """The rows a JsonlWriter wrote, in order; "nan"/"inf"/"-inf" strings become floats again."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{k: _NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in row.items()} for row in rows]


def create_writer(workdir: str, lead: bool, start_step: int = 0) -> metric_writers.MetricWriter:
    """TensorBoard events and ``workdir/metrics.jsonl`` on the lead process; logging only elsewhere.

    Rows of ``metrics.jsonl`` after ``start_step`` (left by a run that stopped after its last
    checkpoint) are dropped, since the resumed run logs those steps again; a fresh run starts it empty.
    The TensorBoard writer opens a new events file beside those of earlier starts (see the module's
    docstring).
    """
    if not lead:
        return metric_writers.create_default_writer(None, just_logging=True)
    keep = start_step if start_step > 0 else -1
    return metric_writers.MultiWriter([
        metric_writers.create_default_writer(workdir, asynchronous=False),
        JsonlWriter(os.path.join(workdir, "metrics.jsonl"), keep_until=keep),
    ])


class _QuietLibraries:
    """Drops INFO records of chatty libraries (orbax) from absl's log; keeps warnings and errors."""

    def filter(self, record) -> bool:
        return record.levelno > 20 or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
    handler = absl_logging.get_absl_handler()
    if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
        handler.addFilter(_QuietLibraries())
    logging.getLogger("absl").addFilter(_QuietLibraries())
