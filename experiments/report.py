r"""The report of a variance study: figures, summary table (CSV and Markdown), the groups' differences from
the reference group (differences.csv) and report.md.

    python -m experiments.report --workdir runs/study [--out runs/study/report]

Reads <workdir>/study.json and <workdir>/runs/*/ (see lebm_jax/study/layout.py); the study runner calls the
same function when it finishes, so this is for a study still running or stopped.

Errors: a directory without runs or an --out that is (or lies under) a file end with one line
`error: ...` on stderr and a non-zero exit status; --traceback prints the full Python traceback instead.
"""

from absl import flags

from experiments import _cli

flags.adopt_module_key_flags(_cli)  # --traceback in --helpshort

_WORKDIR = flags.DEFINE_string("workdir", None, "A study workdir (experiments.study --workdir).")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: <workdir>/report).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    _cli.no_arguments(argv)
    if _OUT.value:
        _cli.require_directory(_OUT.value, "--out")
    from lebm_jax.study import report

    paths = report.make_report(_WORKDIR.value, _OUT.value)  # no runs: one line from _cli.run
    for name, path in paths.items():
        print(f"{name:<20} {path}")


if __name__ == "__main__":
    _cli.run(main)
