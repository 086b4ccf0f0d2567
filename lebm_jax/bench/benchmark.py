"""Benchmark of the training step and the samplers: compile time, step time, where the time goes,
FLOPs, achieved against peak throughput, and memory.

Everything runs on random data of the config's image shape (no data set is read) through the real
training code: `lebm_jax.train.make_train_fn` over `data_mesh()`, with the config's
``steps_per_dispatch`` (a step's time is a dispatch's divided by it). The pieces a step is made of are
jitted apart from the same objective (`step_pieces`) and timed on one device's share of the batch, as
each device runs them inside the step:

    prior      `objectives.sample_prior`: S·b prior chains z⁻ ~ p_α            (K_prior steps)
    posterior  `objectives.sample_power_posteriors`: T·S·b chains z ~ π_t(z|x)   (K_post steps; T = 1 for vanilla)
    update     ∇ of loss_E + loss_G at fixed samples, then both Adam updates
    other      the step's median minus the three: pmean, finite checks, metrics, dispatch. It is small,
               so on a busy machine the noise of four separate timings can make it negative.

FLOPs are counted on the jaxpr (`count_flops`), not taken from XLA: XLA's ``cost_analysis()`` counts
the body of a loop once, whatever its trip count, and our Langevin chains are ``lax.scan`` loops
(on CPU the posterior chain is unrolled and the steps of a dispatch are a Python loop, so there XLA
misses mostly the prior chain's steps). Conventions, per operation of the traced program after dead
code elimination (work no output depends on is not counted, as XLA does not run it):

- ``dot_general``: 2 · (output elements) · (contracted size), exact.
- ``conv_general_dilated``: 2 · (output elements) · (input features per group) · (kernel taps that land
  on a real input element): taps that fall on padding or on the holes of an lhs (input) dilation, as in
  a transposed convolution, are not counted. This is what XLA's cost analysis counts for one
  convolution. The standard dense formula 2·N·out_spatial·kh·kw·(Cin/groups)·Cout, which also counts
  those taps (4× more for the generator's stride-2 layers), is reported apart as ``conv_dense``.
- floating-point elementwise arithmetic (add, mul, exp, tanh, …): 1 per output element; reductions:
  1 per input element. Data movement, comparisons and integer work (PRNG bits) count 0.
- sub-jaxprs: jit/pjit, calls, custom_jvp/custom_vjp, remat counted once; ``scan`` × its ``length``;
  ``cond``: the costliest branch; ``shard_map`` × the number of devices it is manual over (counts are
  global, over all devices); ``while`` (trip count unknown): body counted once and reported in
  ``while_loops``.

Efficiency is achieved GFLOP/s over the measured peak of one float32 matmul per device times the
number of devices (with the default matmul precision, which the step also uses).
"""

from __future__ import annotations

import dataclasses
import math
import platform
import resource
import time
from collections import Counter
from typing import Any, Callable

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import ml_collections
import numpy as np

MIN_STEPS = 10  # real runs time at least this many training steps
NOMINAL_STEPS_PER_EPOCH = 1000  # only sets the learning-rate schedule, which costs the same at any value

# --- FLOP counting --------------------------------------------------------------------------------

ELEMENTWISE = frozenset("""
    abs acos acosh add add_any asin asinh atan atan2 atanh cbrt ceil clamp cos cosh digamma div erf
    erf_inv erfc exp exp2 expm1 floor igamma integer_pow lgamma log log1p logistic max min mul neg
    nextafter pow reciprocal rem round rsqrt sign sin sinh sqrt square sub tan tanh
""".split())
REDUCTIONS = frozenset("""
    reduce_sum reduce_max reduce_min reduce_prod argmax argmin cumsum cumprod cummax cummin cumlogsumexp
""".split())
CALLS = frozenset("""
    pjit jit closed_call core_call remat2 checkpoint custom_jvp_call custom_vjp_call custom_vjp_call_jaxpr
""".split())


