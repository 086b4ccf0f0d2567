"""The training loop end to end: one real step for every config, 1 vs 4 devices, the non-finite guard,
fail-fast inputs through the CLI, learning on digits, and one compilation per train function.

Models are shrunk with config overrides (tests/tiny.py) so that a run costs mostly its compilations; each
config keeps its own image size and channels.
"""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.experimental.compilation_cache import compilation_cache
from PIL import Image

from lebm_jax.data import datasets as data
from lebm_jax.core import devices
from lebm_jax.training import build, loop
from lebm_jax.training import step as step_lib
from lebm_jax.training.checkpoint import Checkpointer, abstract_like
from lebm_jax.training.writers import read_jsonl

from config_files import load_config
from tiny import tiny_config

REPO = Path(__file__).resolve().parents[1]
DEVICES_SCRIPT = Path(__file__).resolve().parent / "train_devices_script.py"

def digits_data() -> data.ImageData:
    return data.load(load_config("digits").data)


def tree_arrays(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(devices.host_value(tree))]


def restore(workdir, step: int, like, config):
    ckpt = Checkpointer(str(workdir), config.max_to_keep)
    try:
        return ckpt.all_steps(), devices.host_value(ckpt.restore(step, abstract_like(like), config))
    finally:
        ckpt.close()


def is_number(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)


