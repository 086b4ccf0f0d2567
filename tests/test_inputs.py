"""Inputs from outside are checked where they enter, with one-line errors that say what was found and what
is expected: images given to `Trained` and to the feature functions (`data.images.as_model_images`), sample
counts and latents given to `Trained`, and .npz files given to the data loader."""

import re
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from tiny import tiny_config

from lebm_jax.data import datasets
from lebm_jax.data.images import EXPECTED_RANGE, as_model_images, to_float
from lebm_jax.measure import classifier
from lebm_jax.measure import inception as inc
from lebm_jax.training import build
from lebm_jax.training.trained import Trained

SHAPE = (16, 16, 1)  # the tiny digits model's images


def _uint8(n=4, shape=SHAPE, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _unit(n=4, shape=SHAPE):  # [0, 1] floats: min 0, max 1
    return _uint8(n, shape).astype(np.float32) / 255.0


def _bright(n=4, shape=SHAPE):  # [-1, 1] images with no pixel below mid-grey, as a generator may emit
    return np.random.default_rng(1).uniform(0.05, 0.95, (n, *shape)).astype(np.float32)


def _raises(fn, *phrases):
    """Calls fn, expects one ValueError whose one-line message contains every phrase; returns the message."""
    with pytest.raises(ValueError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"
    return message


@pytest.fixture(scope="module")
def trained():
    config = tiny_config("digits")
    model = build.build_model(config)
    return Trained(config, model, model.init(jax.random.key(0)), 0, "/nonexistent")


# ----------------------------------------------------------------------------------------------------
# The checker


def test_checker_accepts_uint8_and_minus_one_one_floats():
    x = _uint8()
    np.testing.assert_array_equal(as_model_images(x, "here", SHAPE), to_float(x))
    y = to_float(x)
    out = as_model_images(y, "here", SHAPE)
    assert out.dtype == np.float32 and out is y  # float32 in range: passed through, no copy
    dark = -np.abs(y)  # all <= 0: never ambiguous
    np.testing.assert_array_equal(as_model_images(dark, "here"), dark)
    np.testing.assert_array_equal(as_model_images(y.astype(np.float64), "here"), y)
    slightly = np.array(y)
    slightly[0, 0, 0, 0] = 1.0005  # within the tolerance: clipped back
    assert as_model_images(slightly, "here").max() == 1.0
    assert as_model_images(np.zeros((0, *SHAPE), np.float32), "here").shape == (0, *SHAPE)
    on_device = as_model_images(jnp.asarray(y), "here")
    assert isinstance(on_device, jax.Array)
    np.testing.assert_array_equal(np.asarray(on_device), y)


def test_checker_ambiguous_range_rule():
    """Floats with no negative value and max <= 1 are taken for [0, 1] images unless the caller says otherwise."""
    _raises(lambda: as_model_images(_unit(), "here"), "look like [0, 1]", "2 * x - 1", "assume_range='[-1, 1]'")
    _raises(lambda: as_model_images(np.zeros((2, *SHAPE), np.float32), "here"), "min 0 and max 0")
    bright = _bright()
    np.testing.assert_array_equal(as_model_images(bright, "here", assume_range="[-1, 1]"), bright)
    with pytest.warns(UserWarning, match=r"look like \[0, 1\].*taken as \[-1, 1\]"):
        np.testing.assert_array_equal(as_model_images(bright, "here", ambiguous="warn"), bright)
    # assume_range never lets through what is outside [-1, 1] or not finite
    _raises(lambda: as_model_images(_unit() * 255, "here", assume_range="[-1, 1]"), "look like [0, 255]")
    with pytest.raises(ValueError, match=re.escape("assume_range='[0, 1]': must be None or '[-1, 1]'")):
        as_model_images(bright, "here", assume_range="[0, 1]")


# ----------------------------------------------------------------------------------------------------
# Trained


@pytest.mark.parametrize("method", ["posterior", "log_likelihood", "training_log_likelihood", "reconstruct"])
def test_trained_rejects_bad_images_naming_what_was_found(trained, method):
    call = lambda x: getattr(trained, method)(x, jax.random.key(1))
    where = f"Trained.{method}"
    _raises(lambda: call(_unit()), where, "dtype float32, shape (4, 16, 16, 1)", "min 0 and max 1",
            "look like [0, 1]", EXPECTED_RANGE, "2 * x - 1", "assume_range='[-1, 1]'")
    _raises(lambda: call(_unit() * 255), where, "min 0 and max 255", "look like [0, 255]", EXPECTED_RANGE,
            "x / 127.5 - 1", "uint8")
    nan = to_float(_uint8())
    nan[1, 2, 3, 0] = np.nan
    nan[2, 0, 0, 0] = np.inf
    _raises(lambda: call(nan), where, "1 NaN and 1 infinite", EXPECTED_RANGE)
    _raises(lambda: call(3 * to_float(_uint8())), where, "outside [-1, 1]", "min -3 and max 3", EXPECTED_RANGE)
    _raises(lambda: call(to_float(_uint8(shape=(16, 16, 3)))), where, "shape (4, 16, 16, 3)",
            "expected (N, H, W, C) with C in (1, 3), here (N, 16, 16, 1)")
    _raises(lambda: call(to_float(_uint8(shape=(1, 16, 16)))), where, "shape (4, 1, 16, 16)",
            "channels go last")
    _raises(lambda: call(to_float(_uint8(1))[0]), where, "shape (16, 16, 1) (rank 3)", "x[None]")
    _raises(lambda: call(to_float(_uint8(shape=(8, 8, 1)))), where, "here (N, 16, 16, 1)")
    _raises(lambda: call(_uint8().astype(np.int32)), where, "dtype int32", EXPECTED_RANGE, "astype(np.uint8)")


def test_trained_uint8_equals_minus_one_one_floats(trained):
    x, key = _uint8(), jax.random.key(2)
    np.testing.assert_array_equal(trained.posterior(x, key), trained.posterior(to_float(x), key))
    a, b = trained.training_log_likelihood(x, key), trained.training_log_likelihood(to_float(x), key)
    np.testing.assert_array_equal(a["log_px"], b["log_px"])
    assert np.all(np.isfinite(a["log_px"]))
    small = dict(num_temps=5, ais_substeps=2, steps_per_rung=2, num_chains=2, prior_steps=5)
    a, b = trained.log_likelihood(x, **small), trained.log_likelihood(to_float(x), **small)
    np.testing.assert_array_equal(a.ti, b.ti)
    np.testing.assert_array_equal(a.ais, b.ais)
    assert np.all(np.isfinite(a.ti)) and np.all(np.isfinite(a.ais))
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['num_temp'\]"):
        trained.log_likelihood(x, num_temp=5)
    with pytest.raises(ValueError, match="loglik.num_temps=4"):
        trained.log_likelihood(x, num_temps=4)


def test_trained_ambiguous_images_pass_when_declared(trained):
    z = trained.posterior(_bright(), jax.random.key(3), assume_range="[-1, 1]")
    assert z.shape == (4, trained.model.latent_dim)


@pytest.mark.parametrize("num", [-1, 0, 2.5, True, "3"])
def test_generate_and_prior_latents_need_a_positive_int(trained, num):
    _raises(lambda: trained.generate(jax.random.key(0), num), "Trained.generate", f"num={num!r}", "int >= 1")
    _raises(lambda: trained.prior_latents(jax.random.key(0), num), "Trained.prior_latents", "int >= 1")


def test_generate_decode_and_their_checks(trained):
    images = trained.generate(jax.random.key(0), np.int64(2))
    assert images.shape == (2, *SHAPE)
    nz = trained.model.latent_dim
    assert trained.decode(np.zeros((3, nz))).shape == (3, *SHAPE)
    _raises(lambda: trained.decode(np.zeros((3, nz + 1))), "Trained.decode", f"shape (3, {nz + 1})",
            f"expected (..., {nz})", f"latent_dim={nz}")
    _raises(lambda: trained.decode(np.float32(0.5)), "Trained.decode", "shape ()")


# ----------------------------------------------------------------------------------------------------
# Feature functions


@pytest.fixture(scope="module")
def classifier_features():
    model = classifier.ConvClassifier(num_classes=10)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *SHAPE), jnp.float32))
    return classifier.ClassifierFeatures(params, 10, SHAPE, batch_size=8)


