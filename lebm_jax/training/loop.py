"""Training: state, per-device step, data-parallel driver, checkpoints, logs and sample grids.

The step is written per device with pmap semantics (gradients and metrics averaged with
``lax.pmean`` over the named axis "data") and run with ``jax.shard_map`` over a 1-D mesh of all
devices, of every host after ``jax.distributed.initialize()``. Randomness is stateless: the key of
step n is ``fold_in(seed_key, n)``, and each example's chains use ``fold_in(step_key, i)`` with i its
position in the global batch, so a step does not depend on how the batch is split over devices.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lebm_jax.training import config as config_lib
from lebm_jax.data import datasets as data_lib
from lebm_jax.measure import evaluators as evaluation
from lebm_jax.data import grids as images
from lebm_jax.core import sampling
from lebm_jax.training.checkpoint import Checkpointer, abstract_like
from lebm_jax.core.model import LatentEBM, image_model
from lebm_jax.core.objectives import ChainSpec, loss_and_grads, make_objective
from lebm_jax.training.writers import create_writer, quiet_library_logs

AXIS = "data"
Params = Any


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array  # int32: steps taken
    params: Params  # {"ebm": ..., "gen": ...}
    opt_state: Params  # {"ebm": ..., "gen": ...}
    nonfinite_step: jax.Array  # int32: 0, or 1 + the first step whose loss or update was non-finite


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss or parameter."""


# --- construction ------------------------------------------------------------------------------
def build_model(config: ml_collections.ConfigDict) -> LatentEBM:
    m = config.model
    return image_model(
        (config.data.image_size, config.data.image_size, config.data.channels),
        m.latent_dim,
        ngf=m.ngf,
        generator_widths=tuple(m.generator_widths) or None,
        ebm_hidden=m.ebm_hidden,
        ebm_depth=m.ebm_depth,
        ebm_activation=m.ebm_activation,
        prior_sigma=m.prior_sigma,
        lik_sigma=m.lik_sigma,
        generator_dtype=m.generator_dtype,
    )


CPU_UNROLL_MAX_STEPS = 200


def chain_spec(chain_config, *, through_generator: bool) -> ChainSpec:
    """The ChainSpec of a chain config. On the CPU backend a chain whose score runs the generator
    (posterior chains) is fully unrolled up to CPU_UNROLL_MAX_STEPS steps: XLA's CPU backend runs
    convolutions inside a loop body many times slower. Prior chains (MLP only) stay a compact loop,
    which compiles several times faster and runs as fast."""
    steps = int(chain_config.num_steps)
    cpu = jax.default_backend() == "cpu"
    unroll = max(steps, 1) if through_generator and cpu and steps <= CPU_UNROLL_MAX_STEPS else 1
    return ChainSpec(steps, float(chain_config.step_size), str(chain_config.method), unroll)


def build_objective(config: ml_collections.ConfigDict, model: LatentEBM):
    ti = config.ti
    return make_objective(
        config.variant,
        model,
        prior_chain=chain_spec(config.prior_chain, through_generator=False),
        posterior_chain=chain_spec(config.posterior_chain, through_generator=True),
        num_chains=ti.num_chains if config.variant == "ti" else 1,
        num_temps=ti.num_temps,
        power=ti.power,
        gradient=ti.gradient,
    )


def learning_rates(config: ml_collections.ConfigDict, steps_per_epoch: int) -> dict[str, Callable]:
    """lr(step) = lr0 · decay^⌊step / steps_per_epoch⌋ for the EBM and the generator."""
    return {
        name: optax.exponential_decay(lr, steps_per_epoch, config.optim.lr_decay, staircase=True)
        for name, lr in (("ebm", config.optim.lr_ebm), ("gen", config.optim.lr_gen))
    }


def make_optimizers(config: ml_collections.ConfigDict, steps_per_epoch: int) -> dict[str, optax.GradientTransformation]:
    lrs = learning_rates(config, steps_per_epoch)
    return {name: optax.adam(lrs[name], b1=config.optim.b1, b2=config.optim.b2) for name in ("ebm", "gen")}


