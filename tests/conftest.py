"""pytest hooks: print the table of exact-answer comparisons that `mc.check_close` recorded."""

import os
import tempfile

from mc import RECORDS

# Classifiers, reference statistics and weights the tests compute go to a fresh folder, never the user's
# cache; subprocesses inherit it.
os.environ["LEBM_JAX_CACHE"] = tempfile.mkdtemp(prefix="lebm_jax_test_cache_")


def pytest_terminal_summary(terminalreporter):
    if not RECORDS:
        return
    tr = terminalreporter
    tr.section("exact-answer comparisons (worst coordinate: error vs tolerance)")
    width = max(len(r[0]) for r in RECORDS)
    for name, err, tol, status in RECORDS:
        tr.write_line(f"{name:<{width}}  error {err:10.3e}  tolerance {tol:10.3e}  ratio {err / tol:5.2f}  {status}")