@dataclasses.dataclass
class FlopCount:
    """FLOPs of a program by kind (see the module docstring for the conventions)."""

    dot: float = 0.0
    conv: float = 0.0  # taps on real input elements only
    conv_dense: float = 0.0  # the dense formula, for reference (not part of total)
    elementwise: float = 0.0
    while_loops: int = 0  # while loops whose body was counted once (trip count unknown)
    by_primitive: Counter = dataclasses.field(default_factory=Counter)
    unfamiliar: set = dataclasses.field(default_factory=set)  # primitives with sub-jaxprs counted once
    dead_code_eliminated: bool = False  # see `eliminate_dead_code`

    @property
    def matmul(self) -> float:
        """dot_general + conv_general_dilated."""
        return self.dot + self.conv

    @property
    def total(self) -> float:
        return self.dot + self.conv + self.elementwise

    def add(self, other: "FlopCount", times: float = 1.0) -> None:
        self.dot += times * other.dot
        self.conv += times * other.conv
        self.conv_dense += times * other.conv_dense
        self.elementwise += times * other.elementwise
        self.while_loops += other.while_loops
        for name, value in other.by_primitive.items():
            self.by_primitive[name] += times * value
        self.unfamiliar |= other.unfamiliar

    def scaled(self, factor: float) -> "FlopCount":
        out = FlopCount(dead_code_eliminated=self.dead_code_eliminated)
        out.add(self, times=factor)
        return out

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "dot": self.dot,
            "conv": self.conv,
            "conv_dense": self.conv_dense,
            "elementwise": self.elementwise,
            "while_loops_counted_once": self.while_loops,
            "unfamiliar_primitives": sorted(self.unfamiliar),
            "dead_code_eliminated": self.dead_code_eliminated,
        }


def _size(aval) -> int:
    return math.prod(aval.shape) if hasattr(aval, "shape") else 1


def _is_float(aval) -> bool:
    try:
        return bool(jnp.issubdtype(aval.dtype, jnp.inexact))
    except (AttributeError, TypeError):
        return False  # tokens, PRNG key types


def dot_general_flops(lhs_shape, out_shape, dimension_numbers) -> float:
    """2 · (output elements) · (size of the contracted axes)."""
    (lhs_contract, _), _ = dimension_numbers
    return 2.0 * math.prod(out_shape) * math.prod(lhs_shape[d] for d in lhs_contract)


def _valid_taps(in_size, kernel, out_size, stride, pad_lo, lhs_dil, rhs_dil) -> int:
    """(output position, kernel tap) pairs along one spatial axis whose input index is a real element
    (not padding, not a hole of the input dilation)."""
    pos = np.arange(out_size)[:, None] * stride + np.arange(kernel)[None, :] * rhs_dil - pad_lo
    valid = (pos >= 0) & (pos <= (in_size - 1) * lhs_dil) & (pos % lhs_dil == 0)
    return int(valid.sum())


def conv_flops(lhs_shape, rhs_shape, out_shape, params) -> tuple[float, float]:
    """(exact, dense) FLOPs of one conv_general_dilated; see the module docstring."""
    dn = params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    spatial = len(lhs_spec) - 2
    in_features = rhs_shape[rhs_spec[1]]  # already Cin / feature_group_count
    out_spatial = [out_shape[out_spec[2 + i]] for i in range(spatial)]
    kernel = [rhs_shape[rhs_spec[2 + i]] for i in range(spatial)]
    batch_features = math.prod(out_shape) // max(math.prod(out_spatial), 1)  # N · Cout
    lhs_dil = params.get("lhs_dilation") or (1,) * spatial
    rhs_dil = params.get("rhs_dilation") or (1,) * spatial
    taps = math.prod(
        _valid_taps(lhs_shape[lhs_spec[2 + i]], kernel[i], out_spatial[i], params["window_strides"][i],
                    params["padding"][i][0], lhs_dil[i], rhs_dil[i])
        for i in range(spatial)
    )
    dense_taps = math.prod(out_spatial) * math.prod(kernel)
    return 2.0 * batch_features * in_features * taps, 2.0 * batch_features * in_features * dense_taps