CACHE_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                  "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """A persistent XLA cache in a temporary folder, shared by this module's tests and by the 1-device
    subprocess; jax's settings are restored afterwards.

    Runs whose programs coincide compile once: mnist and fashion_mnist, svhn and cifar10 once shrunk,
    and every run shaped like the shrunk digits config (tests 1, 2 on one device, 3 and 6). Tracing and
    lowering still happen every time; only XLA's compilation of an identical module is reused.
    """
    path = tmp_path_factory.mktemp("xla_cache")
    saved = {name: getattr(jax.config, name) for name in CACHE_SETTINGS}
    for name, value in zip(CACHE_SETTINGS, (str(path), 0.0, 0)):
        jax.config.update(name, value)
    compilation_cache.reset_cache()  # the cache is set up on the next compilation, with these settings
    yield path
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


# ----------------------------------------------------------------------------------------------------
# 1. One real step for every data-set config


# config file, variant, side of the saved 4-sample grid in pixels: 2 cells of (size + 1) plus 1 pixel of
# padding, times the display scale max(1, 128 // size)
CONFIG_CASES = [
    ("digits", "vanilla", 16, 1, (2 * 17 + 1) * 8),  # 280
    ("mnist", "vanilla", 28, 1, (2 * 29 + 1) * 4),  # 236
    ("fashion_mnist", "vanilla", 28, 1, (2 * 29 + 1) * 4),
    ("digits", "ti", 16, 1, (2 * 17 + 1) * 8),
    ("svhn", "vanilla", 32, 3, (2 * 33 + 1) * 4),  # 268
    ("cifar10", "vanilla", 32, 3, (2 * 33 + 1) * 4),
    ("celeba64", "vanilla", 64, 3, (2 * 65 + 1) * 2),  # 262
]


@pytest.mark.parametrize("name,variant,size,channels,grid_side", CONFIG_CASES)
def test_one_training_step_for_every_config(name, variant, size, channels, grid_side, tmp_path):
    """digits is read for real; the tfds data sets come from `tfds.testing.mock_data` (16 random images)."""
    config = tiny_config(name, variant=variant)
    assert (config.data.image_size, config.data.channels) == (size, channels)  # the file's own shape is kept
    workdir = tmp_path / "run"
    if name == "digits":
        result = loop.train_and_evaluate(config, str(workdir))
    else:
        with tfds.testing.mock_data(num_examples=16):
            result = loop.train_and_evaluate(config, str(workdir))

    state = devices.host_value(result.state)
    assert int(state.step) == 1 and int(state.nonfinite_step) == 0

    # the checkpoint of step 1 holds the returned state
    steps, restored = restore(workdir, 1, result.state, config)
    assert steps == [1]
    assert int(restored.step) == 1
    for saved, kept in zip(tree_arrays(restored.params), tree_arrays(state.params), strict=True):
        np.testing.assert_array_equal(saved, kept)

    # metrics.jsonl: held-out metrics at steps 0 and 1, the step's losses at step 1, all finite
    rows = read_jsonl(workdir / "metrics.jsonl")
    assert rows == result.history
    heldout = [r for r in rows if "heldout/recon_mse" in r]
    steps_logged = [r for r in rows if "loss_ebm" in r]
    assert [r["step"] for r in heldout] == [0, 1] and [r["step"] for r in steps_logged] == [1]
    for r in heldout:
        assert is_number(r["heldout/posterior_log_lik"]) and 0.0 < r["heldout/recon_mse"] < 4.0  # |x - g| <= 2
    row = steps_logged[0]
    for key in ("loss_ebm", "loss_gen", "grad_norm_ebm", "grad_norm_gen", "posterior_log_lik"):
        assert is_number(row[key]), (key, row[key])
    assert row["grad_norm_ebm"] > 0 and row["grad_norm_gen"] > 0
    np.testing.assert_allclose(row["loss_ebm"], row["f_prior"] - row["f_posterior"], rtol=1e-5, atol=1e-6)
    if variant == "vanilla":
        np.testing.assert_allclose(row["loss_gen"], -row["posterior_log_lik"], rtol=1e-6)
    else:  # loss_G = −log p̂(x), and the ladder logs one mean log-likelihood per rung (the last is t = 1)
        np.testing.assert_allclose(row["loss_gen"], -row["log_px"], rtol=1e-6)
        assert [k for k in row if k.startswith("rung_log_lik/")] == [f"rung_log_lik/{i}" for i in range(3)]
        np.testing.assert_allclose(row["rung_log_lik/2"], row["posterior_log_lik"], rtol=1e-6)

    # a sample grid per evaluation, of the right pixel size and mode, with its white padding
    for step in (0, 1):
        with Image.open(workdir / "samples" / f"samples_{step:07d}.png") as im:
            assert im.size == (grid_side, grid_side)
            assert im.mode == ("L" if channels == 1 else "RGB")
            pixels = np.asarray(im)
        assert (pixels[0] == 255).all() and (pixels[:, -1] == 255).all()

    # config.json is the config that ran
    saved_config = json.loads((workdir / "config.json").read_text())
    assert saved_config == json.loads(config.to_json())
    assert saved_config["variant"] == variant and saved_config["data"]["image_size"] == size


def test_bfloat16_generator_step_keeps_float32_parameters_and_close_losses(tmp_path):
    """model.generator_dtype = "bfloat16": one ti step from the same seed as float32 gives losses within
    bfloat16 rounding of float32's (the chains see slightly different scores), and parameters and optimiser
    state stay float32."""
    results = {}
    for dtype in ("float32", "bfloat16"):
        config = tiny_config("digits", variant="ti", **{"model.generator_dtype": dtype})
        result = loop.train_and_evaluate(config, str(tmp_path / dtype))
        state = devices.host_value(result.state)
        assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {np.dtype(np.float32)}
        assert {leaf.dtype for leaf in jax.tree.leaves(state.opt_state) if leaf.ndim} == {np.dtype(np.float32)}
        results[dtype] = next(r for r in result.history if "loss_gen" in r)
    f32, bf16 = results["float32"], results["bfloat16"]
    assert bf16["loss_gen"] != f32["loss_gen"]  # the bfloat16 program really ran
    for key in ("loss_gen", "log_px", "posterior_log_lik", "grad_norm_gen"):
        np.testing.assert_allclose(bf16[key], f32[key], rtol=0.03, err_msg=key)


# ----------------------------------------------------------------------------------------------------
# 2. One device and four emulated devices, single-step and multi-step dispatch


def start_devices_script(out_dir: Path, devices: int, runs: list[str], log: Path, cache: Path | None
                         ) -> subprocess.Popen:
    """train_devices_script.py on ``devices`` emulated CPU devices, using the XLA cache ``cache`` if given."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    if cache is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    overrides = json.dumps({"num_steps": 3, "log_every": 3, "checkpoint_every": 3, "sample_every": 3})  # on tiny_config
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, str(DEVICES_SCRIPT), str(out_dir), overrides, *runs], cwd=REPO,
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module", autouse=True)
def four_device_runs(request, tmp_path_factory):
    """The 4-device half of the device test, started with the module when that test is selected: its
    programs are compiled nowhere else, so it runs beside the in-process tests instead of after them
    (without the XLA cache, which only one process at a time writes)."""
    if not any(item.originalname == "test_one_and_four_devices_and_multi_step_dispatch_agree"
               for item in request.session.items):
        yield None
        return
    out = tmp_path_factory.mktemp("four_devices")
    proc = start_devices_script(out, 4, ["vanilla:1", "ti:3"], out / "run.log", None)
    yield proc, out
    if proc.poll() is None:  # the test did not wait for it (failed or deselected at run time)
        proc.kill()
        proc.wait()


