"""The benchmarks: the training step (`benchmark_train`), the samplers (`benchmark_sampler`) and a
sample-quality evaluation (`benchmark_evaluation`); compile time, call time, where the time goes,
FLOPs, achieved against peak throughput, and memory. Each returns a JSON-able dict (`format.format_table`
prints it).

Everything runs on random data of the config's image shape (no data set is read) through the real
training code: `lebm_jax.training.step.make_train_fn` over `data_mesh()` (docs/design.md §7), with the
config's ``steps_per_dispatch`` (a step's time is a dispatch's divided by it). The pieces a step is made
of are jitted apart from the same objective (`step_pieces`) and timed on one device's share of the
batch, as each device runs them inside the step:

    prior      `objectives.sample_prior`: S·b prior chains z⁻ ~ p_α            (K_prior steps)
    posterior  `objective.sample_posteriors`: T·S·b chains z ~ π_t(z|x)        (K_post steps; T = 1 for vanilla)
    update     ∇ of loss_E + loss_G at fixed samples, then both Adam updates
    other      the step's median minus the three: pmean, finite checks, metrics, dispatch. It is small,
               so on a busy machine the noise of four separate timings can make it negative.

FLOPs are counted on the jaxpr (`flops.count_flops`, whose docstring gives the conventions). Efficiency
is achieved GFLOP/s over the measured peak of one float32 matmul per device (`timing.matmul_peak`) times
the number of devices (with the default matmul precision, which the step also uses).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lebm_jax.bench.flops import FlopCount, count_flops, xla_flops
from lebm_jax.bench.format import variant_label
from lebm_jax.bench.timing import Timing, compile_timed, matmul_peak, memory_report, time_fn
from lebm_jax.core import networks, sampling
from lebm_jax.core.devices import AXIS, data_mesh
from lebm_jax.core.langevin import split_keys
from lebm_jax.core.objectives import example_keys, sample_prior
from lebm_jax.data.images import to_float
from lebm_jax.measure import inception
from lebm_jax.training import build
from lebm_jax.training import config as config_lib
from lebm_jax.training.step import apply_gradients, create_train_state, global_batches, make_train_fn

MIN_STEPS = 10  # real runs time at least this many training steps
NOMINAL_STEPS_PER_EPOCH = 1000  # only sets the learning-rate schedule, which costs the same at any value


# --- the pieces of a step -------------------------------------------------------------------------
def _header(config: ml_collections.ConfigDict, config_name: str | None) -> dict:
    device = jax.devices()[0]
    ti = config.variant == "ti"
    return {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "jax_version": jax.__version__,
        "config": config_name or config.data.name,
        "variant": config.variant,
        "image_shape": [config.data.image_size, config.data.image_size, config.data.channels],
        "latent_dim": config.model.latent_dim,
        "batch_size": config.batch_size,
        "steps_per_dispatch": config.steps_per_dispatch,
        "prior_steps": config.prior_chain.num_steps,
        "posterior_steps": config.posterior_chain.num_steps,
        "rungs": config.ti.num_temps if ti else 1,
        "chains_per_example": config.ti.num_chains if ti else 1,
        "exchange_every": config.ti.exchange_every if ti else 0,
        "adapt_every": config.ti.adapt_every if ti else 0,
        "generator_widths": list(_generator_widths(config)),
    }


def _generator_widths(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    _, doublings = networks.generator_layout(config.data.image_size)
    return tuple(config.model.generator_widths) or networks.default_widths(config.model.ngf, doublings)


def _setup(config: ml_collections.ConfigDict):
    config_lib.validate(config)
    if config.batch_size % jax.device_count():
        raise ValueError(f"config.batch_size={config.batch_size} must be divisible by the {jax.device_count()} devices")
    model = build.build_model(config)
    objective = build.build_objective(config, model)
    optimizers = build.make_optimizers(config, NOMINAL_STEPS_PER_EPOCH)
    return model, objective, optimizers


def step_pieces(objective, optimizers: dict) -> dict[str, Callable]:
    """The parts of a training step, each jitted on its own, on one device's share x (b, H, W, C):

    - prior(params, x, key): chains z⁻ (S, b, nz);
    - posterior(params, x, key): chains z (T, S, b, nz), T = 1 for vanilla; both ChainResults, with the
      diagnostics the step logs;
    - update(params, opt_state, x, samples) -> (params, opt_state): the gradient of loss_E + loss_G at
      fixed samples and both optimiser updates.

    ``key`` is split per example as the objective's ``sample`` does (integer work, no FLOPs).
    """

    def keys(key, x):
        return split_keys(example_keys(key, x.shape[0]), 2, key_axis=0)  # (prior, posterior), each (b,)

    def prior(params, x, key):
        return sample_prior(objective, params, keys(key, x)[0])

    def posterior(params, x, key):
        return objective.sample_posteriors(params, x, keys(key, x)[1])

    def update(params, opt_state, x, samples):
        def total(p):
            losses, aux = objective.losses(p, x, samples)
            return losses.ebm + losses.gen, aux

        grads = jax.grad(total, has_aux=True)(params)[0]
        return apply_gradients(params, opt_state, grads, optimizers)

    return {"prior": jax.jit(prior), "posterior": jax.jit(posterior), "update": jax.jit(update)}


def _piece_args(objective, state, x, key, sample=jax.eval_shape) -> dict[str, tuple]:
    """Arguments of each piece; ``sample(objective.sample, params, x, key)`` makes the update's samples
    (the default, jax.eval_shape, only their shapes)."""
    params = state.params
    return {
        "prior": (params, x, key),
        "posterior": (params, x, key),
        "update": (params, state.opt_state, x, sample(objective.sample, params, x, key)),
    }


def step_flops(config: ml_collections.ConfigDict) -> dict[str, FlopCount]:
    """FLOPs of one training step of ``config`` ("step": the jitted training function over
    ``data_mesh()``, per step) and of its pieces ("prior", "posterior", "update", see `step_pieces`,
    times the number of devices), all global over devices. Traced on shapes only: nothing is
    compiled or run."""
    model, objective, optimizers = _setup(config)
    k, devices, mesh = config.steps_per_dispatch, jax.device_count(), data_mesh()
    key = jax.eval_shape(jax.random.key, 0)
    state = jax.eval_shape(lambda kk: create_train_state(model, optimizers, kk, build.initial_ladder(config)), key)
    image = (config.data.image_size, config.data.image_size, config.data.channels)
    replicated = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, P()))  # noqa: E731
    xs = jax.ShapeDtypeStruct((k, config.batch_size) + image, jnp.float32,
                              sharding=NamedSharding(mesh, P(None, AXIS)))
    x = jax.ShapeDtypeStruct((config.batch_size // devices,) + image, jnp.float32)
    train_fn = make_train_fn(objective, optimizers, mesh)
    step = count_flops(train_fn.trace(jax.tree.map(replicated, state), xs, replicated(key)))
    out = {"step": step.scaled(1.0 / k)}
    args = _piece_args(objective, state, x, key)
    for name, fn in step_pieces(objective, optimizers).items():
        out[name] = count_flops(fn.trace(*args[name])).scaled(devices)
    return out


def _random_images(config, num: int, seed: int) -> np.ndarray:
    shape = (num, config.data.image_size, config.data.image_size, config.data.channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _rate(flops: float, seconds: float) -> float:
    return flops / seconds / 1e9 if seconds > 0 else float("nan")


def benchmark_phases(objective, optimizers: dict, state, x: jax.Array, key: jax.Array, *, repeats: int,
                     devices: int) -> dict:
    """Median time (ms) and FLOPs of prior chains, posterior chains and the update on one device's share
    ``x``; FLOPs are multiplied by ``devices`` (global, like the step's)."""
    args = _piece_args(objective, state, x, key, sample=lambda fn, *a: jax.jit(fn)(*a))
    out = {}
    for name, fn in step_pieces(objective, optimizers).items():
        compiled, traced, _ = compile_timed(fn, *args[name])
        timing = time_fn(compiled, *args[name], repeats=repeats, warmup=1)
        flops = count_flops(traced).total * devices
        summary = timing.summary()
        out[name] = {"ms": summary["median_ms"], "min_ms": summary["min_ms"], "max_ms": summary["max_ms"],
                     "flops": flops, "gflops_per_s": _rate(flops, timing.median)}
    return out


# --- the benchmarks -------------------------------------------------------------------------------
def benchmark_train(
    config: ml_collections.ConfigDict,
    *,
    steps: int = MIN_STEPS,
    warmup: int = 2,
    phases: bool = True,
    matmul_size: int | None = None,
    config_name: str | None = None,
    seed: int = 0,
    allow_few_steps: bool = False,
) -> dict:
    """Benchmark of the jitted training function of ``config`` on random data.

    Times ⌈steps / steps_per_dispatch⌉ dispatches after compilation and ``warmup`` dispatches; per-step
    figures divide a dispatch by steps_per_dispatch. ``allow_few_steps`` lets smoke tests time fewer than
    MIN_STEPS steps (their spread means nothing). Returns a JSON-able dict (see `format_table`).
    """
    if steps < MIN_STEPS and not allow_few_steps:
        raise ValueError(f"steps={steps}: time at least {MIN_STEPS} steps for a median and spread")
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps={steps} must be >= 1 and warmup={warmup} >= 0")
    model, objective, optimizers = _setup(config)
    k = config.steps_per_dispatch
    devices = jax.device_count()
    mesh = data_mesh()
    k_init, seed_key = jax.random.split(jax.random.key(seed))
    # the state the run would have: with an adaptive ladder, the step that updates it
    state = jax.device_put(create_train_state(model, optimizers, k_init, build.initial_ladder(config)),
                           NamedSharding(mesh, P()))
    images = _random_images(config, 2 * config.batch_size, seed)

    input_timing = time_fn(lambda: global_batches(images, config, 0, k, mesh), repeats=3, warmup=1)
    xs = global_batches(images, config, 0, k, mesh)  # (k, B, H, W, C), sharded over the batch

    train_fn = make_train_fn(objective, optimizers, mesh)
    compiled, traced, compile_times = compile_timed(train_fn, state, xs, seed_key)
    flops = count_flops(traced).scaled(1.0 / k)
    dispatches = -(-steps // k)
    timing = time_fn(compiled, state, xs, seed_key, repeats=dispatches, warmup=warmup, carry=True)
    step = timing.summary(per=k)
    step_s = step["median_ms"] / 1e3
    step.update(steps_timed=dispatches * k, dispatches=dispatches, warmup_dispatches=warmup,
                images_per_s=config.batch_size / step_s)
    memory = memory_report(compiled, "training step")

    result = {
        "mode": "train",
        "header": _header(config, config_name),
        "compile": compile_times,
        "step": step,
        "input": {"ms_per_step": input_timing.median * 1e3 / k},
        "flops": {"per_step": flops.total, "per_step_by_kind": flops.as_dict(),
                  "xla_per_dispatch": xla_flops(compiled)},
        "memory": memory,
    }
    if phases:
        x = jnp.asarray(to_float(images[: config.batch_size // devices]))
        phase_state = create_train_state(model, optimizers, k_init)  # one device, not donated
        ph = benchmark_phases(objective, optimizers, phase_state, x, jax.random.fold_in(seed_key, 0),
                              repeats=max(dispatches, 3), devices=devices)
        ph["other"] = {"ms": step["median_ms"] - sum(p["ms"] for p in ph.values()), "flops": None}
        for p in ph.values():
            p["pct"] = 100.0 * p["ms"] / step["median_ms"]
        result["phases"] = ph
    peak = matmul_peak(matmul_size)
    achieved = _rate(flops.total, step_s)
    result["flops"].update(
        achieved_gflops_per_s=achieved,
        peak_matmul_gflops_per_device=peak["gflops"],
        peak_matmul=peak,
        efficiency=achieved / (peak["gflops"] * devices),
    )
    return result


def ti_option_configs(config: ml_collections.ConfigDict, exchange_every: int, adapt_every: int
                      ) -> dict[str, ml_collections.ConfigDict]:
    """``config`` as ti with none of the variance-reduction options, with replica exchange every
    ``exchange_every`` posterior steps, and with the ladder adapted every ``adapt_every`` steps (0 leaves an
    option out), each validated and labelled as in `format.variant_label`."""
    out = {}
    for fields in ({}, {"ti.exchange_every": exchange_every}, {"ti.adapt_every": adapt_every}):
        if any(v == 0 for v in fields.values()):
            continue
        c = ml_collections.ConfigDict(config.to_dict())
        c.update_from_flattened_dict({"variant": "ti", "ti.exchange_every": 0, "ti.adapt_every": 0, **fields})
        config_lib.validate(c)
        out[variant_label({"variant": "ti", "exchange_every": c.ti.exchange_every,
                           "adapt_every": c.ti.adapt_every})] = c
    return out


def benchmark_ti_options(
    config: ml_collections.ConfigDict,
    *,
    steps: int = MIN_STEPS,
    warmup: int = 2,
    exchange_every: int = 5,
    adapt_every: int = 10,
    config_name: str | None = None,
    seed: int = 0,
    allow_few_steps: bool = False,
) -> dict:
    """The ti training step with each variance-reduction option against the step without, timed in one
    process on the same data: after compiling all of them, each round times one dispatch of every program in
    turn, so a change of the machine's load touches them alike. Reports each program's median and spread, its
    median ratio to plain ti over the rounds (each round's ratio is of two dispatches a few seconds apart), and
    its FLOPs per step (exact, on the jaxpr) against plain ti's.
    """
    if steps < MIN_STEPS and not allow_few_steps:
        raise ValueError(f"steps={steps}: time at least {MIN_STEPS} steps for a median and spread")
    configs = ti_option_configs(config, exchange_every, adapt_every)
    mesh = data_mesh()
    k_init, seed_key = jax.random.split(jax.random.key(seed))
    programs = {}
    for label, c in configs.items():
        model, objective, optimizers = _setup(c)
        state = jax.device_put(create_train_state(model, optimizers, k_init, build.initial_ladder(c)),
                               NamedSharding(mesh, P()))
        xs = global_batches(_random_images(c, 2 * c.batch_size, seed), c, 0, c.steps_per_dispatch, mesh)
        compiled, traced, compile_times = compile_timed(make_train_fn(objective, optimizers, mesh), state, xs,
                                                        seed_key)
        programs[label] = {"fn": compiled, "args": [state, xs, seed_key], "compile": compile_times,
                           "flops": count_flops(traced).scaled(1.0 / c.steps_per_dispatch).total,
                           "per": c.steps_per_dispatch, "seconds": []}

    def dispatch(p):
        out = p["fn"](*p["args"])
        p["args"][0] = out[0]  # the donated state goes on
        jax.block_until_ready(out)

    for _ in range(warmup):
        for p in programs.values():
            dispatch(p)
    for _ in range(-(-steps // config.steps_per_dispatch)):
        for p in programs.values():
            start = time.perf_counter()
            dispatch(p)
            p["seconds"].append(time.perf_counter() - start)
    base = programs[next(iter(programs))]
    options = {}
    for label, p in programs.items():
        step = Timing(tuple(p["seconds"])).summary(per=p["per"])
        ratios = np.asarray(p["seconds"]) / np.asarray(base["seconds"])
        options[label] = {"step": step, "compile": p["compile"], "flops_per_step": p["flops"],
                          "flops_ratio": p["flops"] / base["flops"], "time_ratio_median": float(np.median(ratios)),
                          "time_ratio_q25": float(np.percentile(ratios, 25)),
                          "time_ratio_q75": float(np.percentile(ratios, 75))}
    header = _header(configs[next(iter(configs))], config_name)  # plain ti's; the options are the rows
    return {"mode": "options", "header": header, "rounds": len(base["seconds"]), "options": options}


def _check_repeats(repeats: int, allow_few_steps: bool) -> None:
    if repeats < MIN_STEPS and not allow_few_steps:
        raise ValueError(f"repeats={repeats}: time at least {MIN_STEPS} calls for a median and spread")
    if repeats < 1:
        raise ValueError(f"repeats={repeats} must be >= 1")


def benchmark_sampler(
    config: ml_collections.ConfigDict,
    *,
    repeats: int = MIN_STEPS,
    matmul_size: int | None = None,
    config_name: str | None = None,
    seed: int = 0,
    allow_few_steps: bool = False,
) -> dict:
    """Sampler throughput on one device: prior samples/s (prior chains on config.num_samples latents and
    the generator, as training's sample grids: `sampling.jit_generate`) and posterior chains/s (the
    objective's posterior chains, T·S per image, on a batch of config.batch_size random images)."""
    _check_repeats(repeats, allow_few_steps)
    model, objective, optimizers = _setup(config)
    k_init, key = jax.random.split(jax.random.key(seed))
    params = model.init(k_init)
    x = jnp.asarray(to_float(_random_images(config, config.batch_size, seed)))
    rungs = config.ti.num_temps if config.variant == "ti" else 1
    runs = {  # name: (jitted fn, its arguments, its static arguments, count per call, unit)
        "prior": (sampling.jit_generate(model, build.prior_chain(config)), (params, key), (config.num_samples,),
                  config.num_samples, "samples"),
        "posterior": (step_pieces(objective, optimizers)["posterior"], (params, x, key), (),
                      rungs * objective.num_chains * config.batch_size, "chains"),
    }
    result: dict = {"mode": "sampler", "header": {**_header(config, config_name), "num_samples": config.num_samples}}
    compiled = None
    for name, (fn, args, static, count, unit) in runs.items():
        compiled, result[name] = _time_jitted(fn, args, repeats, count, unit, static=static)
        result[name]["xla_flops"] = xla_flops(compiled)
        if name == "posterior":
            result[name]["images_per_s"] = config.batch_size / (result[name]["median_ms"] / 1e3)
    result["memory"] = memory_report(compiled, "posterior chains")
    return _add_efficiency(result, runs, matmul_size, devices=1)


def _time_jitted(fn: Callable, args: tuple, repeats: int, count: int, unit: str,
                 static: tuple = ()) -> tuple[Any, dict]:
    """(compiled, figures) of a jitted ``fn`` on ``args`` making ``count`` ``unit`` per call: compile times,
    the call's timing summary, ``<unit>_per_s``, FLOPs per call and GFLOP/s. ``static``: the trailing
    static arguments of ``fn``, given when tracing only (the compiled call takes ``args``)."""
    compiled, traced, compile_times = compile_timed(fn, *args, *static)
    timing = time_fn(compiled, *args, repeats=repeats, warmup=1)
    flops = count_flops(traced).total
    return compiled, {**compile_times, **timing.summary(), unit: count, f"{unit}_per_s": count / timing.median,
                      "flops": flops, "gflops_per_s": _rate(flops, timing.median)}


def _add_efficiency(result: dict, names, matmul_size: int | None, devices: int) -> dict:
    """Measures the matmul peak and adds each named part's efficiency (its GFLOP/s over devices × peak)."""
    peak = matmul_peak(matmul_size)
    result["peak_matmul"] = peak
    for name in names:
        result[name]["efficiency"] = result[name]["gflops_per_s"] / (peak["gflops"] * devices)
    return result


def benchmark_evaluation(
    config: ml_collections.ConfigDict,
    *,
    repeats: int = MIN_STEPS,
    matmul_size: int | None = None,
    config_name: str | None = None,
    seed: int = 0,
    allow_few_steps: bool = False,
    weights: str | None = None,
) -> dict:
    """What one sample-quality evaluation costs, per ``config.eval.batch_size`` images:

    generation   `sampling.make_generate_fn`: prior chains and the generator, split over all devices
    inception    `inception.InceptionFeatures` as evaluation calls it (numpy in, 2048-d features out;
                 range check, padding and transfers included), over all devices. pytorch-fid's weights when
                 they are on disk (``weights``, LEBM_JAX_INCEPTION_WEIGHTS or the cache), else random weights
                 of the same network, which cost the same.

    Reference statistics are computed once per data set and feature space and cached
    (`lebm_jax.measure.features.reference_statistics`), so an evaluation's cost is ``eval.num_samples``
    images through both (docs/design.md §6)."""
    _check_repeats(repeats, allow_few_steps)
    batch = int(config.eval.batch_size)
    model, _, _ = _setup(config)
    k_init, key = jax.random.split(jax.random.key(seed))
    params = model.init(k_init)
    result: dict = {"mode": "evaluation", "header": {**_header(config, config_name), "eval_batch_size": batch,
                                                     "eval_num_samples": int(config.eval.num_samples)}}

    generate = sampling.make_generate_fn(model, build.prior_chain(config), batch)
    _, result["generation"] = _time_jitted(generate, (params, key), repeats, batch, "images")

    try:
        fid_params, real = inception.load_fid_params(weights, download=False), True
    except FileNotFoundError:
        fid_params = inception.FIDInceptionV3().init(jax.random.key(seed), jnp.zeros((1, 299, 299, 3)))
        real = False
    features = inception.make_feature_fn(fid_params, batch_size=batch)
    images = to_float(_random_images(config, batch, seed))
    t0 = time.perf_counter()
    features(images)  # compiles
    first_s = time.perf_counter() - t0
    timing = time_fn(features, images, repeats=repeats, warmup=1)
    traced = jax.jit(inception.FIDInceptionV3().apply).trace(fid_params, jnp.asarray(images[:features.batch_size]))
    flops = count_flops(traced).total
    result["inception"] = {"first_call_s": first_s, **timing.summary(), "images": batch,
                           "images_per_s": batch / timing.median, "flops": flops,
                           "gflops_per_s": _rate(flops, timing.median), "fid_weights": real,
                           "traces": features.trace_count}
    n = int(config.eval.num_samples)
    result["per_evaluation_s"] = {name: n / result[name]["images_per_s"] for name in ("generation", "inception")}
    result["memory"] = memory_report()
    return _add_efficiency(result, ("generation", "inception"), matmul_size, devices=jax.device_count())
