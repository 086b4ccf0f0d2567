"""Sample-quality metrics on feature vectors (docs/design.md §6), in float64 NumPy.

Features are rows f ∈ R^d of a (n, d) array from some feature space (Inception pool3, a digit classifier).

- Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2) (Heusel et al. 2017; "FID" only in Inception space):
      FD = ||μ1 − μ2||² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^{1/2},
  μ, Σ the sample mean and unbiased (n − 1) covariance of the features. Its standard error is bootstrapped
  over the generated set (resampled with replacement) against fixed reference statistics.
- KID (Bińkowski et al. 2018): the unbiased MMD² with the cubic kernel k(x, y) = (xᵀy/d + 1)³,
      MMD²_u = Σ_{i≠j} k(x_i, x_j)/(m(m−1)) + Σ_{i≠j} k(y_i, y_j)/(n(n−1)) − 2 Σ_{i,j} k(x_i, y_j)/(mn),
  averaged over random subsets of both sets (clean-fid / torch-fidelity: 100 subsets of 1000).
- FID∞ / KID∞ (Chong & Forsyth 2020): the metric at several sample sizes N, an ordinary least-squares
  line in 1/N, and its intercept (the value at N = ∞) with the intercept's OLS standard error.
- Precision and recall (Kynkäänniemi et al. 2019): each point's ball reaches its k-th nearest other point of
  its own set; precision = fraction of generated points inside some real ball, recall = fraction of real
  points inside some generated ball.

Reference statistics (μ, Σ over the whole reference set, and a deterministic subsample of its features for
KID and precision/recall) are computed once per data set and feature space and cached on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import zipfile
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from lebm_jax.data.files import cache_dir, write_atomic

INCEPTION = "inception"  # the one feature space whose Fréchet distance is called FID
MAX_REFERENCE_FEATURES = 10_000  # rows of reference features kept for KID and precision/recall
SUBSAMPLE_SEED = 0  # the reference subsample is a prefix of one fixed permutation
MIN_EXTRAPOLATION_POINTS = 5


def _as_features(features, name: str = "features", min_rows: int = 2) -> np.ndarray:
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a (n, d) array, got shape {x.shape}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} has {x.shape[0]} rows; at least {min_rows} are needed")
    return x


def _same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")


# ---------------------------------------------------------------- Fréchet distance


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased (n − 1) covariance (d, d) of features (n, d), in float64 (as pytorch-fid)."""
    x = _as_features(features)
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))  # np.cov gives a scalar when d = 1


def psd_sqrt(sigma) -> np.ndarray:
    """Σ^{1/2} of a symmetric positive semi-definite Σ, from its eigendecomposition; eigenvalues that
    round-off makes slightly negative are clipped at 0."""
    w, v = np.linalg.eigh(np.asarray(sigma, np.float64))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1, sigma2, *, sqrt1: np.ndarray | None = None) -> float:
    """tr (Σ1 Σ2)^{1/2} for PSD Σ1, Σ2: the sum of the singular values of Σ1^{1/2} Σ2^{1/2}.

    (Σ1 Σ2 is similar to Σ1^{1/2} Σ2 Σ1^{1/2} = A Aᵀ with A = Σ1^{1/2} Σ2^{1/2}, so the eigenvalues of its
    square root are the singular values of A.) Taking them from A rather than from the eigenvalues of
    A Aᵀ avoids squaring: a zero eigenvalue computed as ε·||A||² would otherwise contribute √ε·||A||.
    Singular values are never negative, so rank-deficient covariances give a finite real number.
    ``sqrt1``: Σ1^{1/2} when already known.
    """
    r1 = psd_sqrt(sigma1) if sqrt1 is None else sqrt1
    return float(np.sum(np.linalg.svd(r1 @ psd_sqrt(sigma2), compute_uv=False)))