def _sub_jaxprs(value):
    if isinstance(value, jex.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def _count_jaxpr(jaxpr: jex.Jaxpr) -> FlopCount:
    count = FlopCount()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        params = eqn.params
        ins = [v.aval for v in eqn.invars]
        outs = [v.aval for v in eqn.outvars]
        if name == "dot_general":
            flops = dot_general_flops(ins[0].shape, outs[0].shape, params["dimension_numbers"])
            count.dot += flops
            count.by_primitive[name] += flops
        elif name == "conv_general_dilated":
            exact, dense = conv_flops(ins[0].shape, ins[1].shape, outs[0].shape, params)
            count.conv += exact
            count.conv_dense += dense
            count.by_primitive[name] += exact
        elif name in ELEMENTWISE:
            if outs and _is_float(outs[0]):
                flops = float(sum(_size(a) for a in outs))
                count.elementwise += flops
                count.by_primitive[name] += flops
        elif name in REDUCTIONS:
            if ins and _is_float(ins[0]):
                flops = float(sum(_size(a) for a in ins))
                count.elementwise += flops
                count.by_primitive[name] += flops
        elif name == "scan":
            count.add(_count_jaxpr(params["jaxpr"].jaxpr), times=params["length"])
        elif name == "while":
            count.add(_count_jaxpr(params["cond_jaxpr"].jaxpr))
            count.add(_count_jaxpr(params["body_jaxpr"].jaxpr))
            count.while_loops += 1
        elif name == "cond":
            branches = [_count_jaxpr(b.jaxpr) for b in params["branches"]]
            count.add(max(branches, key=lambda c: c.total))
        elif name == "shard_map":
            mesh = params["mesh"]
            axes = params.get("newly_manual_axes", params.get("manual_axes"))
            axes = mesh.axis_names if axes is None else axes
            devices = math.prod(dict(mesh.shape)[a] for a in axes)
            count.add(_count_jaxpr(params["jaxpr"]), times=devices)
        else:
            subs = [j for value in params.values() for j in _sub_jaxprs(value)]
            for sub in subs:
                count.add(_count_jaxpr(sub))
            if subs and name not in CALLS:
                count.unfamiliar.add(name)
    return count


def eliminate_dead_code(jaxpr: jex.Jaxpr) -> tuple[jex.Jaxpr, bool]:
    """(jaxpr without the equations no output depends on, whether that was done).

    Traced programs hold work XLA never runs: e.g. the custom VJP of the generator's layers computes a
    kernel gradient that a Langevin score (a gradient in z only) discards. JAX's own pass (recursing
    into scan, while, cond, jit and shard_map bodies) is internal API; where it is missing the jaxpr is
    counted as it stands and the count says so (``dead_code_eliminated`` False).
    """
    try:
        from jax._src.interpreters import partial_eval as pe

        return pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))[0], True
    except Exception:  # noqa: BLE001  (internal API moved or refused the program)
        return jaxpr, False


def count_flops(fn_or_jaxpr, *args, dce: bool = True, **kwargs) -> FlopCount:
    """FLOPs of a program: a (Closed)Jaxpr, a `jax.stages.Traced`, or a function traced on ``args``.

    Loops are counted with their trip counts (``scan`` × length); with ``dce`` (default) only the work
    some output depends on is counted, as XLA would run it. See the module docstring.
    """
    obj = fn_or_jaxpr
    if isinstance(obj, jax.stages.Traced):
        obj = obj.jaxpr
    elif not isinstance(obj, (jex.ClosedJaxpr, jex.Jaxpr)):
        obj = jax.make_jaxpr(obj)(*args, **kwargs)
    if isinstance(obj, jex.ClosedJaxpr):
        obj = obj.jaxpr
    eliminated = False
    if dce:
        obj, eliminated = eliminate_dead_code(obj)
    count = _count_jaxpr(obj)
    count.dead_code_eliminated = eliminated
    return count


