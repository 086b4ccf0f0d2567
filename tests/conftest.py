"""pytest hooks: print the table of exact-answer comparisons that `mc.check_close` recorded."""

from mc import RECORDS


def pytest_terminal_summary(terminalreporter):
    if not RECORDS:
        return
    tr = terminalreporter
    tr.section("exact-answer comparisons (worst coordinate: error vs tolerance)")
    width = max(len(r[0]) for r in RECORDS)
    for name, err, tol, status in RECORDS:
        tr.write_line(f"{name:<{width}}  error {err:10.3e}  tolerance {tol:10.3e}  ratio {err / tol:5.2f}  {status}")