def frechet_distance(mu1, sigma1, mu2, sigma2, *, sqrt1: np.ndarray | None = None) -> float:
    """||μ1 − μ2||² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^{1/2} in float64, clipped at 0.

    For PSD inputs tr (Σ1 Σ2)^{1/2} is the trace of scipy.linalg.sqrtm(Σ1 Σ2) that pytorch-fid uses; it is
    computed here from symmetric eigendecompositions and an SVD (see ``trace_sqrt_product``), so singular
    covariances (fewer samples than dimensions) give no NaN or complex values.
    ``sqrt1``: Σ1^{1/2} when already known (e.g. of fixed reference statistics).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shapes do not match: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2, sqrt1=sqrt1)
    return max(float(fd), 0.0)


def frechet_distance_se(gen_features, ref_mu, ref_sigma, num_resamples: int, seed: int = 0, *,
                        ref_sqrt: np.ndarray | None = None) -> float:
    """Bootstrap standard error of the Fréchet distance of gen_features (n, d) to N(ref_mu, ref_sigma).

    Each of ``num_resamples`` (≥ 2) resamples draws n rows of gen_features with replacement and recomputes
    the distance against the same reference statistics; the standard error is the sample standard deviation
    (ddof = 1) of those distances. Only the generated set is resampled: the reference statistics come from a
    fixed, usually much larger, set and are treated as exact. The resamples come from
    ``np.random.default_rng(seed)``, so the result depends on the features and the seed only.

    Cost: per resample one covariance (n d²), one eigendecomposition and one SVD (d³), as much as the
    distance itself. Negligible for classifier features (d ~ 100); for 2048-d Inception features of 10,000
    samples about 15 s per resample on two CPU cores, so the default 20 resamples add about 5 minutes to
    each evaluation there. ``ref_sqrt``: Σ_ref^{1/2} when already known.
    """
    x = _as_features(gen_features, "gen_features")
    if num_resamples < 2:
        raise ValueError(f"num_resamples={num_resamples!r} must be >= 2 (a standard deviation needs two)")
    ref_sqrt = psd_sqrt(ref_sigma) if ref_sqrt is None else ref_sqrt
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    values = [frechet_distance(ref_mu, ref_sigma, *feature_statistics(x[rng.integers(0, n, n)]), sqrt1=ref_sqrt)
              for _ in range(num_resamples)]
    return float(np.std(values, ddof=1))


# ---------------------------------------------------------------- KID


def _cubic_kernel_sum(x: np.ndarray, y: np.ndarray, block: int) -> float:
    """Σ_{i,j} (x_iᵀy_j/d + 1)³, in row blocks of x: memory (block, len(y))."""
    d = x.shape[1]
    return float(sum(np.sum((x[i : i + block] @ y.T / d + 1.0) ** 3) for i in range(0, x.shape[0], block)))


def _cubic_kernel_offdiag_sum(x: np.ndarray, block: int) -> float:
    """Σ_{i≠j} (x_iᵀx_j/d + 1)³."""
    diag = (np.einsum("ij,ij->i", x, x) / x.shape[1] + 1.0) ** 3
    return _cubic_kernel_sum(x, x, block) - float(np.sum(diag))


def _mmd2_from_sums(xx: float, yy: float, xy: float, m: int, n: int) -> float:
    return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2.0 * xy / (m * n)


def mmd2_unbiased(f1, f2, *, block: int = 1024) -> float:
    """Unbiased MMD² between the sets f1 (m, d) and f2 (n, d) with k(x, y) = (xᵀy/d + 1)³ (module docstring):
    within-set sums exclude i = j, the cross sum keeps all pairs. Can be negative."""
    x, y = _as_features(f1, "f1"), _as_features(f2, "f2")
    _same_dim(x, y)
    return _mmd2_from_sums(_cubic_kernel_offdiag_sum(x, block), _cubic_kernel_offdiag_sum(y, block),
                           _cubic_kernel_sum(x, y, block), x.shape[0], y.shape[0])


def kernel_inception_distance(f1, f2, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
                              ) -> tuple[float, float]:
    """KID: mean and standard deviation (ddof 0, as torch-fidelity) of ``mmd2_unbiased`` over
    ``num_subsets`` pairs of random subsets, each drawn without replacement from f1 and from f2, of size
    min(subset_size, n1, n2). Each subset value is unbiased, so their mean is too."""
    x, y = _as_features(f1, "f1"), _as_features(f2, "f2")
    _same_dim(x, y)
    if num_subsets < 1:
        raise ValueError(f"num_subsets={num_subsets!r} must be >= 1")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"subset_size={subset_size!r}: subsets need at least 2 rows")
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(x[rng.choice(x.shape[0], m, replace=False)], y[rng.choice(y.shape[0], m, replace=False)])
              for _ in range(num_subsets)]
    return float(np.mean(values)), float(np.std(values))


# ---------------------------------------------------------------- FID∞ / KID∞


class Extrapolation(NamedTuple):
    """value(N) ≈ intercept + slope / N; intercept is the value at N = ∞."""

    intercept: float
    standard_error: float  # OLS standard error of the intercept
    slope: float


def extrapolate_to_infinity(sizes, values) -> Extrapolation:
    """Ordinary least squares of values against x = 1/N: y = a + b x, with the intercept's standard error

        se(a)² = s² (1/K + x̄² / Σ(x − x̄)²),    s² = Σ residual² / (K − 2),

    over K ≥ 3 points with at least 2 distinct sizes (Chong & Forsyth 2020 take a and call it FID∞)."""
    n = np.asarray(sizes, np.float64)
    y = np.asarray(values, np.float64)
    if n.ndim != 1 or n.shape != y.shape:
        raise ValueError(f"sizes {n.shape} and values {y.shape} must be 1-d of one length")
    if n.size < 3 or np.unique(n).size < 2:
        raise ValueError(f"a line with a standard error needs >= 3 points and >= 2 distinct sizes; got {list(sizes)}")
    if np.any(n <= 0):
        raise ValueError(f"sizes must be positive; got {list(sizes)}")
    x = 1.0 / n
    x_mean, y_mean = x.mean(), y.mean()
    sxx = np.sum((x - x_mean) ** 2)
    slope = np.sum((x - x_mean) * (y - y_mean)) / sxx
    intercept = y_mean - slope * x_mean
    residual_var = np.sum((y - intercept - slope * x) ** 2) / (n.size - 2)
    se = np.sqrt(residual_var * (1.0 / n.size + x_mean**2 / sxx))
    return Extrapolation(float(intercept), float(se), float(slope))


def extrapolation_sizes(num_samples: int, num_points: int = 15, sizes=None, min_size: int = 2) -> np.ndarray:
    """Sample sizes for FID∞ / KID∞: ``sizes`` as given (checked), else ``num_points`` sizes evenly spaced
    in 1/N from N = max(min_size, num_samples // 5) to N = num_samples, rounded, duplicates dropped
    (Chong & Forsyth use 15 sizes from 5000 to 50000). Raises unless there are >= 5 distinct sizes."""
    if sizes is None:
        lo = max(2, min_size, num_samples // 5)
        sizes = np.unique(np.round(1.0 / np.linspace(1.0 / lo, 1.0 / num_samples, num_points)).astype(int))
    sizes = np.asarray(sizes, int)
    if sizes.ndim != 1 or np.any(sizes < 2) or np.any(sizes > num_samples):
        raise ValueError(f"sizes must lie between 2 and the {num_samples} samples; got {sizes.tolist()}")
    if np.unique(sizes).size < MIN_EXTRAPOLATION_POINTS:
        raise ValueError(f"extrapolating to N = ∞ needs >= {MIN_EXTRAPOLATION_POINTS} distinct sample sizes; "
                         f"{num_samples} samples give {np.unique(sizes).tolist()} (pass more samples or sizes)")
    return sizes


def _subsets(num_samples: int, sizes: np.ndarray, seed: int):
    """An independent random subset (without replacement) of each size."""
    rng = np.random.default_rng(seed)
    return [rng.choice(num_samples, int(s), replace=False) for s in sizes]


def fid_infinity(gen_features, ref_mu, ref_sigma, sizes=None, num_points: int = 15, seed: int = 0
                 ) -> Extrapolation:
    """FID∞: the Fréchet distance of random subsets of gen_features (n, d) of each size N to
    N(ref_mu, ref_sigma), extrapolated linearly in 1/N to N = ∞.

    FD_N is linear in 1/N only for N well above d, so the default sizes (``extrapolation_sizes``) start at
    N = max(n/5, min(2d, n/2)): at 2d when n ≥ 4d; for 2048-d Inception features that asks for n ≥ 8192.
    Costs one eigendecomposition and one SVD of a (d, d) matrix per size.
    """
    x = _as_features(gen_features, "gen_features")
    sizes = extrapolation_sizes(x.shape[0], num_points, sizes, min_size=min(2 * x.shape[1], x.shape[0] // 2))
    ref_sqrt = psd_sqrt(ref_sigma)
    values = []
    for idx in _subsets(x.shape[0], sizes, seed):
        mu, sigma = feature_statistics(x[idx])
        values.append(frechet_distance(ref_mu, ref_sigma, mu, sigma, sqrt1=ref_sqrt))
    return extrapolate_to_infinity(sizes, values)


def kid_infinity(gen_features, ref_features, sizes=None, num_points: int = 15, seed: int = 0, *,
                 block: int = 1024) -> Extrapolation:
    """KID∞: ``mmd2_unbiased`` of random subsets of gen_features of each size N against all of
    ref_features, extrapolated linearly in 1/N. Each value is unbiased, so the slope is ~0 in expectation
    and the intercept's standard error measures the estimate's spread. Cost O(N (N + n_ref) d) per size."""
    x, y = _as_features(gen_features, "gen_features"), _as_features(ref_features, "ref_features")
    _same_dim(x, y)
    sizes = extrapolation_sizes(x.shape[0], num_points, sizes)
    yy = _cubic_kernel_offdiag_sum(y, block)  # the reference's within-set sum, shared by every size
    values = []
    for idx in _subsets(x.shape[0], sizes, seed):
        xs = x[idx]
        values.append(_mmd2_from_sums(_cubic_kernel_offdiag_sum(xs, block), yy, _cubic_kernel_sum(xs, y, block),
                                      xs.shape[0], y.shape[0]))
    return extrapolate_to_infinity(sizes, values)


# ---------------------------------------------------------------- precision and recall


def _squared_distances(a: np.ndarray, b: np.ndarray, a_sq: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """||a_i − b_j||² (len a, len b), clipped at 0 against round-off."""
    return np.maximum(a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T), 0.0)


def knn_radii(features, k: int = 3, *, block: int = 1024) -> np.ndarray:
    """Squared distance from each row of features (n, d) to its k-th nearest other row, in row blocks."""
    x = _as_features(features)
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k={k!r} must be between 1 and n − 1 = {n - 1}")
    sq = np.einsum("ij,ij->i", x, x)
    radii = np.empty(n)
    for i in range(0, n, block):
        d = _squared_distances(x[i : i + block], x, sq[i : i + block], sq)  # (b, n)
        rows = np.arange(d.shape[0])
        d[rows, i + rows] = 0.0  # the point itself, exactly: sorted position 0; the k-th other is at k
        radii[i : i + block] = np.partition(d, k, axis=1)[:, k]
    return radii


def precision_recall(real, gen, k: int = 3, block: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of gen (m, d) against real (n, d).

    precision = (1/m) Σ_g 1[∃ r: ||g − r|| ≤ ρ_k(r)],   recall = (1/n) Σ_r 1[∃ g: ||r − g|| ≤ ρ_k(g)],
    ρ_k(p) the distance from p to its k-th nearest other point of its own set. Distances are computed in
    blocks of ``block`` rows, so memory is O(block · max(m, n)).
    """
    x, y = _as_features(real, "real"), _as_features(gen, "gen")
    _same_dim(x, y)
    r_real, r_gen = knn_radii(x, k, block=block), knn_radii(y, k, block=block)
    x_sq, y_sq = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
    gen_covered = np.zeros(y.shape[0], bool)  # inside some real ball
    real_covered = np.zeros(x.shape[0], bool)  # inside some generated ball
    for i in range(0, y.shape[0], block):
        d = _squared_distances(y[i : i + block], x, y_sq[i : i + block], x_sq)  # (b, n)
        gen_covered[i : i + block] = np.any(d <= r_real[None, :], axis=1)
        real_covered |= np.any(d <= r_gen[i : i + block, None], axis=0)
    return float(gen_covered.mean()), float(real_covered.mean())


# ---------------------------------------------------------------- reference statistics and their cache


@dataclasses.dataclass(frozen=True, eq=False)
class ReferenceStatistics:
    """What sample quality is measured against: μ (d,) and Σ (d, d) of all num_examples reference
    features, and features (≤ MAX_REFERENCE_FEATURES, d): a fixed-seed random subsample of them (the
    first rows of one permutation) for KID and precision/recall, whose cost grows with its size."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    num_examples: int
    key: str

    @classmethod
    def from_features(cls, features, key: str, max_features: int = MAX_REFERENCE_FEATURES
                      ) -> ReferenceStatistics:
        if max_features < 2:
            raise ValueError(f"max_features={max_features!r} must be >= 2")
        features = np.asarray(features)
        mu, sigma = feature_statistics(features)
        order = np.random.default_rng(SUBSAMPLE_SEED).permutation(features.shape[0])
        return cls(mu, sigma, features[order[:max_features]], int(features.shape[0]), key)

    def save(self, path) -> None:
        """Writes an .npz atomically (a temporary file renamed into place)."""
        write_atomic(path, lambda f: np.savez(f, mu=self.mu, sigma=self.sigma, features=self.features,
                                              num_examples=np.int64(self.num_examples), key=np.str_(self.key)))

    @classmethod
    def load(cls, path) -> ReferenceStatistics:
        with np.load(path, allow_pickle=False) as z:
            stats = cls(z["mu"], z["sigma"], z["features"], int(z["num_examples"]), str(z["key"]))
        d = stats.mu.shape[0]
        if stats.mu.ndim != 1 or stats.sigma.shape != (d, d) or stats.features.shape[1:] != (d,):
            raise ValueError(f"{path}: inconsistent shapes mu {stats.mu.shape}, sigma {stats.sigma.shape}, "
                             f"features {stats.features.shape}")
        return stats


def cache_file_name(key: str) -> str:
    """A file name for a cache key: runs of characters other than letters, digits, '.', '_', '-' become
    '_', and a hash of the exact key is appended so that keys which sanitise alike stay apart."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._") or "key"
    return f"{safe[:100]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"


