"""Trains digits for a few steps on however many devices this process sees; saves the parameters.

Entry point for tests/test_train.py, which starts it in a fresh process so that the device count can
be chosen before JAX starts:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/train_devices_script.py \
        OUT '{"num_steps": 3, ...}' vanilla:1 ti:3

The second argument is a JSON object of config overrides (dotted keys) applied to the tiny digits config
(tests/tiny.py).
Each RUN is ``variant:steps_per_dispatch``: ``config.num_steps`` steps on the digits training images,
driven with the library's pieces exactly as the training loop drives them (state, mesh, global
batches, jitted multi-step train function). It writes ``OUT/{variant}_k{k}_d{devices}.npz``: one
array per parameter leaf, named ``params/<path>``, each logged metric averaged over the steps as
``metrics/<name>``, and ``step`` and ``nonfinite_step``.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lebm_jax.training import config as config_lib
from lebm_jax.data import datasets as data_lib
from lebm_jax.core import devices
from lebm_jax.training import build
from lebm_jax.training import step as step_lib

from tiny import tiny_config


def digits_config(overrides: dict, variant: str, steps_per_dispatch: int):
    config = tiny_config("digits", **{**overrides, "variant": variant, "steps_per_dispatch": steps_per_dispatch})
    return config_lib.validate(config)


def run(config, images: np.ndarray) -> tuple[step_lib.TrainState, dict[str, float]]:
    """config.num_steps steps, config.steps_per_dispatch per call, as loop.train_and_evaluate drives them.

    Returns the final state and every logged metric averaged over all the steps.
    """
    model = build.build_model(config)
    objective = build.build_objective(config, model)
    optimizers = build.make_optimizers(config, data_lib.steps_per_epoch(len(images), config.batch_size))
    mesh = devices.data_mesh()
    k_init, seed_key, _, _ = jax.random.split(jax.random.key(config.seed), 4)
    state = jax.device_put(step_lib.create_train_state(model, optimizers, k_init), NamedSharding(mesh, P()))
    train_fn = step_lib.make_train_fn(objective, optimizers, mesh)
    step, totals = 0, {}
    while step < config.num_steps:
        n = min(config.steps_per_dispatch, config.num_steps - step)
        state, metrics = train_fn(state, step_lib.global_batches(images, config, step, n, mesh), seed_key)
        for name, value in devices.host_value(metrics).items():  # each the mean over this call's n steps
            totals[name] = totals.get(name, 0.0) + n * float(value)
        step += n
    return devices.host_value(state), {name: total / step for name, total in totals.items()}


def flat_params(params) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v) for path, v in leaves}


def main(out_dir: str, overrides: str, runs: list[str]) -> None:
    os.makedirs(out_dir, exist_ok=True)
    overrides = json.loads(overrides)
    images = None
    for spec in runs:
        variant, k = spec.split(":")
        config = digits_config(overrides, variant, int(k))
        if images is None:
            images = data_lib.load(config.data).train
        state, metrics = run(config, images)
        name = f"{variant}_k{k}_d{jax.device_count()}.npz"
        np.savez(os.path.join(out_dir, name), step=state.step, nonfinite_step=state.nonfinite_step,
                 **{f"params/{key}": value for key, value in flat_params(state.params).items()},
                 **{f"metrics/{key}": np.float64(value) for key, value in metrics.items()})
        print("wrote", name, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
