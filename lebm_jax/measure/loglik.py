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
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lebm_jax.core import annealing
from lebm_jax.core.model import LatentEBM
from lebm_jax.core.objectives import Objective, example_keys
from lebm_jax.data.images import to_float
from lebm_jax.measure.base import Context

Params = Any


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
    """Jitted (params, x (B, ...), key) -> (B,) the objective's own per-example estimate of log p(x):
    minus its per-example generator loss (ti: the trapezoid on its ladder; vanilla: mean_s log p(x|z⁺_s))."""

    @jax.jit
    def fn(params, x, key):
        samples = objective.sample(params, x, example_keys(key, x.shape[0]))
        _, aux = objective.losses(params, x, samples)
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


class LogLikelihood:
    """The protocol's estimates and the training estimator's bias and variance (see the module docstring)."""

    name = "loglik"
    prefix = "loglik/"

    def __init__(self, loglik_config: ml_collections.ConfigDict, model: LatentEBM, objective: Objective,
                 test_images: np.ndarray):
        """``test_images``: uint8 (M, H, W, C), the examples to score (all of them)."""
        c = loglik_config
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
        return cls(config.loglik, context.model, context.objective, context.data.test[: config.loglik.num_examples])

    def estimates(self, params: Params) -> tuple[annealing.SweepResult, np.ndarray | None]:
        """The sweep's per-example results and the training estimates (R, B) (None with train_draws = 0)."""
        params = jax.device_put(jax.device_get(params))  # one device, whatever the mesh
        k_sweep, k_train = jax.random.split(self._key)
        res = annealing.estimate(self.model, params, self._x, k_sweep, self.spec)
        train = None
        if self._train is not None:
            train = np.stack([np.asarray(self._train(params, self._x, jax.random.fold_in(k_train, r)))
                              for r in range(self.num_draws)])
        return res, train

    def __call__(self, params: Params, key: jax.Array) -> dict[str, float]:
        """``key`` is not used: every run and every step gets the protocol's own keys (``loglik.seed``)."""
        return summarise(*self.estimates(params))
