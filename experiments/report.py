r"""The report of a variance study: figures, summary table (CSV and Markdown) and report.md.

    python -m experiments.report --workdir runs/study [--out runs/study/report]

Reads <workdir>/study.json and <workdir>/runs/*/ (see lebm_jax/study/layout.py); the study runner calls the
same function when it finishes, so this is for a study still running or stopped.
"""

from absl import app, flags

from lebm_jax.study import report

_WORKDIR = flags.DEFINE_string("workdir", None, "A study workdir (experiments.study --workdir).")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: <workdir>/report).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        paths = report.make_report(_WORKDIR.value, _OUT.value)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    for name, path in paths.items():
        print(f"{name:<20} {path}")


if __name__ == "__main__":
    app.run(main)
