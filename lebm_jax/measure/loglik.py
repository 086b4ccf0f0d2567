"""The held-out log-likelihood protocol: one estimate of log p(x) for every run, and each run's own
training estimator measured against it (design.md §9).

Every run, whatever its variant and training ladder, is scored on the first ``loglik.num_examples`` test
images by the same annealed sweep (`lebm_jax.core.annealing`: N rungs t_i = (i/(N−1))^p, MALA with step
sizes and preconditioners fixed by a pilot sweep, S chains per example) with the same keys
(``loglik.seed``, not the run's seed): TI and AIS estimates of log p(x) from one sweep. The run's own
estimator — ti's trapezoid on its training ladder, vanilla's posterior log-likelihood mean_s log p(x|z⁺_s),
i.e. minus its per-example generator loss — is drawn ``loglik.train_draws`` times on the same images.

Metrics (means over the examples; ``_se``: the standard error of that mean over examples):

- ``ti``, ``ti_se``; ``ais``, ``ais_se``: log p̂(x) by TI and by AIS;
- ``ti_minus_ais``, ``ti_minus_ais_se``: their paired difference (the two share chains, not errors);
- ``ti_half_diff``: TI on the full ladder minus TI on every other rung (the discretisation check: the
  full ladder's own error is about a third of it);
- ``ti_mc_se``: the Monte Carlo part of one example's TI error, sd over its chains / √S;
- ``ais_ess``: the AIS weights' effective number of chains, as a fraction of S;
- ``accept``, ``accept_min``: MALA acceptance, mean and lowest over the rungs;
- ``friel_reliable``: the fraction of examples whose rung variances pass `annealing.friel_reliable`;
  ``ti_friel`` (TI with the Friel correction) only when all of them pass;
- ``train_mean``; ``train_bias``, ``train_bias_se``: the training estimate minus the protocol's TI, per
  example averaged over draws; ``train_var``: its variance over chain draws (unbiased), averaged over
  examples. What the study calls the variance of the log-likelihood estimate, measured honestly.

With a cache directory (`SweepCache`; a study gives its runs one) the sweep's per-example results are kept
there under a hash of everything they are a function of, so runs that reach the protocol with the same
parameters (at step 0, every run of one seed, whatever its variant) run the sweep once; the training
estimator, which depends on the run's objective, is always drawn afresh. A result read back is the
computed one, bit for bit, and so are the metrics made of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lebm_jax.core import annealing
from lebm_jax.core.model import LatentEBM
from lebm_jax.core.objectives import Objective, example_keys
from lebm_jax.data.files import write_atomic
from lebm_jax.data.images import to_float
from lebm_jax.measure.base import Context

Params = Any

SWEEP_CACHE_VERSION = 1  # part of every cache key: raise it when the sweep computes something else
SWEEP_CACHE_SUBDIR = "loglik"  # under the Context's cache_dir


def sweep_spec(loglik_config: ml_collections.ConfigDict) -> annealing.SweepSpec:
    c = loglik_config
    return annealing.SweepSpec(num_temps=c.num_temps, power=float(c.power), steps_per_rung=c.steps_per_rung,
                               ais_substeps=c.ais_substeps, num_chains=c.num_chains, prior_steps=c.prior_steps,
                               target_accept=float(c.target_accept))


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error of the mean (ddof = 1) of a 1-d sample."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")


def training_estimator(objective: Objective):
    """Jitted (params, x (B, ...), key, temperatures=None) -> (B,) the objective's own per-example estimate of
    log p(x): minus its per-example generator loss (ti: the trapezoid on its ladder, or on ``temperatures``, an
    adaptive run's current ladder; vanilla: mean_s log p(x|z⁺_s))."""

    @jax.jit
    def fn(params, x, key, temperatures=None):
        ladder_arg = {} if temperatures is None else {"temperatures": temperatures}
        samples = objective.sample(params, x, example_keys(key, x.shape[0]), **ladder_arg)
        _, aux = objective.losses(params, x, samples, **ladder_arg)
        return -aux.per_example.gen

    return fn


def summarise(res: annealing.SweepResult, train: np.ndarray | None) -> dict[str, float]:
    """The metrics of the module docstring from a sweep and the training estimates (R, B) (or None)."""
    r = jax.tree.map(lambda a: np.asarray(a, np.float64), res)
    out = {}
    out["ti"], out["ti_se"] = mean_se(r.ti)
    out["ais"], out["ais_se"] = mean_se(r.ais)
    out["ti_minus_ais"], out["ti_minus_ais_se"] = mean_se(r.ti - r.ais)
    out["ti_half_diff"] = float(np.mean(r.ti - r.ti_half))
    num_chains = r.ti_chains.shape[0]
    out["ti_mc_se"] = float(np.mean(r.ti_chains.std(axis=0, ddof=1) / np.sqrt(num_chains)))
    out["ais_ess"] = float(np.mean(r.ess) / num_chains)
    out["accept"], out["accept_min"] = float(np.mean(r.accept)), float(np.min(r.accept))
    out["friel_reliable"] = float(np.mean(r.friel_reliable))
    if np.all(r.friel_reliable):
        out["ti_friel"] = float(np.mean(r.ti + r.friel))
    if train is not None:
        train = np.asarray(train, np.float64)  # (R, B)
        out["train_mean"] = float(train.mean())
        out["train_bias"], out["train_bias_se"] = mean_se(train.mean(axis=0) - r.ti)
        out["train_var"] = float(np.mean(train.var(axis=0, ddof=1)))
    return out


def _array_digest(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()


class SweepCache:
    """The sweep's per-example results (`annealing.SweepResult`, as ``<key>.npz``) in ``directory``.

    The sweep is a function of the parameters, the model's densities, the images, the protocol's settings
    and keys, and the numbers the backend computes with; the key is a SHA-256 of the parameters' bytes
    (with each leaf's path, dtype and shape) and of ``identity``, a JSON-able description of the rest
    (`LogLikelihood.from_config`: the model config, a digest of the images, the sweep's settings, the
    protocol's seed, the jax version and backend, SWEEP_CACHE_VERSION). Files are written atomically, so
    concurrent runs can share a directory; an entry that cannot be read is computed and written again.
    """

    def __init__(self, directory: str, identity: dict):
        self.directory = directory
        self._identity = json.dumps(identity, sort_keys=True, default=str).encode()

    def key(self, params: Params) -> str:
        h = hashlib.sha256(self._identity)
        for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]:
            h.update(f"{jax.tree_util.keystr(path)}:{_array_digest(np.asarray(leaf))};".encode())
        return h.hexdigest()

    def path(self, params: Params) -> str:
        return os.path.join(self.directory, f"{self.key(params)}.npz")

    def load(self, params: Params) -> annealing.SweepResult | None:
        """The stored result for ``params``, or None when there is none (or it cannot be read)."""
        path = self.path(params)
        if not os.path.isfile(path):
            return None
        try:
            with np.load(path) as f:
                return annealing.SweepResult(**{name: f[name] for name in annealing.SweepResult._fields})
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
            logging.warning("log-likelihood sweep cache %s unreadable (%s): computing it again", path, e)
            return None

    def store(self, params: Params, result: annealing.SweepResult) -> str:
        arrays = {name: np.asarray(value) for name, value in jax.device_get(result)._asdict().items()}
        return str(write_atomic(self.path(params), lambda f: np.savez(f, **arrays)))


class LogLikelihood:
    """The protocol's estimates and the training estimator's bias and variance (see the module docstring)."""

    name = "loglik"
    prefix = "loglik/"

    def __init__(self, loglik_config: ml_collections.ConfigDict, model: LatentEBM, objective: Objective,
                 test_images: np.ndarray, cache: SweepCache | None = None):
        """``test_images``: uint8 (M, H, W, C), the examples to score (all of them). ``cache``: where the
        sweep's results are kept and looked up (see the module docstring); None computes every time."""
        c = loglik_config
        self.cache = cache
        self.every = c.every
        self.spec = sweep_spec(c)
        self.model = model
        self.num_draws = c.train_draws
        self.info = {"num_examples": int(test_images.shape[0]), **self.spec.__dict__, "seed": c.seed,
                     "train_draws": c.train_draws}
        self._x = jnp.asarray(to_float(test_images))
        self._key = jax.random.key(c.seed)
        self._train = training_estimator(objective) if self.num_draws else None

    @staticmethod
    def schedule(config: ml_collections.ConfigDict) -> int:
        return config.loglik.every

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, context: Context) -> LogLikelihood:
        images = context.data.test[: config.loglik.num_examples]
        cache = None
        if context.cache_dir:
            identity = {"version": SWEEP_CACHE_VERSION, "jax": jax.__version__, "backend": jax.default_backend(),
                        "model": config.model.to_dict(), "images": _array_digest(np.asarray(images)),
                        "sweep": sweep_spec(config.loglik).__dict__, "seed": config.loglik.seed}
            cache = SweepCache(os.path.join(context.cache_dir, SWEEP_CACHE_SUBDIR), identity)
        return cls(config.loglik, context.model, context.objective, images, cache)

    def estimates(self, params: Params, temperatures: jax.Array | None = None
                  ) -> tuple[annealing.SweepResult, np.ndarray | None]:
        """The sweep's per-example results (from the cache when it holds them) and the training estimates
        (R, B) (None with train_draws = 0), on the run's current ladder ``temperatures`` when it adapts."""
        params = jax.device_put(jax.device_get(params))  # one device, whatever the mesh
        if temperatures is not None:
            temperatures = jax.device_put(jax.device_get(temperatures))
        k_sweep, k_train = jax.random.split(self._key)
        res = self.cache.load(params) if self.cache is not None else None
        if res is None:
            res = annealing.estimate(self.model, params, self._x, k_sweep, self.spec)
            if self.cache is not None:
                self.cache.store(params, res)
        train = None
        if self._train is not None:
            train = np.stack([np.asarray(self._train(params, self._x, jax.random.fold_in(k_train, r), temperatures))
                              for r in range(self.num_draws)])
        return res, train

    reads_ladder = True  # the loop passes an adaptive run's current ladder as ``temperatures``

    def __call__(self, params: Params, key: jax.Array, temperatures: jax.Array | None = None) -> dict[str, float]:
        """``key`` is not used: every run and every step gets the protocol's own keys (``loglik.seed``). The
        protocol's sweep does not depend on the run's ladder; its training estimator runs on ``temperatures``
        when given (an adaptive run's current ladder)."""
        return summarise(*self.estimates(params, temperatures))