def xla_flops(compiled) -> float | None:
    """XLA's own estimate (``compiled.cost_analysis()['flops']``): loop bodies are counted once."""
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001  (backends without a cost model)
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])


# --- timing ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Timing:
    seconds: tuple[float, ...]  # one per timed call

    def summary(self, per: float = 1.0) -> dict:
        """Median, spread and mean in milliseconds of each call divided by ``per`` (e.g. steps per call)."""
        ms = np.asarray(self.seconds) * 1e3 / per
        q25, median, q75 = np.percentile(ms, [25, 50, 75])
        return {"median_ms": float(median), "min_ms": float(ms.min()), "max_ms": float(ms.max()),
                "q25_ms": float(q25), "q75_ms": float(q75), "mean_ms": float(ms.mean()), "calls": int(ms.size)}

    @property
    def median(self) -> float:
        return float(np.median(self.seconds))


def time_fn(fn: Callable, *args, repeats: int = 10, warmup: int = 1, carry: bool = False) -> Timing:
    """Wall time of ``fn(*args)`` until its outputs are ready, ``repeats`` times after ``warmup`` calls.

    With ``carry``, ``fn`` returns ``(new_first_arg, out)`` and each call gets the previous call's
    first result (a training state that the function donates).
    """
    args = list(args)

    def call():
        out = fn(*args)
        if carry:
            args[0] = out[0]
        jax.block_until_ready(out)

    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return Timing(tuple(seconds))


def compile_timed(fn: Callable, *args) -> tuple[Any, jax.stages.Traced, dict]:
    """(compiled, traced, {"trace_s", "lower_s", "compile_s"}) of a jitted ``fn`` on ``args``."""
    t0 = time.perf_counter()
    traced = fn.trace(*args)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    return compiled, traced, {"trace_s": t1 - t0, "lower_s": t2 - t1, "compile_s": t3 - t2}


def default_matmul_size() -> int:
    """4096 on accelerators; 1024 on CPU, where a 4096³ product takes seconds."""
    return 1024 if jax.default_backend() == "cpu" else 4096


def matmul_peak(size: int | None = None, dtype=jnp.float32, repeats: int = 5) -> dict:
    """Measured throughput of one jitted (n×n) @ (n×n) product on the default device, with the default
    matmul precision (what the training step uses): {"gflops", "size", "median_ms"}."""
    n = int(size or default_matmul_size())
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype)
    fn = jax.jit(jnp.matmul).lower(a, b).compile()
    timing = time_fn(fn, a, b, repeats=repeats, warmup=1)
    return {"gflops": 2.0 * n**3 / timing.median / 1e9, "size": n, "dtype": jnp.dtype(dtype).name,
            "median_ms": timing.median * 1e3}


# --- memory ---------------------------------------------------------------------------------------
def max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if platform.system() == "Darwin" else rss * 1024)  # Linux reports KiB


def memory_report(compiled=None, program: str = "") -> dict:
    """Device allocator statistics where the backend keeps them (GPU/TPU; the peak is over the process's
    life so far), the buffer sizes of the compiled ``program``, and the process's peak resident memory."""
    out: dict = {}
    stats = jax.local_devices()[0].memory_stats()
    if stats:
        for key in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit"):
            if key in stats:
                out[f"device_{key}"] = int(stats[key])
    if compiled is not None:
        try:
            ma = compiled.memory_analysis()
        except Exception:  # noqa: BLE001
            ma = None
        if ma is not None:
            sizes = {name: int(getattr(ma, f"{name}_size_in_bytes", 0) or 0)
                     for name in ("temp", "argument", "output", "alias", "generated_code")}
            out.update({f"compiled_{k}_bytes": v for k, v in sizes.items()})
            out["compiled_total_bytes"] = sizes["temp"] + sizes["argument"] + sizes["output"] - sizes["alias"]
            out["compiled_program"] = program
    out["max_rss_bytes"] = max_rss_bytes()
    return out


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
        "generator_widths": list(_generator_widths(config)),
    }


