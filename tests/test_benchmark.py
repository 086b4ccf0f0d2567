"""The benchmark: the FLOP counter on hand-computable programs, FLOPs of the training step against the
chain lengths and the ladder, and the CLI end to end. No timing is asserted.

The CLI runs here time 2 steps (--allow_few_steps, a smoke-test switch); real runs time at least 10.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from jax import lax
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from lebm_jax import bench

from tiny import MODEL, tiny_config

REPO = Path(__file__).resolve().parents[1]

# the tiny model (tests/tiny.py) with explicit generator widths; configs/digits.py's run settings
TINY = {**MODEL, "model.generator_widths": (8, 4)}


def tiny_digits(**overrides):
    return tiny_config("digits", base=TINY, **overrides)


def xla(fn, *args) -> float:
    return bench.xla_flops(jax.jit(fn).lower(*args).compile())


# --- the counter on programs whose FLOPs are known ---------------------------------------------------
def test_dot_general_exact():
    a, b = jnp.ones((8, 16)), jnp.ones((16, 4))
    count = bench.count_flops(jnp.matmul, a, b)
    assert count.dot == count.total == 2 * 8 * 4 * 16
    assert xla(jnp.matmul, a, b) == count.dot
    batched = bench.count_flops(lambda x, y: jnp.einsum("bij,bjk->bik", x, y), jnp.ones((3, 8, 16)),
                                jnp.ones((3, 16, 4)))
    assert batched.dot == 3 * 2 * 8 * 4 * 16


def _conv(dims, **kw):
    return lambda x, w: lax.conv_general_dilated(x, w, dimension_numbers=dims, **kw)


NHWC = ("NHWC", "HWIO", "NHWC")
CONV_CASES = {
    # 5×5 input, 3×3 kernel, stride 2, padding 1: outputs 0, 1, 2 per axis see 2, 3, 2 real taps → 7² of 3²·3²
    "stride2_pad1": (_conv(NHWC, window_strides=(2, 2), padding=((1, 1), (1, 1))), (2, 5, 5, 2), (3, 3, 2, 3),
                     2 * 2 * 3 * 2 * 7**2, 2 * 2 * 3 * 2 * 3**2 * 3**2),
    # transposed-conv form: 3×3 input dilated to 5×5 (real at 0, 2, 4), padding 1: 1, 2, 1, 2, 1 taps → 7² of 5²·3²
    "lhs_dilation": (_conv(NHWC, window_strides=(1, 1), padding=((1, 1), (1, 1)), lhs_dilation=(2, 2)),
                     (1, 3, 3, 2), (3, 3, 2, 3), 2 * 3 * 2 * 7**2, 2 * 3 * 2 * 5**2 * 3**2),
    # two feature groups of 2 input channels, 6 outputs, VALID: 3² outputs × 3² taps × 2 inputs per group
    "groups": (_conv(NHWC, window_strides=(1, 1), padding="VALID", feature_group_count=2), (1, 5, 5, 4),
               (3, 3, 2, 6), 2 * 6 * 2 * 3**2 * 3**2, 2 * 6 * 2 * 3**2 * 3**2),
    # 1-D, kernel 3 with rhs dilation 2 (span 5) over 7 positions, VALID: 3 outputs × 3 taps
    "rhs_dilation": (_conv(("NWC", "WIO", "NWC"), window_strides=(1,), padding="VALID", rhs_dilation=(2,)),
                     (1, 7, 1), (3, 1, 1), 2 * 3 * 3, 2 * 3 * 3),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_exact(case):
    fn, x_shape, w_shape, exact, dense = CONV_CASES[case]
    x, w = jnp.ones(x_shape), jnp.ones(w_shape)
    count = bench.count_flops(fn, x, w)
    assert count.conv == count.total == exact
    assert count.conv_dense == dense
    assert xla(fn, x, w) == exact  # XLA counts the taps on real input the same way


def test_scan_multiplies_by_length_and_nests():
    n, w, c0 = 4, jnp.ones((4, 4)), jnp.ones((4, 4))
    body = 2 * n**3

    def chain(c, length):
        return lax.scan(lambda c, _: (c @ w, None), c, None, length=length)[0]

    assert bench.count_flops(lambda c: chain(c, 5), c0).total == 5 * body
    nested = lambda c: lax.scan(lambda c, _: (chain(c, 4), None), c, None, length=3)[0]  # noqa: E731
    assert bench.count_flops(nested, c0).total == 12 * body
    # unrolling changes the program XLA gets, not the count
    unrolled = lambda c: lax.scan(lambda c, _: (c @ w, None), c, None, length=6, unroll=True)[0]  # noqa: E731
    assert bench.count_flops(unrolled, c0).total == 6 * body


def test_grad_of_matmul_is_three_forward_matmuls():
    a, b = jnp.ones((8, 16)), jnp.ones((16, 4))
    forward = 2 * 8 * 4 * 16
    both = (0, 1)
    count = bench.count_flops(jax.value_and_grad(lambda a, b: jnp.sum(a @ b), argnums=both), a, b)
    assert count.dot == 3 * forward  # a @ b, g @ bᵀ, aᵀ @ g
    count = bench.count_flops(jax.grad(lambda a, b: jnp.sum(jnp.tanh(a @ b)), argnums=both), a, b)
    assert count.dot == 3 * forward
    # the gradient of a linear function does not need its value: the forward product is dead code
    assert bench.count_flops(jax.grad(lambda a, b: jnp.sum(a @ b), argnums=both), a, b).dot == 2 * forward


def test_elementwise_and_integer_work():
    x = jnp.ones((10, 10))
    count = bench.count_flops(lambda x: jnp.tanh(x) + 1.0, x)
    assert count.elementwise == count.total == 200
    assert bench.count_flops(lambda i: i * 3 + 1, jnp.ones((10, 10), jnp.int32)).total == 0
    assert bench.count_flops(lambda x: jnp.sum(x), x).total == 100


def test_while_counted_once_and_reported_cond_takes_costliest_branch():
    w, c0 = jnp.ones((4, 4)), jnp.ones((4, 4))
    count = bench.count_flops(lambda c: lax.while_loop(lambda c: c[0, 0] < 0, lambda c: c @ w, c), c0)
    assert count.dot == 2 * 4**3 and count.while_loops == 1
    assert bench.count_flops(lambda c: chain_free(c, w), c0).while_loops == 0
    branches = lambda p, c: lax.cond(p, lambda c: (c @ w) @ w, lambda c: c @ w, c)  # noqa: E731
    assert bench.count_flops(branches, True, c0).dot == 2 * 2 * 4**3


def chain_free(c, w):
    return c @ w


def test_dead_code_not_counted():
    a, b = jnp.ones((8, 16)), jnp.ones((16, 4))

    def fn(a, b):
        unused = a.T @ a  # noqa: F841  (traced, never used)
        return a @ b

    count = bench.count_flops(fn, a, b)
    assert count.dead_code_eliminated
    assert count.dot == 2 * 8 * 4 * 16
    assert bench.count_flops(fn, a, b, dce=False).dot == 2 * 8 * 4 * 16 + 2 * 16 * 16 * 8


def test_shard_map_counts_every_device():
    mesh = AbstractMesh((4,), ("d",))
    fn = jax.shard_map(lambda a, b: a @ b, mesh=mesh, in_specs=(P("d"), P()), out_specs=P("d"))
    assert bench.count_flops(fn, jnp.ones((8, 16)), jnp.ones((16, 4))).dot == 2 * 8 * 4 * 16  # 4 × (2, 16)@(16, 4)


def test_time_fn_threads_a_carried_state():
    calls = []

    def step(state, x):
        calls.append(int(state))
        return state + x, state * 2

    timing = bench.time_fn(step, jnp.asarray(0), jnp.asarray(1), repeats=3, warmup=2, carry=True)
    assert calls == [0, 1, 2, 3, 4] and len(timing.seconds) == 3
    summary = timing.summary(per=2)
    assert summary["min_ms"] <= summary["median_ms"] <= summary["max_ms"]


# --- FLOPs of the training step against the chains and the ladder -----------------------------------
def test_step_flops_grow_linearly_with_posterior_steps():
    f = {k: bench.step_flops(tiny_digits(**{"posterior_chain.num_steps": k})) for k in (2, 4, 8)}
    # K steps evaluate the posterior score K + 1 times (z_0 and after each step): generator forward and
    # input gradient, and the EBM's, are the same program each time
    for k in (2, 4):
        assert f[2 * k]["posterior"].matmul / f[k]["posterior"].matmul == pytest.approx((2 * k + 1) / (k + 1), rel=1e-12)
    # everything else in the step is independent of K: its FLOPs are affine in K, the slope is the posterior's
    slope = f[4]["step"].total - f[2]["step"].total
    assert f[8]["step"].total - f[4]["step"].total == pytest.approx(2 * slope, rel=1e-12)
    assert slope == pytest.approx(f[4]["posterior"].total - f[2]["posterior"].total, rel=1e-12)
    assert f[8]["prior"].total == f[2]["prior"].total and f[8]["update"].total == f[2]["update"].total
    # the pieces add up to the step, up to its small bookkeeping (pmean, finite checks, gradient norms)
    pieces = sum(f[4][name].total for name in ("prior", "posterior", "update"))
    assert pieces == pytest.approx(f[4]["step"].total, rel=0.02)
    assert not f[4]["step"].while_loops and f[4]["step"].dead_code_eliminated


def test_step_flops_grow_linearly_with_rungs():
    vanilla = bench.step_flops(tiny_digits())
    ti = {t: bench.step_flops(tiny_digits(**{"variant": "ti", "ti.num_temps": t})) for t in (2, 3, 5)}
    for t, f in ti.items():
        # one chain per rung; the t_0 = 0 rung's chains target the prior and skip the generator: T − 1 times
        # the vanilla posterior's products, plus one prior chain's (the tiny config's chains have equal lengths)
        assert vanilla["prior"].matmul > 0
        assert f["posterior"].matmul == pytest.approx(
            (t - 1) * vanilla["posterior"].matmul + vanilla["prior"].matmul, rel=1e-12)
        assert f["prior"].total == vanilla["prior"].total
    slope = ti[3]["step"].total - ti[2]["step"].total
    assert ti[5]["step"].total - ti[3]["step"].total == pytest.approx(2 * slope, rel=1e-9)
    assert ti[5]["step"].total > 4 * vanilla["posterior"].total


def test_replica_exchange_adds_one_generator_pass_per_round_and_the_adaptive_ladder_none():
    """Replica exchange carries ℓ and the score parts through the chain, so its only extra matmuls are the
    t_0 = 0 rung's generator forward and input gradient once per round (that rung's steps skip the
    generator); the adaptive ladder's update is elementwise work on (N,) vectors."""
    k, n, every = 4, 5, 2
    chains = {"posterior_chain.num_steps": k, "prior_chain.num_steps": k}
    vanilla = bench.step_flops(tiny_digits(**chains))
    generator_pass = (vanilla["posterior"].matmul - vanilla["prior"].matmul) / (k + 1)  # one rung, one evaluation
    ti = {"variant": "ti", "ti.num_temps": n, **chains}
    plain = bench.step_flops(tiny_digits(**ti))
    exchange = bench.step_flops(tiny_digits(**ti, **{"ti.exchange_every": every}))
    assert exchange["posterior"].matmul == pytest.approx(plain["posterior"].matmul + (k // every) * generator_pass,
                                                         rel=1e-12)
    assert exchange["prior"].total == plain["prior"].total and exchange["update"].total == plain["update"].total
    adaptive = bench.step_flops(tiny_digits(**ti, **{"ti.adapt_every": 3}))
    for piece in ("prior", "posterior", "update"):
        assert adaptive[piece].total == plain[piece].total
    assert adaptive["step"].matmul == plain["step"].matmul
    # the update of the ladder is in the step (a few hundred FLOPs on (N,) vectors), and nothing else is
    assert 0 < adaptive["step"].total - plain["step"].total < 1e-5 * plain["step"].total


def test_prior_flops_grow_linearly_with_prior_steps():
    f = {k: bench.step_flops(tiny_digits(**{"prior_chain.num_steps": k}))["prior"].matmul for k in (3, 7)}
    assert f[7] / f[3] == pytest.approx(8 / 4, rel=1e-12)


def test_options_benchmark_times_each_ti_option_against_plain_ti():
    """--mode options: three programs compiled in one process and timed round by round; FLOPs exact on the
    jaxpr (replica exchange's extra is the one generator pass per round of the test above); times only
    checked to be there, never compared."""
    config = tiny_digits(**{"posterior_chain.num_steps": 2, "prior_chain.num_steps": 2, "ti.num_temps": 3})
    result = bench.benchmark_ti_options(config, steps=3, warmup=1, exchange_every=1, adapt_every=3,
                                        allow_few_steps=True)
    assert result["header"]["variant"] == "ti" and result["rounds"] == 3
    assert list(result["options"]) == ["ti", "ti +RE/1", "ti +adaptive/3"]
    ti, re, adaptive = result["options"].values()
    assert ti["flops_ratio"] == 1.0 and ti["time_ratio_median"] == 1.0
    assert 1.0 < re["flops_ratio"] < 1.5 and 1.0 < adaptive["flops_ratio"] < 1.0 + 1e-4
    for r in result["options"].values():
        assert r["step"]["calls"] == 3 and r["step"]["median_ms"] > 0 and r["time_ratio_median"] > 0
    text = bench.format_table(result)
    assert "ti +RE/1" in text and "time / ti" in text
    without = bench.ti_option_configs(config, exchange_every=0, adapt_every=3)
    assert list(without) == ["ti", "ti +adaptive/3"]
    with pytest.raises(ValueError, match="ti.exchange_every"):
        bench.ti_option_configs(config, exchange_every=3, adapt_every=0)  # does not divide 2 posterior steps


def test_summary_rows_name_the_ti_options():
    """A row says which ti options ran; a result saved before the option fields existed reads as plain."""
    def result(**options):
        header = {"config": "configs/digits.py", "variant": "ti", "batch_size": 100, "rungs": 10,
                  "generator_widths": [32, 16], **options}
        return {"mode": "train", "header": header, "step": {"median_ms": 250.0, "images_per_s": 400.0},
                "flops": {"per_step": 1.2e10, "achieved_gflops_per_s": 48.0, "peak_matmul_gflops_per_device": 90.0,
                          "efficiency": 0.533}}

    rows = bench.summary_table([result(), result(exchange_every=5), result(adapt_every=10),
                                result(exchange_every=0, adapt_every=0)]).splitlines()[2:]
    labels = [row.strip("|").split("|")[1].strip() for row in rows]
    assert labels == ["ti", "ti +RE/5", "ti +adaptive/10", "ti"]
    assert all("250.0 ms" in row and "53.3 %" in row for row in rows)


# --- the CLI ------------------------------------------------------------------------------------------
TINY_FLAGS = [f"--config.{k}={v}".replace(" ", "") for k, v in TINY.items()] + ["--matmul_size=64", "--warmup=1"]


def test_cli_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    base = [sys.executable, "-m", "experiments.benchmark", "--config", "configs/digits.py", *TINY_FLAGS]
    runs = {
        "train": [*base, "--steps=2", "--allow_few_steps", f"--json={tmp_path / 'train.json'}"],
        "sampler_ti": [*base, "--config.variant=ti", "--mode=sampler", "--steps=2", "--allow_few_steps",
                       f"--json={tmp_path / 'sampler.json'}"],
        "evaluation": [*base, "--mode=evaluation", "--steps=2", "--allow_few_steps", "--config.eval.batch_size=2",
                       "--config.eval.num_samples=10", f"--json={tmp_path / 'evaluation.json'}"],
        "unknown_key": [*base, "--config.modle.ngf=3"],
        "few_steps": [*base, "--steps=2"],
        "summarize_sampler": [sys.executable, "-m", "experiments.benchmark", "--summarize=" + str(REPO / "README.md")],
    }
    procs = {}
    for name, command in runs.items():
        log = open(tmp_path / f"{name}.log", "w")
        procs[name] = (subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    outputs, codes = {}, {}
    for name, (proc, log) in procs.items():
        codes[name] = proc.wait(timeout=600)
        log.close()
        outputs[name] = (tmp_path / f"{name}.log").read_text()

    assert codes["unknown_key"] != 0 and "'modle'" in outputs["unknown_key"], outputs["unknown_key"][-2000:]
    assert codes["summarize_sampler"] != 0 and "README.md" in outputs["summarize_sampler"]
    assert codes["few_steps"] != 0 and "time at least 10 steps" in outputs["few_steps"], outputs["few_steps"][-2000:]
    for name in ("train", "sampler_ti", "evaluation"):
        assert codes[name] == 0, (name, outputs[name][-3000:])
        assert "backend cpu" in outputs[name]

    result = json.loads((tmp_path / "train.json").read_text())
    assert {"mode", "header", "compile", "step", "input", "flops", "phases", "memory"} <= set(result)
    assert {"backend", "device_kind", "device_count", "jax_version", "config", "variant", "batch_size",
            "prior_steps", "posterior_steps", "rungs", "steps_per_dispatch"} <= set(result["header"])
    assert set(result["compile"]) == {"trace_s", "lower_s", "compile_s"}
    assert {"median_ms", "min_ms", "max_ms", "q25_ms", "q75_ms", "images_per_s", "steps_timed"} <= set(result["step"])
    assert result["step"]["steps_timed"] == 2
    flops = result["flops"]
    assert {"per_step", "per_step_by_kind", "xla_per_dispatch", "achieved_gflops_per_s",
            "peak_matmul_gflops_per_device", "efficiency"} <= set(flops)
    assert flops["per_step"] > 0 and flops["xla_per_dispatch"] > 0 and flops["peak_matmul"]["size"] == 64
    assert set(result["phases"]) == {"prior", "posterior", "update", "other"}
    for phase in result["phases"].values():
        assert {"ms", "pct", "flops"} <= set(phase)
    assert {"max_rss_bytes", "compiled_total_bytes"} <= set(result["memory"])
    assert "FLOPs / step" in outputs["train"] and "time split" in outputs["train"]
    assert result["header"]["generator_widths"] == [8, 4]

    # --summarize: one Markdown row per saved training result, with its numbers
    summary = subprocess.run([sys.executable, "-m", "experiments.benchmark", f"--summarize={tmp_path / 'train.json'}"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert summary.returncode == 0, summary.stderr[-2000:]
    header, rule, row = summary.stdout.strip().splitlines()
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["configs/digits.py", "vanilla", "8", "1", "8/4"]
    assert float(cells[6]) == pytest.approx(result["step"]["images_per_s"], rel=1e-3)
    assert float(cells[7].replace(",", "")) == pytest.approx(result["flops"]["per_step"] / 1e9, rel=1e-2)
    assert cells[10] == f"{100 * result['flops']['efficiency']:.1f} %"

    sampler = json.loads((tmp_path / "sampler.json").read_text())
    assert sampler["mode"] == "sampler" and sampler["header"]["variant"] == "ti" and sampler["header"]["rungs"] == 3
    assert sampler["prior"]["samples"] == 4 and sampler["prior"]["samples_per_s"] > 0
    assert sampler["posterior"]["chains"] == 3 * 8 and sampler["posterior"]["chains_per_s"] > 0
    assert {"flops", "xla_flops", "gflops_per_s", "efficiency", "compile_s"} <= set(sampler["posterior"])

    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation["mode"] == "evaluation" and evaluation["header"]["eval_batch_size"] == 2
    for name in ("generation", "inception"):
        r = evaluation[name]
        assert r["images"] == 2
        assert r["images_per_s"] == pytest.approx(2 / (r["median_ms"] / 1e3), rel=1e-9)
        assert evaluation["per_evaluation_s"][name] == pytest.approx(10 / r["images_per_s"], rel=1e-9)
    # Inception-v3 at 299x299 does 5.7 G multiply-adds per image (Szegedy et al. 2016); taps on padding not counted
    assert 10.0e9 < evaluation["inception"]["flops"] / 2 < 11.5e9
    assert evaluation["inception"]["traces"] == 1  # every call reused one compiled network
    assert "one evaluation" in outputs["evaluation"] and "Inception-v3 features" in outputs["evaluation"]
