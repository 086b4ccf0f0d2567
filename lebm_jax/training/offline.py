"""Every metric of a saved checkpoint, computed offline with the evaluators and keys training uses.

`evaluate_checkpoint` builds the run's evaluators from its saved config (`lebm_jax.measure.registry`)
and calls each with the key training used at that step (`build.run_keys`), so every metric logged
for the checkpoint's step during training is reproduced (up to float rounding from where the
parameters live), and the ones not scheduled then are added.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections

from lebm_jax.data import datasets as data_lib
from lebm_jax.data.files import write_json
from lebm_jax.measure.base import Context, measure
from lebm_jax.measure.registry import build_evaluators
from lebm_jax.training import build
from lebm_jax.training.trained import Trained


def evaluate_checkpoint(
    workdir: str,
    step: int | None = None,
    *,
    feature_space_choice: str | None = None,
    num_samples: int | None = None,
    infinity: bool = True,
    gradient_stats: bool = True,
    dataset: data_lib.ImageData | None = None,
    seed: int | None = None,
) -> tuple[dict, str]:
    """All metrics of ``workdir``'s checkpoint at ``step`` (default: the latest), written as JSON beside it.

    Returns (results, path of the JSON file ``<workdir>/evaluation/step_<step>.json``). Settings default to
    the run's config (``eval``, ``gradstats``, ``num_heldout``, ``seed``); ``dataset`` overrides loading
    ``config.data``. ``infinity`` adds FID∞/KID∞; ``seed`` draws other chains than training did.
    """
    trained = Trained.load(workdir, step)
    config = ml_collections.ConfigDict(trained.config.to_dict())
    if feature_space_choice is not None:
        config.eval.feature_space = feature_space_choice
    if num_samples is not None:
        config.eval.num_samples = int(num_samples)
    config.eval.infinity = bool(infinity)
    data = dataset if dataset is not None else data_lib.load(config.data)
    objective = build.build_objective(config, trained.model)
    keys = build.run_keys(config.seed if seed is None else seed)
    params = jax.device_put(trained.params)
    results: dict[str, Any] = {"step": trained.step, "workdir": trained.workdir, "variant": config.variant,
                               "data": config.data.name, "seconds": {}}
    evaluators = build_evaluators(config, Context(trained.model, objective, data), scheduled_only=False)
    for evaluator in evaluators:
        if evaluator.name == "gradstats" and not gradient_stats:
            continue
        t = time.time()
        key = build.evaluator_key(keys, evaluator.name, trained.step)
        values = measure(evaluator, params, key, trained.ladder)  # an adaptive run: its ladder at this step
        results.update({evaluator.prefix + k: v for k, v in {**values, **evaluator.info}.items()})
        results["seconds"][evaluator.name] = time.time() - t

    path = os.path.join(trained.workdir, "evaluation", f"step_{trained.step:07d}.json")
    write_json(path, results)
    return results, path