def cached_reference_statistics(key: str, compute_features: Callable[[], np.ndarray],
                                max_features: int = MAX_REFERENCE_FEATURES, directory=None
                                ) -> ReferenceStatistics:
    """Reference statistics for ``key`` (e.g. f"{dataset}-{split}-{size}x{channels}-{feature_space}"),
    loaded from ``directory`` (default: cache_dir("reference_stats")), else computed from
    ``compute_features()`` (n, d) once and saved. An unreadable cache file, or one written for another key
    or with fewer subsampled features than asked for, is recomputed with a warning."""
    directory = Path(directory) if directory is not None else cache_dir("reference_stats")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / cache_file_name(key)
    if path.exists():
        try:
            stats = ReferenceStatistics.load(path)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            logging.warning("reference statistics %s are unreadable (%s: %s); recomputing", path, type(e).__name__, e)
        else:
            wanted = min(max_features, stats.num_examples)
            if stats.key == key and stats.features.shape[0] >= wanted:
                return dataclasses.replace(stats, features=stats.features[:wanted])
            logging.warning("reference statistics %s were written for key %r with %d features; recomputing",
                            path, stats.key, stats.features.shape[0])
    stats = ReferenceStatistics.from_features(compute_features(), key, max_features)
    stats.save(path)
    return stats