def create_train_state(model: LatentEBM, optimizers: dict, key: jax.Array) -> TrainState:
    params = model.init(key)
    opt_state = {name: optimizers[name].init(params[name]) for name in ("ebm", "gen")}
    # distinct buffers: the state is donated to the step, and XLA refuses one buffer donated twice
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                       nonfinite_step=jnp.zeros((), jnp.int32))
    return jax.tree.map(jnp.copy, state)


# --- the step ----------------------------------------------------------------------------------
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _scalar_metrics(losses, aux: dict) -> dict:
    """Batch-mean scalars to log; vector diagnostics become one scalar per entry."""
    out = {"loss_ebm": losses.ebm, "loss_gen": losses.gen}
    for name, value in aux.items():
        if name.startswith("per_example_"):
            continue
        value = jnp.asarray(value)
        if name in ("rung_log_lik", "rung_accept", "rung_var"):
            for i in range(value.shape[0]):
                out[f"{name}/{i}"] = value[i]
        else:
            out[name] = jnp.mean(value)
    return out


def apply_gradients(params, opt_state, grads, optimizers: dict) -> tuple[dict, dict]:
    """One Adam update of each parameter set with its own optimiser: (new params, new optimiser states)."""
    new_params, new_opt = {}, {}
    for name in ("ebm", "gen"):
        updates, new_opt[name] = optimizers[name].update(grads[name], opt_state[name], params[name])
        new_params[name] = optax.apply_updates(params[name], updates)
    return new_params, new_opt


def train_step(state: TrainState, x: jax.Array, seed_key: jax.Array, *, objective, optimizers: dict) -> tuple:
    """One step on this device's share x (b, H, W, C) of the global batch; call inside shard_map/pmap.

    Returns the new state (the old one if the loss or update is non-finite, with ``nonfinite_step``
    set) and the step's metrics, both identical on every device.
    """
    b = x.shape[0]
    step_key = jax.random.fold_in(seed_key, state.step)
    position = jax.lax.axis_index(AXIS) * b + jnp.arange(b)  # place of each example in the global batch
    keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(position)
    # Params enter as device-varying: the gradient of a replicated (invariant) input would come back
    # already summed over devices by shard_map's transpose, and the pmean below would be a no-op.
    params_here = jax.lax.pcast(state.params, AXIS, to="varying")
    res = loss_and_grads(objective, params_here, x, keys)
    grads = jax.lax.pmean(res.grads, AXIS)
    metrics = jax.lax.pmean(_scalar_metrics(res.losses, res.aux), AXIS)

    params, opt_state = apply_gradients(state.params, state.opt_state, grads, optimizers)
    for name in ("ebm", "gen"):
        metrics[f"grad_norm_{name}"] = optax.tree.norm(grads[name])

    ok = _all_finite((metrics["loss_ebm"], metrics["loss_gen"], grads, params)) & (state.nonfinite_step == 0)
    keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
    new_state = TrainState(
        step=state.step + 1,
        params=jax.tree.map(keep, params, state.params),
        opt_state=jax.tree.map(keep, opt_state, state.opt_state),
        nonfinite_step=jnp.where(ok | (state.nonfinite_step > 0), state.nonfinite_step, state.step + 1),
    )
    return new_state, metrics


def make_train_fn(objective, optimizers: dict, mesh: jax.sharding.Mesh) -> Callable:
    """Jitted (state, xs (k, B, H, W, C), seed_key) -> (state, metrics averaged over the k steps).

    Runs k steps per call (a scan), each data-parallel over the mesh axis "data"; the state buffer
    is donated.
    """
    step = functools.partial(train_step, objective=objective, optimizers=optimizers)

    cpu = jax.default_backend() == "cpu"

    def steps(state, xs, seed_key):
        if cpu:  # a Python loop: XLA's CPU backend runs convolutions inside any loop body many times slower
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


def data_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh over every device of every process, axis "data"."""
    return jax.make_mesh((jax.device_count(),), (AXIS,))


def global_batches(data: np.ndarray, config, first_step: int, num: int, mesh) -> jax.Array:
    """The global batches of steps first_step .. first_step+num−1 as one (num, B, ...) array sharded
    over the mesh's batch axis; each process supplies its own rows."""
    local = np.stack([
        data_lib.host_batch(data, config.batch_size, config.seed, s, jax.process_index(), jax.process_count())
        for s in range(first_step, first_step + num)
    ])
    sharding = NamedSharding(mesh, P(None, AXIS))
    return jax.make_array_from_process_local_data(sharding, local, (num, config.batch_size) + local.shape[2:])


