"""The one factory of evaluators: a run's config -> the evaluators it asks for.

Training (`lebm_jax.training.loop`) and offline evaluation (`lebm_jax.training.offline`) both get their
evaluators from `build_evaluators` and call them with the same keys (`lebm_jax.training.build.RunKeys`),
so a checkpoint evaluated offline gives the numbers logged for it during training. The trainer never
names an evaluator: a new one is a module with a class (``schedule``, ``from_config``, ``__call__``; see
`lebm_jax.measure.base`) plus one entry in `EVALUATORS`.
"""

from __future__ import annotations

from typing import Protocol

import ml_collections

from lebm_jax.measure.base import Context, Evaluator
from lebm_jax.measure.gradient_stats import GradientStats
from lebm_jax.measure.heldout import Heldout
from lebm_jax.measure.loglik import LogLikelihood
from lebm_jax.measure.sample_quality import SampleQuality


class EvaluatorClass(Protocol):
    @staticmethod
    def schedule(config: ml_collections.ConfigDict) -> int:
        """Training steps between calls in ``config`` (0: not during training); cheap, builds nothing."""

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, context: Context) -> Evaluator | None:
        """The evaluator, or None when it cannot run (e.g. no feature space for sample quality)."""


# name -> evaluator class; the order is the order evaluators run and their metrics are logged in
EVALUATORS: dict[str, EvaluatorClass] = {
    "heldout": Heldout,
    "sample_quality": SampleQuality,
    "gradstats": GradientStats,
    "loglik": LogLikelihood,
}


def build_evaluators(config: ml_collections.ConfigDict, context: Context, *,
                     scheduled_only: bool = True) -> list[Evaluator]:
    """The evaluators of ``config``, in `EVALUATORS` order.

    ``scheduled_only``: leave out those whose schedule is 0 (not run during training) before building
    them, since building can cost (a classifier to train, reference statistics to compute). Offline
    evaluation passes False: every evaluator that can run, runs.
    """
    out = []
    for cls in EVALUATORS.values():
        if scheduled_only and not cls.schedule(config):
            continue
        evaluator = cls.from_config(config, context)
        if evaluator is not None:
            out.append(evaluator)
    return out