def test_classifier_features_check_the_range(classifier_features):
    f = classifier_features
    _raises(lambda: f(_unit() * 255), "classifier features", "min 0 and max 255", "look like [0, 255]",
            EXPECTED_RANGE)
    nan = to_float(_uint8())
    nan[0, 0, 0, 0] = np.nan
    _raises(lambda: f(nan), "classifier features", "1 NaN")
    x = _uint8()
    np.testing.assert_array_equal(f(x), f(to_float(x)))


def test_feature_functions_never_reject_generated_images(classifier_features):
    """Generated images g_β(z) may all be bright (no negative value): used as [-1, 1], with a warning
    unless the caller declares the range."""
    bright = _bright()
    with pytest.warns(UserWarning, match=r"classifier features: .*look like \[0, 1\]"):
        warned = classifier_features(bright)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        declared = classifier_features(bright, assume_range="[-1, 1]")
    np.testing.assert_array_equal(warned, declared)


def test_inception_features_check_the_range():
    shapes = jax.eval_shape(lambda: inc.FIDInceptionV3().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    params = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)  # never run: checks come first
    f = inc.make_feature_fn(params, batch_size=2)
    images = _unit(3, (32, 32, 3)) * 255
    _raises(lambda: f(images), "Inception features", "min 0 and max 255", "look like [0, 255]", EXPECTED_RANGE)
    _raises(lambda: f(jnp.asarray(images)), "Inception features", "look like [0, 255]")
    nan = to_float(_uint8(2, (32, 32, 3)))
    nan[1, 0, 0, 0] = np.nan
    _raises(lambda: f(nan), "Inception features", "1 NaN")
    _raises(lambda: f(np.zeros((2, 32, 32, 4), np.float32)), "Inception features", "C in (1, 3)")
    assert f.trace_count == 0
    assert "floats in [-1, 1] or uint8" in inc.InceptionFeatures.__doc__
    assert "[0, 1] or [0, 255] input gives wrong features" in inc.network.preprocess.__doc__


