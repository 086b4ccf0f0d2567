r"""Run a variance study: a grid of training runs (vanilla, ti per schedule power) × seeds, then its report.

    python -m experiments.study --config configs/study_digits.py --workdir runs/study

Runs go one after another; starting again with the same --workdir skips finished runs and resumes an
interrupted one from its checkpoint. The report lands in <workdir>/report/report.md.
"""

from absl import app, flags
from ml_collections import config_flags

from lebm_jax.study import grid, runner

_CONFIG = config_flags.DEFINE_config_file("config", None, "Study config (configs/study_*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the study.")
_NO_REPORT = flags.DEFINE_bool("no_report", False, "Skip the report at the end.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        runs = grid.validate(_CONFIG.value)  # before any work: a bad value stops here with its name
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"study {_CONFIG.value.name}: {len(runs)} runs in {_WORKDIR.value}", flush=True)
    runner.run_study(_CONFIG.value, _WORKDIR.value, report=not _NO_REPORT.value,
                     log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    app.run(main)
