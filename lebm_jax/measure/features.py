"""Feature spaces images are compared in, and the reference statistics of a data set in each.

A `FeatureSpace` embeds images (N, H, W, C) in [−1, 1] as features (N, d): Inception-v3 (the FID
network, `lebm_jax.measure.inception`) or the data set's own classifier (`lebm_jax.measure.classifier`).
Reference statistics are cached per (data set, split, size, data digest, feature space, extractor)
in ``cache_dir("reference_stats")`` (design.md §6).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Callable

import numpy as np

from lebm_jax.data.datasets import ImageData
from lebm_jax.data.images import to_float
from lebm_jax.measure import classifier, inception, metrics

FEATURE_SPACES = ("auto", "inception", "classifier", "none")


@dataclasses.dataclass(frozen=True)
class FeatureSpace:
    """A named embedding of images (N, H, W, C) in [-1, 1] -> features (N, d) float32."""

    name: str  # "inception" | "classifier"
    features: Callable[[np.ndarray], np.ndarray]
    identity: str  # distinguishes extractors of one name (the classifier's data digest); part of the cache key
    info: dict  # e.g. {"classifier_test_accuracy": 0.97}


def _inception_space(batch_size: int, download: bool) -> FeatureSpace:
    params = inception.load_fid_params(download=download)
    return FeatureSpace("inception", inception.make_feature_fn(params, batch_size=min(batch_size, 100)),
                        "pt_inception-2015-12-05", {})


def _classifier_space(data: ImageData) -> FeatureSpace:
    fn, info = classifier.load_or_train(data)
    return FeatureSpace("classifier", fn, info.params_sha256[:16], {"classifier_test_accuracy": info.test_accuracy})


def feature_space(choice: str, data: ImageData, batch_size: int = 500) -> FeatureSpace | None:
    """The feature space ``eval.feature_space`` names; None for "none".

    "auto": Inception when its weight file is already on disk (never downloads), else the data set's own
    classifier when it has labels, else None (logged). "inception" fetches the weights once if needed and
    fails with a message saying where to put them when it cannot.
    """
    if choice == "none":
        return None
    if choice == "inception":
        return _inception_space(batch_size, download=True)
    if choice == "classifier":
        return _classifier_space(data)
    if choice != "auto":
        raise ValueError(f"eval.feature_space={choice!r} is not one of {', '.join(FEATURE_SPACES)}")
    try:
        return _inception_space(batch_size, download=False)
    except FileNotFoundError:
        pass
    if data.train_labels is not None and data.test_labels is not None:
        logging.info("eval.feature_space=auto: no Inception weights on disk; using the %s classifier", data.name)
        return _classifier_space(data)
    logging.warning("eval.feature_space=auto: no Inception weights on disk and %s has no labels: "
                    "no sample-quality metrics", data.name)
    return None


def _data_identity(data: ImageData) -> str:
    """A short digest of the training images (a changed npz/folder data set never reuses old statistics)."""
    h = hashlib.sha256()
    h.update(str(data.train.shape).encode())
    h.update(np.ascontiguousarray(data.train).tobytes())
    return h.hexdigest()[:12]


def reference_statistics(space: FeatureSpace, data: ImageData, max_reference: int,
                         max_features: int = metrics.MAX_REFERENCE_FEATURES) -> metrics.ReferenceStatistics:
    """Feature statistics of (up to ``max_reference``) training images, computed once and cached."""
    train = data.train[:max_reference]
    h, w, c = train.shape[1:]
    key = (f"{data.name}-train{len(train)}-{h}x{w}x{c}-{_data_identity(data)}-{space.name}-{space.identity}")
    return metrics.cached_reference_statistics(
        key, lambda: space.features(to_float(train)), max_features=max_features
    )
