"""The train state, the per-device training step, and its data-parallel driver.

The step is written per device with pmap semantics (gradients and metrics averaged with
``lax.pmean`` over the named axis "data") and run with ``jax.shard_map`` over a 1-D mesh of all
devices, of every host after ``jax.distributed.initialize()``. Randomness is stateless: the key of
step n is ``fold_in(seed_key, n)``, and each example's chains use ``fold_in(step_key, i)`` with i its
position in the global batch, so a step does not depend on how the batch is split over devices.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lebm_jax.core import backend, ladder
from lebm_jax.core.devices import AXIS
from lebm_jax.core.model import LatentEBM
from lebm_jax.core.objectives import Aux, Losses, Objective, loss_and_grads
from lebm_jax.data import datasets as data_lib

Params = Any


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array  # int32: steps taken
    params: Params  # {"ebm": ..., "gen": ...}
    opt_state: Params  # {"ebm": ..., "gen": ...}
    nonfinite_step: jax.Array  # int32: 0, or 1 + the first step whose loss or update was non-finite


class AdaptiveTrainState(TrainState):
    """The train state of a ti run with ``ti.adapt_every`` > 0: also the adaptive ladder and its moving
    average (design.md §3, "Adaptive ladder"). A subclass rather than an optional field, so that every other
    run's state, and its checkpoints' tree, are exactly those of `TrainState`."""

    ladder: ladder.AdaptiveLadder


def create_train_state(model: LatentEBM, optimizers: dict, key: jax.Array,
                       adaptive_ladder: ladder.AdaptiveLadder | None = None) -> TrainState:
    """The state at step 0; an `AdaptiveTrainState` holding ``adaptive_ladder`` (`build.initial_ladder`)
    when the ti ladder adapts."""
    params = model.init(key)
    opt_state = {name: optimizers[name].init(params[name]) for name in ("ebm", "gen")}
    # distinct buffers: the state is donated to the step, and XLA refuses one buffer donated twice
    fields = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": opt_state,
              "nonfinite_step": jnp.zeros((), jnp.int32)}
    if adaptive_ladder is None:
        state = TrainState(**fields)
    else:
        state = AdaptiveTrainState(**fields, ladder=adaptive_ladder)
    return jax.tree.map(jnp.copy, state)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def step_metrics(losses: Losses, aux: Aux) -> dict:
    """The scalars a step logs: both losses, the batch means of ``aux.batch``, ``aux.rungs`` per rung."""
    out = {"loss_ebm": losses.ebm, "loss_gen": losses.gen}
    out.update({name: jnp.mean(value) for name, value in aux.batch.items()})
    for name, value in aux.rungs.items():
        out.update({f"{name}/{i}": value[i] for i in range(value.shape[0])})
    return out


def apply_gradients(params, opt_state, grads, optimizers: dict) -> tuple[dict, dict]:
    """One Adam update of each parameter set with its own optimiser: (new params, new optimiser states)."""
    new_params, new_opt = {}, {}
    for name in ("ebm", "gen"):
        updates, new_opt[name] = optimizers[name].update(grads[name], opt_state[name], params[name])
        new_params[name] = optax.apply_updates(params[name], updates)
    return new_params, new_opt


def train_step(state: TrainState, x: jax.Array, seed_key: jax.Array, *, objective: Objective,
               optimizers: dict) -> tuple:
    """One step on this device's share x (b, H, W, C) of the global batch; call inside shard_map/pmap.

    Returns the new state (the old one if the loss or update is non-finite, with ``nonfinite_step``
    set) and the step's metrics, both identical on every device. With an adaptive ladder in the state
    the objective runs on its temperatures, which are logged as ``rung_t/i``, and the ladder is updated
    from the step's rung statistics averaged over all devices (`ladder.adapt_ladder`).
    """
    b = x.shape[0]
    step_key = jax.random.fold_in(seed_key, state.step)
    position = jax.lax.axis_index(AXIS) * b + jnp.arange(b)  # place of each example in the global batch
    keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(position)
    # Params enter as device-varying: the gradient of a replicated (invariant) input would come back
    # already summed over devices by shard_map's transpose, and the pmean below would be a no-op.
    params_here = jax.lax.pcast(state.params, AXIS, to="varying")
    adaptive = isinstance(state, AdaptiveTrainState)
    temperatures = state.ladder.temperatures if adaptive else None
    res = loss_and_grads(objective, params_here, x, keys, temperatures)
    grads = jax.lax.pmean(res.grads, AXIS)
    metrics = jax.lax.pmean(step_metrics(res.losses, res.aux), AXIS)
    new_ladder = None
    if adaptive:
        rung_mean = jax.lax.pmean(res.aux.rungs["rung_log_lik"], AXIS)  # (T,) batch means over all devices
        rung_var = res.aux.rungs.get("rung_var")
        rung_var = None if rung_var is None else jax.lax.pmean(rung_var, AXIS)
        new_ladder = ladder.adapt_ladder(state.ladder, state.step, rung_mean, rung_var, objective.adapt_every,
                                         objective.adapt_decay)
        metrics.update({f"rung_t/{i}": temperatures[i] for i in range(temperatures.shape[0])})

    params, opt_state = apply_gradients(state.params, state.opt_state, grads, optimizers)
    for name in ("ebm", "gen"):
        metrics[f"grad_norm_{name}"] = optax.tree.norm(grads[name])

    ok = _all_finite((metrics["loss_ebm"], metrics["loss_gen"], grads, params)) & (state.nonfinite_step == 0)
    keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
    new_state = state.replace(
        step=state.step + 1,
        params=jax.tree.map(keep, params, state.params),
        opt_state=jax.tree.map(keep, opt_state, state.opt_state),
        nonfinite_step=jnp.where(ok | (state.nonfinite_step > 0), state.nonfinite_step, state.step + 1),
    )
    if adaptive:
        new_state = new_state.replace(ladder=jax.tree.map(keep, new_ladder, state.ladder))
    return new_state, metrics


def make_train_fn(objective: Objective, optimizers: dict, mesh: jax.sharding.Mesh) -> Callable:
    """Jitted (state, xs (k, B, H, W, C), seed_key) -> (state, metrics averaged over the k steps).

    Runs k steps per call, each data-parallel over the mesh axis "data"; the state buffer is donated.
    The k steps are a Python loop or a scan as `backend.python_step_loop` says.
    """
    step = functools.partial(train_step, objective=objective, optimizers=optimizers)
    python_loop = backend.python_step_loop()

    def steps(state, xs, seed_key):
        if python_loop:
            history = []
            for i in range(xs.shape[0]):
                state, m = step(state, xs[i], seed_key)
                history.append(m)
            metrics = jax.tree.map(lambda *m: jnp.stack(m), *history)
        else:
            state, metrics = jax.lax.scan(lambda s, x: step(s, x, seed_key), state, xs)
        return state, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)

    sharded = jax.shard_map(steps, mesh=mesh, in_specs=(P(), P(None, AXIS), P()), out_specs=(P(), P()))
    # Outputs carry exactly the sharding the loop gives the state (NamedSharding(mesh, P())). Left to
    # itself, jit returns the equivalent P(None, ...) per leaf, which its cache treats as a different
    # input sharding: the second call would compile the whole step again.
    return jax.jit(sharded, donate_argnums=0, out_shardings=NamedSharding(mesh, P()))


def global_batches(data: np.ndarray, config, first_step: int, num: int, mesh) -> jax.Array:
    """The global batches of steps first_step .. first_step+num−1 as one (num, B, ...) array sharded
    over the mesh's batch axis; each process supplies its own rows."""
    local = np.stack([
        data_lib.host_batch(data, config.batch_size, config.seed, s, jax.process_index(), jax.process_count())
        for s in range(first_step, first_step + num)
    ])
    sharding = NamedSharding(mesh, P(None, AXIS))
    return jax.make_array_from_process_local_data(sharding, local, (num, config.batch_size) + local.shape[2:])