# --- evaluation during training -----------------------------------------------------------------
def make_sample_fn(model: LatentEBM, config: ml_collections.ConfigDict) -> Callable:
    """Jitted (params, key) -> config.num_samples generated images."""
    chain = chain_spec(config.prior_chain, through_generator=False)
    return jax.jit(lambda params, key: sampling.generate(model, chain, params, key, config.num_samples))


# --- the loop ------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunResult:
    state: TrainState
    history: list  # logged metric dicts
    workdir: str


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def host_value(tree):
    """A replicated (possibly multi-host) array tree as numpy, from this process's first shard."""
    return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)) if isinstance(a, jax.Array) else a, tree)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, dataset: data_lib.ImageData | None = None
) -> RunResult:
    """Trains ``config`` in ``workdir``, resuming from its latest checkpoint if there is one.

    ``dataset`` overrides loading ``config.data`` (tests and custom data). Writes
    checkpoints/, metrics.jsonl, TensorBoard events, samples/*.png and config.json to ``workdir``.
    Raises NonFiniteError (after keeping the last good checkpoint untouched) if a step's loss or
    update is not finite.
    """
    config_lib.validate(config)
    workdir = os.path.abspath(workdir)
    lead = jax.process_index() == 0
    data = dataset if dataset is not None else data_lib.load(config.data)  # before the workdir: bad data leaves none
    os.makedirs(workdir, exist_ok=True)
    spe = data_lib.steps_per_epoch(data.train.shape[0], config.batch_size)
    if config.batch_size % jax.device_count():
        raise ValueError(f"config.batch_size={config.batch_size} must be divisible by the {jax.device_count()} devices")

    model = build_model(config)
    objective = build_objective(config, model)
    optimizers = make_optimizers(config, spe)
    lrs = learning_rates(config, spe)
    mesh = data_mesh()
    replicated = NamedSharding(mesh, P())
    k_init, seed_key, k_eval, k_sample = jax.random.split(jax.random.key(config.seed), 4)
    k_quality, k_gradstats = jax.random.split(jax.random.fold_in(k_eval, 2**32 - 1))  # no step reaches it
    state = create_train_state(model, optimizers, k_init)

    ckpt = Checkpointer(workdir, config.max_to_keep)
    start = ckpt.latest_step()
    if start is not None:
        try:
            state = ckpt.restore(start, abstract_like(state), config)
            if int(state.nonfinite_step):
                raise NonFiniteError(f"the checkpoint at step {start} holds a non-finite state")
        except BaseException:
            ckpt.close()
            raise
        logging.info("resumed from %s at step %d", ckpt.directory, start)
    state = jax.device_put(state, replicated)
    step = int(host_value(state.step))

    quiet_library_logs()
    writer = create_writer(workdir, lead, step)
    history: list[dict] = []
    heldout_fn = evaluation.make_heldout_fn(model, objective.posterior_chain,
                                            config.ti if config.eval.heldout_log_px else None)
    sample_fn = make_sample_fn(model, config)
    x_heldout = jnp.asarray(data_lib.to_float(data.test[: config.num_heldout]))
    quality = grad_stats = None
    if config.eval.every:
        quality = evaluation.SampleQuality.from_config(config, model, objective.prior_chain, data, mesh)
        if quality is not None and quality.space.info and lead:
            writer.write_hparams({k: float(v) for k, v in quality.space.info.items()})
            logging.info("feature space %s: %s", quality.space.name, quality.space.info)
    if config.gradstats.every:
        grad_stats = evaluation.GradientStats(config.gradstats, objective, data.train, config.batch_size)
    seconds = {"samples": 0.0, "eval": 0.0, "gradstats": 0.0}  # time spent in each evaluator this session

    def log(at: int, metrics: dict) -> None:
        writer.write_scalars(at, metrics)
        history.append({"step": at, **metrics})

    def evaluate(at: int, params) -> None:
        t = time.time()
        metrics = host_value(heldout_fn(params, x_heldout, jax.random.fold_in(k_eval, at)))
        log(at, {k: float(v) for k, v in metrics.items()})
        grid = host_value(sample_fn(params, jax.random.fold_in(k_sample, at)))  # every process takes part
        if lead:
            path = os.path.join(workdir, "samples", f"samples_{at:07d}.png")
            images.save_grid(grid, path, scale=max(1, 128 // config.data.image_size))
        seconds["samples"] += time.time() - t

    def measure(at: int, params) -> None:
        """Sample quality and gradient statistics, when due at step ``at``."""
        out = {}
        if quality is not None and (at % config.eval.every == 0 or at == config.num_steps):
            t = time.time()
            out.update({f"eval/{k}": v for k, v in quality(params, jax.random.fold_in(k_quality, at)).items()})
            seconds["eval"] += time.time() - t
            out["time/eval_seconds"] = seconds["eval"]
        if grad_stats is not None and (at % config.gradstats.every == 0 or at == config.num_steps):
            t = time.time()
            out.update(grad_stats(params, jax.random.fold_in(k_gradstats, at)))
            seconds["gradstats"] += time.time() - t
            out["time/gradstats_seconds"] = seconds["gradstats"]
        if out:
            log(at, out)

    if lead:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))
    if step == 0:
        from clu import parameter_overview

        if lead:
            logging.info("parameters:\n%s", parameter_overview.get_parameter_overview(state.params))
        evaluate(0, state.params)
        measure(0, state.params)

    train_fn = make_train_fn(objective, optimizers, mesh)
    from clu import periodic_actions

    # clu's progress report (steps/s, % done and ETA in the log and the work-unit notes) every minute;
    # the console line below and the logged steps_per_sec leave evaluator time out, it does not.
    report_progress = periodic_actions.ReportProgress(num_train_steps=config.num_steps, every_secs=60.0)
    k = config.steps_per_dispatch
    t_start, s_start, last_good = time.time(), step, start
    e_start = sum(seconds.values())
    t_log, s_log, e_log = t_start, step, e_start

    def check_finite(st) -> None:
        bad = int(host_value(st.nonfinite_step))
        if bad:
            raise NonFiniteError(
                f"non-finite loss or update at step {bad - 1}; training stopped. The last good checkpoint "
                f"(step {last_good}) in {ckpt.directory} is kept unchanged."
            )

    try:
        while step < config.num_steps:
            n = min(k, config.num_steps - step)
            xs = global_batches(data.train, config, step, n, mesh)
            state, metrics = train_fn(state, xs, seed_key)
            step += n
            if lead:
                report_progress(step, time.time())
            if step % config.log_every == 0 or step == config.num_steps:
                metrics = {name: float(v) for name, v in host_value(metrics).items()}
                check_finite(state)
                now = time.time()
                evaluating = sum(seconds.values())  # evaluator time is not training time
                metrics["steps_per_sec"] = (step - s_log) / max(now - t_log - (evaluating - e_log), 1e-9)
                metrics["time/train_seconds"] = now - t_start - (evaluating - e_start)  # this session, compile included
                metrics["lr_ebm"], metrics["lr_gen"] = float(lrs["ebm"](step - 1)), float(lrs["gen"](step - 1))
                t_log, s_log, e_log = now, step, evaluating
                log(step, metrics)
                if lead:
                    rate = (step - s_start) / max(now - t_start, 1e-9)
                    print(
                        f"step {step}/{config.num_steps}  loss_ebm {metrics['loss_ebm']:+.4f}  "
                        f"loss_gen {metrics['loss_gen']:.2f}  {metrics['steps_per_sec']:.2f} steps/s  "
                        f"ETA {_format_eta((config.num_steps - step) / max(rate, 1e-9))}",
                        flush=True,
                    )
            if step % config.checkpoint_every == 0 or step == config.num_steps:
                check_finite(state)
                ckpt.save(step, state, config)
                last_good = step
            if step % config.sample_every == 0 or step == config.num_steps:
                check_finite(state)
                evaluate(step, state.params)
            measure(step, state.params)
    finally:
        writer.flush()
        ckpt.close()
    return RunResult(state=state, history=history, workdir=workdir)
