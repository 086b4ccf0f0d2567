"""The classifier feature space: accuracy on digits, determinism, the cache (hits, stale data, corruption), errors."""

import dataclasses
import json
import re
import shutil

import jax

import ml_collections
import numpy as np
import pytest

from lebm_jax.measure import classifier
from lebm_jax.data import datasets as data


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    """No test reads or writes the user's cache."""
    monkeypatch.setenv("LEBM_JAX_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def digits():
    config = ml_collections.ConfigDict(dict(name="digits", image_size=16, channels=1, path="", test_fraction=0.1))
    return data.load(config)  # configs/digits.py: 16×16×1, the last 297 images held out


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """One classifier trained on digits for the whole module: (features, info, cache directory)."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEBM_JAX_CACHE", str(root))
        features, info = classifier.load_or_train(digits, seed=0)
    return features, info, root / "classifiers"


@pytest.fixture
def count_training(monkeypatch, trained):
    """Replaces training by a stand-in returning the module's parameters; counts the calls."""
    calls = []
    params = trained[0].params

    def fake(*args, **kwargs):
        calls.append(kwargs)
        return params, 0.5

    monkeypatch.setattr(classifier, "train_classifier", fake)
    return calls


def nearest_mean_accuracy(train_features, train_labels, test_features, test_labels):
    means = np.stack([train_features[train_labels == k].mean(0) for k in range(10)])  # (10, d)
    distances = ((test_features[:, None, :] - means[None]) ** 2).sum(-1)  # (M, 10)
    return float(np.mean(distances.argmin(1) == test_labels))


# ----------------------------------------------------------------------------------------------------
# Training


def test_trains_to_95_percent_on_digits(trained, digits):
    features, info, directory = trained
    assert not info.from_cache
    assert info.test_accuracy >= 0.95, info
    assert (info.data_name, info.image_shape, info.num_classes, info.seed) == ("digits", (16, 16, 1), 10, 0)
    assert info.epochs == classifier.default_epochs(1500) == 20
    # the reported accuracy is the arg-max accuracy of the saved parameters on the held-out 297 images
    model = classifier.ConvClassifier(num_classes=10)
    assert classifier.accuracy(features.params, model, digits.test, digits.test_labels) == info.test_accuracy
    (sidecar,) = directory.glob("*.json")
    saved = json.loads(sidecar.read_text())
    assert saved["test_accuracy"] == info.test_accuracy
    assert saved["data_sha256"] == classifier.data_digest(digits) == info.data_sha256
    assert (saved["epochs"], saved["seed"]) == (20, 0)
    assert sidecar.name.startswith("digits_16x16x1_")
    assert not list(directory.glob("*.tmp"))


def test_training_is_deterministic(digits):
    images, labels = digits.train[:640], digits.train_labels[:640]

    def run(seed):
        params, acc = classifier.train_classifier(
            images, labels, digits.test, digits.test_labels, seed=seed, epochs=1
        )
        return params, acc

    (a, acc_a), (b, acc_b), (c, _) = run(0), run(0), run(1)
    leaves_a, leaves_b, leaves_c = (jax.tree_util.tree_leaves(p) for p in (a, b, c))
    assert all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b, strict=True))
    assert acc_a == acc_b
    assert not all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_c, strict=True))


# ----------------------------------------------------------------------------------------------------
# Features


def test_features_are_finite_and_separate_the_classes(trained, digits):
    features, _, _ = trained
    train_features = features(data.to_float(digits.train))
    test_features = features(data.to_float(digits.test))
    assert train_features.shape == (1500, 128) and test_features.shape == (297, 128)
    assert train_features.dtype == np.float32
    assert np.isfinite(train_features).all() and np.isfinite(test_features).all()
    assert (test_features >= 0).all()  # post-ReLU
    assert test_features.std(0).max() > 0
    acc = nearest_mean_accuracy(train_features, digits.train_labels, test_features, digits.test_labels)
    assert acc >= 0.9, acc


def test_features_are_batched_with_padding_and_compile_once(trained, digits):
    features, _, _ = trained
    x = data.to_float(digits.test)  # 297 images: one full batch of 256 and a padded one of 41
    all_at_once = features(x)
    one_by_one = np.concatenate([features(x[i : i + 1]) for i in range(0, 297, 37)])
    np.testing.assert_allclose(one_by_one, all_at_once[::37], rtol=1e-5, atol=1e-5)
    assert features(x[:0]).shape == (0, 128)
    np.testing.assert_array_equal(features(digits.test), all_at_once)  # uint8 is converted by to_float
    assert features._apply._cache_size() == 1