def test_one_and_four_devices_and_multi_step_dispatch_agree(tmp_path, compile_cache, four_device_runs):
    """Shrunk digits, 3 steps of global batch 8 (2 examples per device on 4 devices): parameters and
    the step metrics averaged over the 3 steps (losses, gradient norms, chain diagnostics) agree to
    rtol 1e-4, atol 1e-5. The metrics matter: Adam's update hardly changes when every gradient is
    scaled by the same factor, so parameters alone would not show gradients summed over devices.

    Against the same variant on 1 device at one step per call: vanilla on 4 devices at one step per
    call (the device split alone), ti on 4 devices with all 3 steps in one call (split and dispatch).
    The 1-device runs start here, after test 1 has compiled the same programs into the cache.
    """
    four, four_dir = four_device_runs
    one = start_devices_script(tmp_path, 1, ["vanilla:1", "ti:1"], tmp_path / "run.log", compile_cache)
    for proc, out in ((one, tmp_path), (four, four_dir)):
        proc.wait(timeout=500)
        assert proc.returncode == 0, (out / "run.log").read_text()[-4000:]

    reference = {v: load_npz(tmp_path / f"{v}_k1_d1.npz") for v in ("vanilla", "ti")}
    for variant, name in (("vanilla", "vanilla_k1_d4"), ("ti", "ti_k3_d4")):
        other, ref = load_npz(four_dir / f"{name}.npz"), reference[variant]
        assert sorted(other) == sorted(ref)
        assert {"metrics/grad_norm_ebm", "metrics/grad_norm_gen", "metrics/loss_gen"} <= set(ref)
        assert int(other["step"]) == int(ref["step"]) == 3
        assert int(other["nonfinite_step"]) == int(ref["nonfinite_step"]) == 0
        for key in ref:
            np.testing.assert_allclose(other[key], ref[key], rtol=1e-4, atol=1e-5, err_msg=f"{name}: {key}")

    # the tolerance can tell runs apart: the two variants, same init and data, differ by far more
    gap = max(np.abs(reference["vanilla"][k] - reference["ti"][k]).max() for k in reference["ti"] if "params" in k)
    assert gap > 1e-3, gap


# ----------------------------------------------------------------------------------------------------
# 3. The non-finite guard