def _generator_widths(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    from lebm_jax.core import networks

    _, doublings = networks.generator_layout(config.data.image_size)
    return tuple(config.model.generator_widths) or networks.default_widths(config.model.ngf, doublings)


def _setup(config: ml_collections.ConfigDict):
    from lebm_jax.training import config as config_lib
    from lebm_jax.training import loop as train

    config_lib.validate(config)
    if config.batch_size % jax.device_count():
        raise ValueError(f"config.batch_size={config.batch_size} must be divisible by the {jax.device_count()} devices")
    model = train.build_model(config)
    objective = train.build_objective(config, model)
    optimizers = train.make_optimizers(config, NOMINAL_STEPS_PER_EPOCH)
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
    from lebm_jax.core.langevin import split_keys
    from lebm_jax.core.objectives import example_keys, sample_prior
    from lebm_jax.training.loop import apply_gradients

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
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from lebm_jax.training import loop as train

    model, objective, optimizers = _setup(config)
    k, devices, mesh = config.steps_per_dispatch, jax.device_count(), train.data_mesh()
    key = jax.eval_shape(jax.random.key, 0)
    state = jax.eval_shape(lambda kk: train.create_train_state(model, optimizers, kk), key)
    image = (config.data.image_size, config.data.image_size, config.data.channels)
    replicated = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, P()))  # noqa: E731
    xs = jax.ShapeDtypeStruct((k, config.batch_size) + image, jnp.float32,
                              sharding=NamedSharding(mesh, P(None, train.AXIS)))
    x = jax.ShapeDtypeStruct((config.batch_size // devices,) + image, jnp.float32)
    train_fn = train.make_train_fn(objective, optimizers, mesh)
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
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from lebm_jax.data import datasets as data_lib
    from lebm_jax.training import loop as train

    if steps < MIN_STEPS and not allow_few_steps:
        raise ValueError(f"steps={steps}: time at least {MIN_STEPS} steps for a median and spread")
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps={steps} must be >= 1 and warmup={warmup} >= 0")
    model, objective, optimizers = _setup(config)
    k = config.steps_per_dispatch
    devices = jax.device_count()
    mesh = train.data_mesh()
    k_init, seed_key = jax.random.split(jax.random.key(seed))
    state = jax.device_put(train.create_train_state(model, optimizers, k_init), NamedSharding(mesh, P()))
    images = _random_images(config, 2 * config.batch_size, seed)

    input_timing = time_fn(lambda: train.global_batches(images, config, 0, k, mesh), repeats=3, warmup=1)
    xs = train.global_batches(images, config, 0, k, mesh)  # (k, B, H, W, C), sharded over the batch

    train_fn = train.make_train_fn(objective, optimizers, mesh)
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
        x = jnp.asarray(data_lib.to_float(images[: config.batch_size // devices]))
        phase_state = train.create_train_state(model, optimizers, k_init)  # one device, not donated
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
    the generator, as training's sample grids) and posterior chains/s (the objective's posterior chains,
    T·S per image, on a batch of config.batch_size random images)."""
    from lebm_jax.data import datasets as data_lib
    from lebm_jax.training import loop as train

    _check_repeats(repeats, allow_few_steps)
    model, objective, optimizers = _setup(config)
    k_init, key = jax.random.split(jax.random.key(seed))
    params = model.init(k_init)
    x = jnp.asarray(data_lib.to_float(_random_images(config, config.batch_size, seed)))
    rungs = config.ti.num_temps if config.variant == "ti" else 1
    runs = {
        "prior": (train.make_sample_fn(model, config), (params, key), config.num_samples, "samples"),
        "posterior": (step_pieces(objective, optimizers)["posterior"], (params, x, key),
                      rungs * objective.num_chains * config.batch_size, "chains"),
    }
    result: dict = {"mode": "sampler", "header": {**_header(config, config_name), "num_samples": config.num_samples}}
    compiled = None
    for name, (fn, args, count, unit) in runs.items():
        compiled, result[name] = _time_jitted(fn, args, repeats, count, unit)
        result[name]["xla_flops"] = xla_flops(compiled)
        if name == "posterior":
            result[name]["images_per_s"] = config.batch_size / (result[name]["median_ms"] / 1e3)
    result["memory"] = memory_report(compiled, "posterior chains")
    return _add_efficiency(result, runs, matmul_size, devices=1)


def _time_jitted(fn: Callable, args: tuple, repeats: int, count: int, unit: str) -> tuple[Any, dict]:
    """(compiled, figures) of a jitted ``fn`` on ``args`` making ``count`` ``unit`` per call: compile times,
    the call's timing summary, ``<unit>_per_s``, FLOPs per call and GFLOP/s."""
    compiled, traced, compile_times = compile_timed(fn, *args)
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

    generation   `evaluation.make_generate_fn`: prior chains and the generator, split over all devices
    inception    `inception.InceptionFeatures` as evaluation calls it (numpy in, 2048-d features out;
                 range check, padding and transfers included), over all devices. pytorch-fid's weights when
                 they are on disk (``weights``, LEBM_JAX_INCEPTION_WEIGHTS or the cache), else random weights
                 of the same network, which cost the same.

    Reference statistics are computed once per data set and feature space and cached (`metrics`), so an
    evaluation's cost is ``eval.num_samples`` images through both."""
    from lebm_jax.data import datasets as data_lib
    from lebm_jax.measure import inception
    from lebm_jax.training import loop as train
    from lebm_jax.measure.evaluators import make_generate_fn

    _check_repeats(repeats, allow_few_steps)
    batch = int(config.eval.batch_size)
    model, _, _ = _setup(config)
    k_init, key = jax.random.split(jax.random.key(seed))
    params = model.init(k_init)
    result: dict = {"mode": "evaluation", "header": {**_header(config, config_name), "eval_batch_size": batch,
                                                     "eval_num_samples": int(config.eval.num_samples)}}

    generate = make_generate_fn(model, train.chain_spec(config.prior_chain, through_generator=False), batch)
    _, result["generation"] = _time_jitted(generate, (params, key), repeats, batch, "images")

    try:
        fid_params, real = inception.load_fid_params(weights, download=False), True
    except FileNotFoundError:
        fid_params = inception.FIDInceptionV3().init(jax.random.key(seed), jnp.zeros((1, 299, 299, 3)))
        real = False
    features = inception.make_feature_fn(fid_params, batch_size=batch)
    images = data_lib.to_float(_random_images(config, batch, seed))
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


# --- printing -------------------------------------------------------------------------------------
def _si(value, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _bytes(value) -> str:
    if value is None:
        return "n/a"
    for factor, prefix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= factor:
            return f"{value / factor:.1f} {prefix}"
    return f"{value} B"


def _rows(rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(name) for name, _ in rows)
    return [f"  {name:<{width}}  {value}" for name, value in rows]


def format_header(h: dict) -> str:
    return (
        f"backend {h['backend']}: {h['device_count']} x {h['device_kind']} ({h['process_count']} process(es)), "
        f"jax {h['jax_version']}\n"
        f"config {h['config']}  variant {h['variant']}  batch {h['batch_size']}  image {tuple(h['image_shape'])}  "
        f"nz {h['latent_dim']}\n"
        f"chains: prior {h['prior_steps']} steps, posterior {h['posterior_steps']} steps x {h['rungs']} rung(s) "
        f"x {h['chains_per_example']} chain(s)/example; {h['steps_per_dispatch']} step(s) per dispatch"
        + (f"; {h['num_samples']} prior samples" if "num_samples" in h else "")
    )


def _memory_rows(m: dict) -> list[tuple[str, str]]:
    rows = []
    if "device_peak_bytes_in_use" in m:
        rows.append(("device peak memory", f"{_bytes(m['device_peak_bytes_in_use'])} of "
                                           f"{_bytes(m.get('device_bytes_limit'))}"))
    if "compiled_total_bytes" in m:
        parts = ", ".join(f"{name} {_bytes(m[f'compiled_{name}_bytes'])}"
                          for name in ("temp", "argument", "output", "alias"))
        rows.append((f"memory, {m['compiled_program']}", f"{_bytes(m['compiled_total_bytes'])} compiled buffers ({parts})"))
    rows.append(("process max RSS", _bytes(m["max_rss_bytes"])))
    return rows


def format_table(result: dict) -> str:
    """A plain-text report of `benchmark_train`, `benchmark_sampler` or `benchmark_evaluation`'s result."""
    lines = [format_header(result["header"]), ""]
    if result["mode"] == "train":
        c, s, f = result["compile"], result["step"], result["flops"]
        by_kind = f["per_step_by_kind"]
        rows = [
            ("compile", f"trace {c['trace_s']:.2f} s + lower {c['lower_s']:.2f} s + compile {c['compile_s']:.2f} s"),
            ("step time", f"median {s['median_ms']:.2f} ms  (min {s['min_ms']:.2f}, IQR {s['q25_ms']:.2f}-"
                          f"{s['q75_ms']:.2f}, max {s['max_ms']:.2f}) over {s['steps_timed']} steps"),
            ("throughput", f"{s['images_per_s']:.1f} images/s"),
            ("host input", f"{result['input']['ms_per_step']:.2f} ms/step (not in the step time)"),
            ("FLOPs / step", f"{_si(f['per_step'], 'FLOP')}  (dot {_si(by_kind['dot'])}, conv {_si(by_kind['conv'])}"
                             f" [dense {_si(by_kind['conv_dense'])}], elementwise {_si(by_kind['elementwise'])})"),
            ("XLA cost_analysis", f"{_si(f['xla_per_dispatch'], 'FLOP')} per dispatch "
                                  "(one device's program, loop bodies counted once)"),
            ("achieved", f"{f['achieved_gflops_per_s']:.2f} GFLOP/s"),
            ("peak matmul", f"{f['peak_matmul_gflops_per_device']:.2f} GFLOP/s per device "
                            f"({f['peak_matmul']['size']}^3 {f['peak_matmul']['dtype']})"),
            ("efficiency", f"{100 * f['efficiency']:.1f} % of peak"),
        ]
        if by_kind["while_loops_counted_once"]:
            rows.append(("warning", f"{by_kind['while_loops_counted_once']} while loop(s): body counted once"))
        if by_kind["unfamiliar_primitives"]:
            rows.append(("warning", f"sub-programs of {by_kind['unfamiliar_primitives']} counted once"))
        if not by_kind["dead_code_eliminated"]:
            rows.append(("warning", "dead code could not be removed: FLOPs may include work XLA drops"))
        lines += _rows(rows + _memory_rows(result["memory"]))
        if "phases" in result:
            lines += ["", "  time split (pieces jitted apart on one device's share of the batch):",
                      f"    {'phase':<10} {'ms':>10} {'% step':>8} {'FLOPs':>12} {'GFLOP/s':>9}"]
            for name, p in result["phases"].items():
                rate = f"{p['gflops_per_s']:9.2f}" if p.get("gflops_per_s") is not None else f"{'':>9}"
                lines.append(f"    {name:<10} {p['ms']:10.2f} {p['pct']:8.1f} {_si(p['flops']):>12} {rate}")
            if result["phases"]["other"]["ms"] < 0:
                lines.append("    (other < 0: the pieces, timed apart, varied by more than the step's bookkeeping)")
    elif result["mode"] == "evaluation":
        rows = []
        for name, what in (("generation", "generation (prior chains + generator)"),
                           ("inception", "Inception-v3 features" + ("" if result["inception"]["fid_weights"]
                                                                    else " (random weights)"))):
            r = result[name]
            first = (f"compile {r['compile_s']:.2f} s" if "compile_s" in r else f"first call {r['first_call_s']:.2f} s")
            rows += [
                (name, what),
                (f"{name} call", f"median {r['median_ms']:.2f} ms (min {r['min_ms']:.2f}, max {r['max_ms']:.2f}) for "
                                 f"{r['images']} images; {first}"),
                (f"{name} rate", f"{r['images_per_s']:.1f} images/s, {_si(r['flops'], 'FLOP')} per call, "
                                 f"{r['gflops_per_s']:.2f} GFLOP/s = {100 * r['efficiency']:.1f} % of peak"),
            ]
        per = result["per_evaluation_s"]
        rows.append(("one evaluation", f"{result['header']['eval_num_samples']} images: generation "
                                       f"{per['generation']:.1f} s + Inception {per['inception']:.1f} s "
                                       "(reference statistics cached)"))
        peak = result["peak_matmul"]
        rows.append(("peak matmul", f"{peak['gflops']:.2f} GFLOP/s per device ({peak['size']}^3 {peak['dtype']})"))
        lines += _rows(rows + _memory_rows(result["memory"]))
    else:
        rows = []
        for name in ("prior", "posterior"):
            r = result[name]
            unit = "samples" if name == "prior" else "chains"
            extra = f", {r['images_per_s']:.1f} images/s" if name == "posterior" else ""
            rows += [
                (f"{name} compile", f"trace {r['trace_s']:.2f} s + lower {r['lower_s']:.2f} s + "
                                    f"compile {r['compile_s']:.2f} s"),
                (f"{name} call", f"median {r['median_ms']:.2f} ms (min {r['min_ms']:.2f}, max {r['max_ms']:.2f}) "
                                 f"for {r[unit]} {unit}"),
                (f"{name} rate", f"{r[unit + '_per_s']:.1f} {unit}/s{extra}"),
                (f"{name} FLOPs", f"{_si(r['flops'], 'FLOP')} per call (XLA: {_si(r['xla_flops'])}), "
                                  f"{r['gflops_per_s']:.2f} GFLOP/s = {100 * r['efficiency']:.1f} % of peak"),
            ]
        peak = result["peak_matmul"]
        rows.append(("peak matmul", f"{peak['gflops']:.2f} GFLOP/s ({peak['size']}^3 {peak['dtype']})"))
        lines += _rows(rows + _memory_rows(result["memory"]))
    return "\n".join(lines)


def _gflop(flops: float) -> str:
    g = flops / 1e9
    return f"{g:,.0f}" if g >= 100 else f"{g:.3g}"


def summary_table(results: list[dict]) -> str:
    """One Markdown row per `benchmark_train` result (as written with ``--json``): the step's median
    time, throughput, FLOPs, achieved rate and share of the matmul peak, and the biggest phase."""
    lines = ["| config | variant | batch | rungs | generator widths | step (median) | images/s | GFLOP/step | "
             "GFLOP/s | matmul peak GFLOP/s | efficiency | posterior chains |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r.get("mode") != "train":
            raise ValueError(f"summary_table takes training benchmarks, got mode {r.get('mode')!r}")
        h, s, f = r["header"], r["step"], r["flops"]
        widths = "/".join(map(str, h["generator_widths"])) if "generator_widths" in h else "—"
        step = f"{s['median_ms'] / 1e3:.2f} s" if s["median_ms"] >= 1000 else f"{s['median_ms']:.1f} ms"
        posterior = f"{r['phases']['posterior']['pct']:.0f} %" if "phases" in r else "—"
        lines.append(
            f"| {h['config']} | {h['variant']} | {h['batch_size']} | {h['rungs']} | {widths} | {step} | "
            f"{s['images_per_s']:.1f} | {_gflop(f['per_step'])} | {f['achieved_gflops_per_s']:.1f} | "
            f"{f['peak_matmul_gflops_per_device']:.0f} | {100 * f['efficiency']:.1f} % | {posterior} |"
        )
    return "\n".join(lines)