# ----------------------------------------------------------------------------------------------------
# .npz files


def _npz_config(path):
    return ml_collections.ConfigDict(dict(name="npz", image_size=8, channels=1, path=str(path), test_fraction=0.1))


def _assert_not_npz(path):
    message = _raises(lambda: datasets.load(_npz_config(path)), str(path), "not a valid",
                      "'images' (N, H, W[, C]) uint8", "(N, 8, 8, 1) uint8")
    assert "pickle" not in message.lower()
    return message


def test_truncated_npz_names_the_path(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, images=_uint8(10, (8, 8, 1)))
    assert datasets.load(_npz_config(good)).train.shape == (9, 8, 8, 1)
    payload = good.read_bytes()
    for cut in (len(payload) // 2, len(payload) - 10):
        path = tmp_path / f"cut{cut}.npz"
        path.write_bytes(payload[:cut])
        assert "complete" in _assert_not_npz(path)


def test_random_bytes_empty_and_npy_files_name_the_path(tmp_path):
    random = tmp_path / "random.npz"
    random.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError) as err:
        datasets.load(_npz_config(random))
    assert "pickle" not in repr(err.value.__cause__).lower()
    assert "not a zip archive" in _assert_not_npz(random)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    assert "(empty)" in _assert_not_npz(empty)
    npy = tmp_path / "array.npz"
    with open(npy, "wb") as f:
        np.save(f, _uint8(10, (8, 8, 1)))
    assert ".npy file" in _assert_not_npz(npy)
    objects = tmp_path / "objects.npz"
    np.savez(objects, images=np.array([{"a": 1}], dtype=object))
    assert "Python objects" in _assert_not_npz(objects)


def test_npz_with_float_or_wrong_size_images_says_what_is_expected(tmp_path):
    path = tmp_path / "float.npz"
    np.savez(path, images=_unit(10, (8, 8, 1)))
    message = _raises(lambda: datasets.load(_npz_config(path)), str(path), "dtype float32 is not uint8",
                      "np.round(x * 255).astype(np.uint8)", "expected (N, 8, 8, 1) uint8")
    assert re.search(r"images have shape \(10, 8, 8, 1\)", message)
    path = tmp_path / "big.npz"
    np.savez(path, images=_uint8(10, (16, 16, 1)))
    _raises(lambda: datasets.load(_npz_config(path)), str(path), "size 16 is not data.image_size=8",
            "expected (N, 8, 8, 1) uint8")
