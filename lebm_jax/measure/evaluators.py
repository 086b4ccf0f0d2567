"""Evaluators: what a trained (or training) model is measured by, as functions of its parameters.

The trainer calls ``evaluator(params, key) -> {name: float}`` and never knows which metrics exist:

- `SampleQuality`: ``eval.num_samples`` generated images g_β(z), z ~ p_α (the prior chain), embedded in a
  feature space and compared with the training split's reference statistics (`lebm_jax.metrics`): Fréchet
  distance, KID, precision/recall, optionally FID∞/KID∞. The feature space is Inception-v3 (names ``fid``,
  ``kid``, ...) or the data set's own classifier (``fd_classifier``, ``kid_classifier``, ...; never "fid").
- `GradientStats`: the variance of the learning gradient at the current parameters (DESIGN §5,
  `lebm_jax.gradstats`): total, MCMC and data variance for the EBM, the generator and both; normalised
  variance; gradient norm; variance of the per-example loss (for ``ti``: of −log p̂(x)).
- `Heldout`: reconstruction error per pixel of g_β(z⁺), z⁺ ~ p(z|x), on test images, and the posterior
  log-likelihood; with ``ti_log_likelihood``, the TI estimate of log p(x) on them too.

Reference statistics are cached per (data set, split, size, feature space) in ``cache_dir("reference_stats")``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lebm_jax.core import gradstats
from lebm_jax.measure import metrics
from lebm_jax.core import sampling
from lebm_jax.data import datasets as data_lib
from lebm_jax.core.model import LatentEBM
from lebm_jax.core.objectives import ChainSpec

Array = jax.Array
Params = Any
AXIS = "data"


# --- feature spaces -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FeatureSpace:
    """A named embedding of images (N, H, W, C) in [-1, 1] -> features (N, d) float32."""

    name: str  # "inception" | "classifier"
    features: Callable[[np.ndarray], np.ndarray]
    identity: str  # distinguishes extractors of one name (the classifier's data digest); part of the cache key
    info: dict  # e.g. {"classifier_test_accuracy": 0.97}


def _inception_space(batch_size: int, download: bool) -> FeatureSpace:
    from lebm_jax.measure import inception

    params = inception.load_fid_params(download=download)
    return FeatureSpace("inception", inception.make_feature_fn(params, batch_size=min(batch_size, 100)),
                        "pt_inception-2015-12-05", {})


def _classifier_space(data: data_lib.ImageData) -> FeatureSpace:
    from lebm_jax.measure import classifier

    fn, info = classifier.load_or_train(data)
    return FeatureSpace("classifier", fn, info.params_sha256[:16], {"classifier_test_accuracy": info.test_accuracy})


def feature_space(choice: str, data: data_lib.ImageData, batch_size: int = 500) -> FeatureSpace | None:
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
        raise ValueError(f"eval.feature_space={choice!r} is not one of auto, inception, classifier, none")
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


def _data_identity(data: data_lib.ImageData) -> str:
    """A short digest of the training images (a changed npz/folder data set never reuses old statistics)."""
    h = hashlib.sha256()
    h.update(str(data.train.shape).encode())
    h.update(np.ascontiguousarray(data.train).tobytes())
    return h.hexdigest()[:12]


def reference_statistics(space: FeatureSpace, data: data_lib.ImageData, max_reference: int,
                         max_features: int = metrics.MAX_REFERENCE_FEATURES) -> metrics.ReferenceStatistics:
    """Feature statistics of (up to ``max_reference``) training images, computed once and cached."""
    train = data.train[:max_reference]
    h, w, c = train.shape[1:]
    key = (f"{data.name}-train{len(train)}-{h}x{w}x{c}-{_data_identity(data)}-{space.name}-{space.identity}")
    return metrics.cached_reference_statistics(
        key, lambda: space.features(data_lib.to_float(train)), max_features=max_features
    )


# --- generation across devices ----------------------------------------------------------------------
def make_generate_fn(model: LatentEBM, chain: ChainSpec, batch_size: int, mesh: jax.sharding.Mesh | None = None):
    """Jitted (params, key) -> ``batch_size`` generated images, split over the devices of ``mesh``.

    Each device runs its own prior chains with the key ``fold_in(key, device index)``.
    """
    mesh = mesh if mesh is not None else jax.make_mesh((jax.device_count(),), (AXIS,))
    if batch_size % mesh.size:
        raise ValueError(f"eval.batch_size={batch_size} must be divisible by the {mesh.size} devices")
    per_device = batch_size // mesh.size

    def local(params, key):
        key = jax.random.fold_in(key, jax.lax.axis_index(AXIS))
        return sampling.generate(model, chain, params, key, per_device)

    fn = jax.shard_map(local, mesh=mesh, in_specs=(P(), P()), out_specs=P(AXIS))
    return jax.jit(fn, out_shardings=NamedSharding(mesh, P(AXIS)))


def _gather(array: Array) -> np.ndarray:
    """A batch-sharded array as one numpy array on every process."""
    if jax.process_count() == 1:
        return np.asarray(array)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


class SampleQuality:
    """Sample-quality metrics of generated images in a feature space (see module docstring)."""

    def __init__(self, eval_config: ml_collections.ConfigDict, model: LatentEBM, prior_chain: ChainSpec,
                 space: FeatureSpace, reference: metrics.ReferenceStatistics, mesh=None):
        self.config = eval_config
        self.space = space
        self.reference = reference
        self._generate = make_generate_fn(model, prior_chain, eval_config.batch_size, mesh)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, model: LatentEBM, prior_chain: ChainSpec,
                    data: data_lib.ImageData, mesh=None) -> "SampleQuality | None":
        space = feature_space(config.eval.feature_space, data, config.eval.batch_size)
        if space is None:
            return None
        reference = reference_statistics(space, data, config.eval.max_reference)
        return cls(config.eval, model, prior_chain, space, reference, mesh)

    def samples(self, params: Params, key: Array, num: int | None = None) -> np.ndarray:
        """``num`` (default eval.num_samples) generated images in [-1, 1], as numpy."""
        num = self.config.num_samples if num is None else num
        batches = []
        for i in range(-(-num // self.config.batch_size)):
            batches.append(self._generate(params, jax.random.fold_in(key, i)))  # dispatched asynchronously
        return np.concatenate([_gather(b) for b in batches])[:num]

    def __call__(self, params: Params, key: Array, *, infinity: bool | None = None) -> dict[str, float]:
        feats = self.space.features(self.samples(params, key))
        infinity = self.config.infinity if infinity is None else infinity
        out = metrics.sample_quality(
            feats, self.reference, self.space.name, kid_subsets=self.config.kid_subsets,
            kid_subset_size=self.config.kid_subset_size, infinity=infinity,
        )
        return {name: float(v) for name, v in out.items()}


# --- gradient statistics ------------------------------------------------------------------------------
class GradientStats:
    """Gradient-variance statistics (gradstats.gradient_statistics) of an objective at given parameters.

    Minibatches are drawn from the training images, kept on the device as uint8 and converted per batch.
    Costs R·(1 + M) gradient evaluations (R = num_draws, M = num_batches); compiled once.
    """

    def __init__(self, gradstats_config: ml_collections.ConfigDict, objective, train_images: np.ndarray,
                 batch_size: int):
        cfg = gradstats_config
        grad_fn = gradstats.objective_grad_fn(objective)

        def from_uint8(params, x, key):
            return grad_fn(params, x.astype(jnp.float32) / 127.5 - 1.0, key)

        def stats(params, data, key):
            return gradstats.gradient_statistics(
                from_uint8, params, data, key, batch_size=batch_size, num_draws=cfg.num_draws,
                num_batches=cfg.num_batches, chunk=cfg.chunk or None,
            ).scalars

        self._data = jnp.asarray(train_images)
        self._fn = jax.jit(stats)

    def __call__(self, params: Params, key: Array) -> dict[str, float]:
        params = jax.device_put(jax.device_get(params), self._data.sharding)  # one device, whatever the mesh
        out = jax.device_get(self._fn(params, self._data, key))
        return {f"gradstats/{name}": float(v) for name, v in out.items()}


# --- held-out data -----------------------------------------------------------------------------------
def make_heldout_fn(model: LatentEBM, posterior_chain: ChainSpec, ti_config=None) -> Callable:
    """Jitted (params, x, key) -> held-out metrics of images x (B, H, W, C) in [-1, 1].

    recon_mse: mean squared error per pixel of g_β(z⁺) against x, z⁺ from the posterior chain (Pang et al.
    Table 2 reports it on this scale); posterior_log_lik: mean log p_β(x|z⁺) (constant included). With
    ``ti_config`` (num_temps, power), also log_px: the mean TI estimate of log p(x).
    """

    @jax.jit
    def fn(params, x, key):
        k_post, k_ti = jax.random.split(key)
        z = sampling.posterior_latents(model, posterior_chain, params, x, k_post).z
        recon = model.generate(params["gen"], z)
        out = {
            "heldout/recon_mse": jnp.mean((recon - x) ** 2),
            "heldout/posterior_log_lik": jnp.mean(model.log_likelihood(params["gen"], x, z)),
        }
        if ti_config is not None:
            est = sampling.ti_log_likelihood(model, posterior_chain, params, x, k_ti,
                                             ti_config.num_temps, ti_config.power)
            out["heldout/log_px"] = jnp.mean(est["log_px"])
        return out

    return fn


# --- a trained workdir ----------------------------------------------------------------------------------
def evaluate_checkpoint(
    workdir: str,
    step: int | None = None,
    *,
    feature_space_choice: str | None = None,
    num_samples: int | None = None,
    infinity: bool = True,
    gradient_stats: bool = True,
    dataset: data_lib.ImageData | None = None,
    seed: int = 0,
) -> tuple[dict, str]:
    """All metrics of ``workdir``'s checkpoint at ``step`` (default: the latest), written as JSON beside it.

    Returns (results, path of the JSON file ``<workdir>/evaluation/step_<step>.json``). Settings default to
    the run's config (``eval``, ``gradstats``, ``num_heldout``); ``dataset`` overrides loading ``config.data``.
    """
    import json
    import os
    import time

    from lebm_jax.training import loop as train
    from lebm_jax.training.trained import Trained

    trained = Trained.load(workdir, step)
    config = ml_collections.ConfigDict(trained.config.to_dict())
    if feature_space_choice is not None:
        config.eval.feature_space = feature_space_choice
    if num_samples is not None:
        config.eval.num_samples = int(num_samples)
    data = dataset if dataset is not None else data_lib.load(config.data)
    model = trained.model
    objective = train.build_objective(config, model)
    params = jax.device_put(trained.params)
    key = jax.random.fold_in(jax.random.key(seed), trained.step)
    k_heldout, k_quality, k_grad = jax.random.split(key, 3)
    results: dict[str, Any] = {"step": trained.step, "workdir": trained.workdir, "variant": config.variant,
                               "data": config.data.name, "seconds": {}}
    t = time.time()
    x = jnp.asarray(data_lib.to_float(data.test[: config.num_heldout]))
    heldout = make_heldout_fn(model, objective.posterior_chain, config.ti)(params, x, k_heldout)
    results.update({k: float(v) for k, v in jax.device_get(heldout).items()})
    results["heldout/num_images"] = int(x.shape[0])
    results["seconds"]["heldout"] = time.time() - t

    t = time.time()
    quality = SampleQuality.from_config(config, model, objective.prior_chain, data)
    if quality is not None:
        results.update({f"eval/{k}": v for k, v in quality(params, k_quality, infinity=infinity).items()})
        results["eval/feature_space"] = quality.space.name
        results["eval/num_samples"] = int(config.eval.num_samples)
        results.update({f"eval/{k}": v for k, v in quality.space.info.items()})
    results["seconds"]["sample_quality"] = time.time() - t

    if gradient_stats:
        t = time.time()
        stats = GradientStats(config.gradstats, objective, data.train, config.batch_size)
        results.update(stats(params, k_grad))
        results["seconds"]["gradstats"] = time.time() - t

    out_dir = os.path.join(trained.workdir, "evaluation")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"step_{trained.step:07d}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return results, path
