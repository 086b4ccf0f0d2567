"""Test helpers: Monte Carlo tolerance checks that record what they measured.

Every exact-answer comparison goes through `check_close`, which asserts |estimate − exact| ≤
z·SE + bias_bound element-wise and records the worst ratio of error to tolerance. The table of
recorded comparisons is printed at the end of the run (``pytest -rA`` not needed).
"""

from __future__ import annotations

import numpy as np
Z = 5.0  # standard errors allowed: a false failure has probability ~6e-7 per coordinate

RECORDS: list[tuple[str, float, float, str]] = []


def check_close(name: str, estimate, exact, se=0.0, bias_bound=0.0, z: float = Z, atol: float = 0.0):
    """Asserts |estimate − exact| ≤ z·se + bias_bound + atol element-wise, and records the result.

    se: Monte Carlo standard error of ``estimate`` (array or scalar); bias_bound: a known bound on the
    estimator's systematic error (e.g. quadrature or step-size bias); atol: floating-point slack.
    """
    estimate, exact = np.asarray(estimate, np.float64), np.asarray(exact, np.float64)
    err = np.abs(estimate - exact)
    tol = z * np.asarray(se, np.float64) + np.asarray(bias_bound, np.float64) + atol
    tol = np.broadcast_to(tol, err.shape)
    worst = int(np.argmax(err / tol)) if err.size else 0
    e, t = float(err.ravel()[worst]), float(tol.ravel()[worst])
    RECORDS.append((name, e, t, "ok" if np.all(err <= tol) else "FAIL"))
    assert np.all(err <= tol), f"{name}: max error {e:.3g} exceeds tolerance {t:.3g}\nestimate={estimate}\nexact={exact}"


def mean_and_se(samples, axis: int = 0):
    """Sample mean and its standard error along ``axis`` (independent draws)."""
    samples = np.asarray(samples, np.float64)
    n = samples.shape[axis]
    return samples.mean(axis), samples.std(axis, ddof=1) / np.sqrt(n)


def moment_estimates(z):
    """Mean and covariance of samples z (n, d) with their standard errors, from the samples themselves.

    The covariance's SE is that of the mean of the products (z_i − z̄_i)(z_j − z̄_j).
    """
    z = np.asarray(z, np.float64)
    mean, mean_se = mean_and_se(z)
    zc = z - mean
    prods = zc[:, :, None] * zc[:, None, :]  # (n, d, d)
    cov, cov_se = mean_and_se(prods)
    n = z.shape[0]
    return mean, mean_se, cov * n / (n - 1), cov_se
