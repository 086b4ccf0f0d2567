r"""Run a variance study: a grid of training runs (vanilla; ti per schedule power, with replica exchange, with the
adaptive ladder) × seeds, then its report.

    python -m experiments.study --config configs/study_digits.py --workdir runs/study

Runs go one after another; starting again with the same --workdir skips finished runs and resumes an
interrupted one from its checkpoint. The report lands in <workdir>/report/report.md. The runs of one seed
start from the same parameters and share the held-out log-likelihood protocol's step-0 sweep through
<workdir>/evaluation_cache/.

Errors: a bad flag or config value (of any run of the grid), an unknown --config.<field>, a --workdir
that is (or lies under) a file, a missing data set and a checkpoint that is damaged or does not fit end
with one line `error: ...` on stderr and a non-zero exit status; Ctrl-C exits with status 130 (run the
same command again to go on). --traceback prints the full Python traceback instead.
"""

from absl import flags
from ml_collections import config_flags

from experiments import _cli

flags.adopt_module_key_flags(_cli)  # --traceback in --helpshort

_CONFIG = config_flags.DEFINE_config_file("config", None, "Study config (configs/study_*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the study.")
_NO_REPORT = flags.DEFINE_bool("no_report", False, "Skip the report at the end.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    _cli.no_arguments(argv)
    # before any work: a bad workdir or value stops here with its name (one line from _cli.run)
    _cli.require_directory(_WORKDIR.value, "--workdir")
    from lebm_jax.study import grid, runner

    runs = grid.validate(_CONFIG.value)
    print(f"study {_CONFIG.value.name}: {len(runs)} runs in {_WORKDIR.value}", flush=True)
    runner.run_study(_CONFIG.value, _WORKDIR.value, report=not _NO_REPORT.value,
                     log=lambda line: print(line, flush=True))


if __name__ == "__main__":
    _cli.run(main, on_interrupt="run the same command again to go on where it stopped")
