"""The evaluator interface: what training and offline evaluation rely on, whatever the metric.

An evaluator measures a model at given parameters: ``evaluator(params, key) -> {name: value}`` (call it through
`measure`, which also hands an adaptive run's current TI ladder to the evaluators that run the objective). It has
a ``name`` (its entry in `lebm_jax.measure.registry.EVALUATORS`), a metric ``prefix`` (logged names are
``prefix + name``), a schedule ``every`` (training steps between calls; 0: never during training, offline
only) and ``info`` (facts to record once, such as the feature space and its classifier's accuracy).
It is built from the run's config and a `Context` by its class's ``from_config``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax

from lebm_jax.core.model import LatentEBM
from lebm_jax.core.objectives import Objective
from lebm_jax.data.datasets import ImageData

Params = Any


class Evaluator(Protocol):
    name: str
    prefix: str
    every: int
    info: dict

    def __call__(self, params: Params, key: jax.Array) -> dict[str, float]: ...


@dataclasses.dataclass(frozen=True)
class Context:
    """What evaluators are built from besides the config: the run's model, objective, data and mesh, and
    optionally a directory where an evaluator may keep results that depend only on what it was given (the
    runs of a study share one: `lebm_jax.measure.loglik` keeps its sweeps there)."""

    model: LatentEBM
    objective: Objective
    data: ImageData
    mesh: jax.sharding.Mesh | None = None
    cache_dir: str | None = None


def measure(evaluator: Evaluator, params: Params, key: jax.Array, temperatures: jax.Array | None = None
            ) -> dict[str, float]:
    """``evaluator(params, key)``; an evaluator whose result depends on the TI ladder (``reads_ladder = True``:
    it runs the objective's chains) also gets ``temperatures``, an adaptive run's current ladder (None for
    any other run, so the objective's own ladder is used)."""
    if temperatures is not None and getattr(evaluator, "reads_ladder", False):
        return evaluator(params, key, temperatures=temperatures)
    return evaluator(params, key)


def is_due(evaluator: Evaluator, step: int, last_step: int) -> bool:
    """Whether ``evaluator`` runs at ``step`` of training: every ``every`` steps and at the last step."""
    return bool(evaluator.every) and (step % evaluator.every == 0 or step == last_step)


def seconds_metric(evaluator: Evaluator) -> str:
    """The name under which the time spent in ``evaluator`` is logged, e.g. ``time/eval_seconds``."""
    return f"time/{evaluator.prefix.rstrip('/')}_seconds"