# ---------------------------------------------------------------- the scalars a training loop logs


def metric_name(metric: str, feature_space: str) -> str:
    """The logged name of a metric in a feature space.

    In the Inception space names are the usual ones, with the Fréchet distance called "fid"
    ("fd" → "fid", "fd_inf" → "fid_inf", "kid" → "kid"). In any other space the Fréchet distance keeps
    "fd" and every name gets the suffix "_<space>" ("fd_classifier", "kid_std_classifier"): a Fréchet
    distance outside Inception space is never called FID.
    """
    if not re.fullmatch(r"[a-z0-9]+", feature_space):
        raise ValueError(f"feature_space={feature_space!r} must be lower-case letters and digits")
    if feature_space == INCEPTION:
        return "fid" + metric[2:] if metric == "fd" or metric.startswith("fd_") else metric
    return f"{metric}_{feature_space}"


def sample_quality(gen_features, ref: ReferenceStatistics, feature_space: str, *, kid_subsets: int = 100,
                   kid_subset_size: int = 1000, k: int = 3, infinity: bool = False, infinity_sizes=None,
                   fd_bootstrap: int = 0, seed: int = 0) -> dict[str, float]:
    """Scalars comparing generated features (n, d) with reference statistics, named by ``metric_name``:

    fd (against ref μ, Σ), with ``fd_bootstrap`` ≥ 2 its bootstrap standard error fd_se over that many
    resamples of the generated set (``frechet_distance_se``; 0: none), kid and kid_std (against
    ref.features), precision and recall (k-NN balls, on min(n, len(ref.features)) rows of each set, since
    both depend on the set sizes), and with ``infinity`` fd_inf, fd_inf_se, kid_inf, kid_inf_se (sizes from
    ``extrapolation_sizes`` unless given).
    """
    x = _as_features(gen_features, "gen_features")
    if x.shape[1] != ref.mu.shape[0]:
        raise ValueError(f"gen_features have dimension {x.shape[1]}, reference statistics {ref.mu.shape[0]}")
    mu, sigma = feature_statistics(x)
    kid, kid_std = kernel_inception_distance(x, ref.features, kid_subsets, kid_subset_size, seed)
    m = min(x.shape[0], ref.features.shape[0])
    rng = np.random.default_rng(seed)
    precision, recall = precision_recall(ref.features[rng.choice(ref.features.shape[0], m, replace=False)],
                                         x[rng.choice(x.shape[0], m, replace=False)], k)
    values = {"fd": frechet_distance(mu, sigma, ref.mu, ref.sigma), "kid": kid, "kid_std": kid_std,
              "precision": precision, "recall": recall}
    if fd_bootstrap:
        values["fd_se"] = frechet_distance_se(x, ref.mu, ref.sigma, fd_bootstrap, seed)
    if infinity:
        fd_inf = fid_infinity(x, ref.mu, ref.sigma, infinity_sizes, seed=seed)
        kid_inf = kid_infinity(x, ref.features, infinity_sizes, seed=seed)
        values.update(fd_inf=fd_inf.intercept, fd_inf_se=fd_inf.standard_error,
                      kid_inf=kid_inf.intercept, kid_inf_se=kid_inf.standard_error)
    return {metric_name(name, feature_space): float(v) for name, v in values.items()}