def test_non_finite_step_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Step 4's batch (0-based, as host_batch counts) is NaN. Checkpoints 2 and 4 are written; step 5
    still runs (nothing checks after it); the check at step 6 raises, naming step 4 and the kept
    checkpoint, and writes nothing more. The kept checkpoint equals a clean run stopped at step 4."""
    dataset = digits_data()
    settings = dict(num_steps=8, checkpoint_every=2, log_every=4, sample_every=8, max_to_keep=5)
    clean = loop.train_and_evaluate(tiny_config("digits", **{**settings, "num_steps": 4}), str(tmp_path / "clean"),
                                     dataset=dataset)

    bad_step, host_batch = 4, data.host_batch

    def poisoned(images, global_batch, seed, step, *args):
        x = host_batch(images, global_batch, seed, step, *args)
        return np.full_like(x, np.nan) if step == bad_step else x

    monkeypatch.setattr(data, "host_batch", poisoned)
    config, workdir = tiny_config("digits", **settings), tmp_path / "bad"
    with pytest.raises(loop.NonFiniteError) as err:
        loop.train_and_evaluate(config, str(workdir), dataset=dataset)
    message = str(err.value)
    assert "at step 4;" in message and "(step 4)" in message and str(workdir / "checkpoints") in message

    steps, kept = restore(workdir, 4, clean.state, config)
    assert steps == [2, 4]
    assert int(kept.step) == 4 and int(kept.nonfinite_step) == 0
    kept_params, clean_params = tree_arrays(kept.params), tree_arrays(clean.state.params)
    assert all(np.isfinite(p).all() for p in kept_params)
    for a, b in zip(kept_params, clean_params, strict=True):
        np.testing.assert_array_equal(a, b)

    rows = read_jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 4]  # nothing logged after the bad step
    assert all(is_number(v) for r in rows for k, v in r.items() if k != "step")


# ----------------------------------------------------------------------------------------------------
# 4. Bad input fails fast through the CLI


def test_bad_input_fails_fast_through_the_cli(tmp_path):
    """Each bad command exits non-zero, names the offending key or file, and writes nothing."""
    bad_npz = tmp_path / "bad.npz"
    np.savez(bad_npz, images=np.zeros((10, 8, 8, 3), np.uint8))  # digits.py wants (N, 16, 16, 1)
    cases = [  # extra flags, phrases the output must contain
        (["--config.modle.ngf=3"], ["'modle'", 'Did you mean "model"']),
        (["--config.variant=foo"], ["config.variant='foo'", "('vanilla', 'ti')"]),
        (["--config.ti.power=-1"], ["config.ti.power=-1.0", "power must be a finite number > 0"]),
        (["--config.data.name=npz", f"--config.data.path={bad_npz}"],
         [f"{bad_npz}: images have shape (10, 8, 8, 3)", "expected (N, 16, 16, 1)"]),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    runs = []
    for i, (flags, _) in enumerate(cases):
        workdir, log = tmp_path / f"run{i}", tmp_path / f"run{i}.log"
        command = [sys.executable, "-m", "experiments.train", "--config", "configs/digits.py",
                   f"--workdir={workdir}", *flags]
        with open(log, "w") as out:
            runs.append((subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT),
                         time.monotonic(), workdir, log))
    for (proc, start, workdir, log), (flags, phrases) in zip(runs, cases):
        proc.wait(timeout=300)
        elapsed = time.monotonic() - start
        output = log.read_text()
        assert proc.returncode != 0, (flags, output[-2000:])
        for phrase in phrases:
            assert phrase in output, (flags, phrase, output[-2000:])
        assert elapsed < 120, (flags, elapsed)  # all four run at once on a busy machine; training never starts
        assert not workdir.exists(), (flags, sorted(workdir.rglob("*")))


# ----------------------------------------------------------------------------------------------------
# 5. A short digits run learns

LEARNING = {  # variant: (min factor by which heldout/recon_mse drops, min rise of heldout/posterior_log_lik)
    "vanilla": (4.0, 400.0),
    "ti": (2.5, 350.0),
}
LEARNING_STEPS, LEARNING_LOG_EVERY = 60, 20


@pytest.mark.parametrize("variant", ["vanilla", "ti"])
def test_short_digits_run_learns(variant, tmp_path):
    """digits.py with a small model (nz 8, ngf 4, EBM 16-16, chains of 10 prior / 8 posterior steps,
    batch 32, generator lr 3e-3, 3 rungs for ti), 60 steps; held-out metrics on 100 test digits.

    Measured (step 0 → 60) for seeds 0, 1, 2: vanilla recon_mse drops 7.6×, 7.7×, 8.1× and
    posterior_log_lik rises by 701, 718, 721 (−734 → −33 for seed 0); ti drops 4.1×, 4.0×, 4.0× and
    rises by 609, 617, 618. Required: vanilla ≥ 4× and ≥ +400, ti ≥ 2.5× and ≥ +350. The EBM must
    move from its initial parameters and its logged loss must not be identically 0.
    """
    factor, rise = LEARNING[variant]
    steps = LEARNING_STEPS
    config = load_config("digits")
    config.update_from_flattened_dict({
        "variant": variant, "model.latent_dim": 8, "model.ngf": 4, "model.generator_widths": (), "model.ebm_hidden": 16,
        "prior_chain.num_steps": 10, "posterior_chain.num_steps": 8, "ti.num_temps": 3, "batch_size": 32,
        "optim.lr_gen": 3e-3, "num_heldout": 100, "num_samples": 4, "num_steps": steps,
        "log_every": LEARNING_LOG_EVERY, "checkpoint_every": steps, "sample_every": steps,
        "eval.every": 0, "gradstats.every": 0,
    })
    result = loop.train_and_evaluate(config, str(tmp_path))
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    heldout = {r["step"]: r for r in rows if "heldout/recon_mse" in r}
    assert sorted(heldout) == [0, steps]
    first, last = heldout[0], heldout[steps]
    mse_ratio = first["heldout/recon_mse"] / last["heldout/recon_mse"]
    ll_rise = last["heldout/posterior_log_lik"] - first["heldout/posterior_log_lik"]
    assert mse_ratio >= factor, (first, last)
    assert ll_rise >= rise, (first, last)

    # the EBM trains: away from its initial parameters, with a non-zero contrastive loss
    model = build.build_model(config)
    k_init = jax.random.split(jax.random.key(config.seed), 4)[0]  # as train_and_evaluate draws it
    init = jax.jit(model.init)(k_init)
    final = devices.host_value(result.state.params)
    moved = max(np.abs(a - b).max() for a, b in zip(tree_arrays(final["ebm"]), tree_arrays(init["ebm"]), strict=True))
    # Adam moves a weight by about lr per step: measured 0.0066 (vanilla), 0.0057 (ti) = ~steps · lr_ebm.
    # The upper bound also shows `init` is the run's real initialisation (another draw differs by ~0.1).
    assert 1e-3 < moved < 3 * steps * config.optim.lr_ebm, moved
    losses = [r["loss_ebm"] for r in rows if "loss_ebm" in r]
    assert len(losses) == steps // LEARNING_LOG_EVERY and all(is_number(v) for v in losses)
    assert max(abs(v) for v in losses) > 1e-2


# ----------------------------------------------------------------------------------------------------
# 6. The train function compiles once


def test_train_function_is_traced_and_compiled_once(monkeypatch):
    """Four calls of the jitted train function (new data every call): the per-device step is traced
    once and the function holds one compiled executable."""
    traces = []
    train_step = step_lib.train_step

    def counted_step(*args, **kwargs):
        traces.append(1)
        return train_step(*args, **kwargs)

    monkeypatch.setattr(step_lib, "train_step", counted_step)  # make_train_fn looks the step up when called
    config = tiny_config("digits")
    images = digits_data().train
    model = build.build_model(config)
    optimizers = build.make_optimizers(config, data.steps_per_epoch(len(images), config.batch_size))
    mesh = devices.data_mesh()
    k_init, seed_key = jax.random.split(jax.random.key(0))
    state = jax.device_put(step_lib.create_train_state(model, optimizers, k_init),
                           jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    train_fn = step_lib.make_train_fn(build.build_objective(config, model), optimizers, mesh)
    losses = []
    for call in range(4):
        state, metrics = train_fn(state, step_lib.global_batches(images, config, call, 1, mesh), seed_key)
        losses.append(float(devices.host_value(metrics["loss_gen"])))
    assert int(devices.host_value(state.step)) == 4
    assert len(traces) == 1
    assert train_fn._cache_size() == 1
    assert len(set(losses)) == 4 and all(math.isfinite(v) for v in losses)  # the calls did real, different work