@pytest.mark.parametrize("shape", [(5, 28, 28, 1), (5, 16, 16, 3), (16, 16, 1), (5, 16, 16)])
def test_wrong_image_shape_is_an_error(trained, shape):
    features, _, _ = trained
    with pytest.raises(ValueError, match=re.escape(f"expect images of shape (N, 16, 16, 1), got {shape}")):
        features(np.zeros(shape, np.float32))


def test_integer_images_other_than_uint8_are_an_error(trained):
    with pytest.raises(ValueError, match="dtype int32"):
        trained[0](np.zeros((2, 16, 16, 1), np.int32))


# ----------------------------------------------------------------------------------------------------
# Cache


def test_second_load_reads_the_cache(trained, digits, count_training):
    features, info, directory = trained
    again, info_again = classifier.load_or_train(digits, seed=0, directory=directory)
    assert count_training == []
    assert info_again.from_cache
    assert dataclasses.replace(info_again, from_cache=False) == info
    x = data.to_float(digits.test)
    np.testing.assert_array_equal(again(x), features(x))


def test_default_directory_is_the_cache_dir(trained, digits, count_training, monkeypatch, tmp_path):
    monkeypatch.setenv("LEBM_JAX_CACHE", str(tmp_path / "elsewhere"))
    classifier.load_or_train(digits, seed=0)  # nothing cached there yet: trains and saves
    assert len(count_training) == 1
    assert len(list((tmp_path / "elsewhere" / "classifiers").glob("digits_16x16x1_*.msgpack"))) == 1
    _, info = classifier.load_or_train(digits, seed=0)
    assert info.from_cache and len(count_training) == 1


def test_changed_data_set_retrains(trained, digits, count_training, tmp_path):
    _, info, directory = trained
    directory = shutil.copytree(directory, tmp_path / "copy")
    train = digits.train.copy()
    train[0, 0, 0, 0] ^= 1  # one grey level of one pixel
    changed = dataclasses.replace(digits, train=train)
    assert classifier.data_digest(changed) != info.data_sha256
    _, changed_info = classifier.load_or_train(changed, seed=0, directory=directory)
    assert len(count_training) == 1 and not changed_info.from_cache
    assert len(list(directory.glob("*.msgpack"))) == 2
    relabelled = dataclasses.replace(digits, test_labels=(digits.test_labels + 1) % 10)
    classifier.load_or_train(relabelled, seed=0, directory=directory)
    assert len(count_training) == 2
    classifier.load_or_train(digits, seed=1, directory=directory)  # another seed is another classifier
    assert len(count_training) == 3


def _flip_byte(path):
    payload = bytearray(path.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    path.write_bytes(bytes(payload))


CORRUPTIONS = {
    "flipped byte": lambda stem: _flip_byte(stem.with_suffix(".msgpack")),
    "truncated params": lambda stem: stem.with_suffix(".msgpack").write_bytes(b"\x80"),
    "missing params": lambda stem: stem.with_suffix(".msgpack").unlink(),
    "garbage sidecar": lambda stem: stem.with_suffix(".json").write_text("{not json"),
    "missing sidecar": lambda stem: stem.with_suffix(".json").unlink(),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_cache_retrains_with_a_warning(trained, digits, count_training, tmp_path, corruption):
    _, info, directory = trained
    directory = shutil.copytree(directory, tmp_path / "copy")
    (params_file,) = directory.glob("*.msgpack")
    CORRUPTIONS[corruption](params_file.with_suffix(""))
    with pytest.warns(UserWarning, match="unusable.*retraining"):
        _, retrained = classifier.load_or_train(digits, seed=0, directory=directory)
    assert len(count_training) == 1 and not retrained.from_cache
    _, reread = classifier.load_or_train(digits, seed=0, directory=directory)  # the rewritten entry is sound
    assert reread.from_cache and len(count_training) == 1


# ----------------------------------------------------------------------------------------------------
# Errors


def test_data_set_without_labels_is_an_error(digits):
    unlabelled = dataclasses.replace(digits, train_labels=None, test_labels=None)
    with pytest.raises(ValueError, match="classifier feature space needs labels"):
        classifier.load_or_train(unlabelled)


def test_bad_training_arguments_are_errors(digits):
    with pytest.raises(ValueError, match="needs labels"):
        classifier.train_classifier(digits.train, None, digits.test, digits.test_labels)
    with pytest.raises(ValueError, match="uint8"):
        classifier.train_classifier(data.to_float(digits.train), digits.train_labels, digits.test, digits.test_labels)
    with pytest.raises(ValueError, match="too small"):
        tiny = np.zeros((100, 2, 2, 1), np.uint8)
        classifier.train_classifier(tiny, np.zeros(100, int), tiny, np.zeros(100, int))
    with pytest.raises(ValueError, match="batch_size"):
        classifier.train_classifier(digits.train[:10], digits.train_labels[:10], digits.test, digits.test_labels)
