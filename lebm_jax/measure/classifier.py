"""An offline feature space for labelled data: a small CNN classifier trained on the data set's own labels.

docs/design.md §6: FID needs the Inception-v3 weights; a labelled data set (digits, MNIST, Fashion-MNIST, SVHN,
CIFAR-10, a labelled npz) also gets a feature space that needs nothing from outside. φ(x) is the classifier's
penultimate layer (ReLU of Dense(128), post-activation); the Fréchet distance between Gaussian fits of φ on
real and generated images is reported under its own name (never as "FID": the numbers are not comparable
with published FIDs, nor across data sets).

Network (`ConvClassifier`, images (N, H, W, C) in [−1, 1], H, W ≥ 4): two stages of Conv3×3 + ReLU + 2×2
max pooling (32 then 64 channels), flatten, Dense(128) + ReLU = φ(x), Dense(num_classes) = logits.

Training (`train_classifier`) is deterministic: parameters from PRNGKey(seed), epoch e visits the training
set in the order ``np.random.default_rng([seed, e]).permutation(N)`` in full batches (the last N mod B
images of each permutation are skipped), each batch shifted by a random translation of up to ±2 pixels
(edges repeated; keys fold_in(fold_in(PRNGKey(seed), 1), e) then the step), Adam with a cosine-decayed step
size on the mean softmax cross-entropy. Without the shifts the digits test split (the last 297 images, harder
than a random split: an RBF SVM on the pixels gets 93–95%) stays near 93%; with them it is 96.6–98.3% over
seeds 0–3. Expected test accuracy: ≥ 95% on scikit-learn's digits at 16×16 (seed 0: 97.3%, checked by
tests/test_classifier.py; 10–20 s of training on two busy CPU cores); ≥ 98% on MNIST — expected from the architecture (the same two-stage CNN
reaches ~99% in the Flax MNIST example) but not verified here, since MNIST cannot be read offline in the
test environment.

Caching (`load_or_train`): parameters are trained once per (data set, image shape, seed, training settings)
and kept under ``cache_dir("classifiers")`` as ``<name>_<H>x<W>x<C>_<key>.msgpack`` with a JSON sidecar
(test accuracy, epochs, seed, the SHA-256 of the data, the SHA-256 of the parameter bytes). The key hashes
the images and labels of both splits, so another data set with the same name never reuses a stale
classifier. Files are written to a temporary name and renamed into place; a cache entry that cannot be read
or does not match its sidecar is retrained with a warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lebm_jax.data.datasets import ImageData
from lebm_jax.data.images import as_model_images, to_float
from lebm_jax.data.files import cache_dir, write_atomic

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the network or the training recipe changes: old cache entries are then ignored
FEATURE_DIM = 128
WIDTHS = (32, 64)  # channels of the two conv stages
EVAL_BATCH = 256  # images per call of the jitted feature / logit function (the last batch is padded)


class ConvClassifier(nn.Module):
    """logits, φ = ConvClassifier(x): x (N, H, W, C) in [−1, 1] → logits (N, classes), φ (N, feature_dim) ≥ 0."""

    num_classes: int = 10
    feature_dim: int = FEATURE_DIM
    widths: tuple[int, ...] = WIDTHS

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x
        for i, width in enumerate(self.widths):
            h = nn.relu(nn.Conv(width, (3, 3), padding="SAME", name=f"conv_{i}")(h))
            h = nn.max_pool(h, (2, 2), strides=(2, 2))  # (N, H/2^(i+1), W/2^(i+1), width)
        h = h.reshape(h.shape[0], -1)
        features = nn.relu(nn.Dense(self.feature_dim, name="features")(h))  # (N, feature_dim)
        logits = nn.Dense(self.num_classes, name="logits")(features)  # (N, classes)
        return logits, features


# ----------------------------------------------------------------------------------------------------
# Training


def default_epochs(num_examples: int) -> int:
    """Epochs that show the network about 30,000 images, between 3 and 20 (digits: 20; MNIST: 3)."""
    return int(min(20, max(3, math.ceil(30_000 / max(num_examples, 1)))))


def _check_images(images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"{what}: expected (N, H, W, C) uint8 images, got shape {images.shape} dtype {images.dtype}"
        )
    height, width = images.shape[1:3]
    if min(height, width) < 2 ** len(WIDTHS):
        raise ValueError(
            f"{what}: images of {height}×{width} are too small; the classifier needs H, W ≥ {2 ** len(WIDTHS)}"
        )
    return images


def _check_labels(labels, count: int, what: str) -> np.ndarray:
    if labels is None:
        raise ValueError(
            f"{what}: the data set has no labels; the classifier feature space needs labels "
            "(use the Inception features for unlabelled data)"
        )
    labels = np.asarray(labels)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{what}: expected ({count},) integer labels, got shape {labels.shape} dtype {labels.dtype}"
        )
    if count and labels.min() < 0:
        raise ValueError(f"{what}: labels must be >= 0, found {labels.min()}")
    return labels.astype(np.int32)


def _batched(fn: Callable[[np.ndarray], jax.Array], images: np.ndarray, out_dim: int, batch: int) -> np.ndarray:
    """Applies a jitted fn (batch, H, W, C) → (batch, out_dim) over images in chunks, padding the last one."""
    outputs = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), chunk.dtype)])
        outputs.append(np.asarray(fn(chunk))[:n])
    return np.concatenate(outputs) if outputs else np.zeros((0, out_dim), np.float32)


def accuracy(params, model: ConvClassifier, images_uint8: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose arg-max logit is the label."""
    logits_fn = jax.jit(lambda x: model.apply(params, to_float(x))[0])
    logits = _batched(logits_fn, images_uint8, model.num_classes, EVAL_BATCH)
    return float(np.mean(np.argmax(logits, axis=1) == labels)) if len(labels) else float("nan")


def train_classifier(
    images_uint8: np.ndarray,
    labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    seed: int = 0,
    epochs: int | None = None,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    num_classes: int | None = None,
    max_shift: int = 2,
) -> tuple[dict, float]:
    """Trains `ConvClassifier` on uint8 NHWC images; returns (params, test accuracy).

    Deterministic for a given seed: init from PRNGKey(seed), epoch e in the order
    default_rng([seed, e]).permutation(N), full batches only, each image translated by a random shift of
    up to ±max_shift pixels. `epochs=None` uses `default_epochs(N)`; `num_classes=None` uses
    max(label) + 1 over both splits.
    """
    images_uint8 = _check_images(images_uint8, "training images")
    test_images = _check_images(test_images, "test images")
    if test_images.shape[1:] != images_uint8.shape[1:]:
        raise ValueError(f"test images have shape {test_images.shape[1:]}, training images {images_uint8.shape[1:]}")
    labels = _check_labels(labels, len(images_uint8), "training labels")
    test_labels = _check_labels(test_labels, len(test_images), "test labels")
    n = len(images_uint8)
    if batch_size < 1 or n < batch_size:
        raise ValueError(f"batch_size={batch_size}: must be between 1 and the number of training images ({n})")
    epochs = default_epochs(n) if epochs is None else int(epochs)
    if epochs < 1:
        raise ValueError(f"epochs={epochs}: must be >= 1")
    height, width = images_uint8.shape[1:3]
    if not 0 <= max_shift < min(height, width):
        raise ValueError(f"max_shift={max_shift}: must be >= 0 and smaller than the image")
    if num_classes is None:
        num_classes = int(max(labels.max(), test_labels.max(initial=0))) + 1

    model = ConvClassifier(num_classes=num_classes)
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *images_uint8.shape[1:]), jnp.float32))
    steps = n // batch_size
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, epochs * steps))
    opt_state = optimizer.init(params)

    def shift(x, key):  # random translation by up to max_shift pixels, edges repeated: (b, H, W, C)
        if max_shift == 0:
            return x
        padded = jnp.pad(x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
        offsets = jax.random.randint(key, (x.shape[0], 2), 0, 2 * max_shift + 1)
        crop = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (height, width, im.shape[-1]))
        return jax.vmap(crop)(padded, offsets)

    def loss_fn(params, x, y):
        logits, _ = model.apply(params, to_float(x))
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train_step(params, opt_state, x, y, key):  # x (batch, H, W, C) uint8, y (batch,)
        loss, grads = jax.value_and_grad(loss_fn)(params, shift(x, key), y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    # A Python loop of jitted steps: XLA:CPU runs convolutions inside lax.scan an order of magnitude slower.
    augment_key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(n)
        epoch_key = jax.random.fold_in(augment_key, epoch)
        losses = []
        for i in range(steps):
            idx = order[i * batch_size : (i + 1) * batch_size]
            params, opt_state, loss = train_step(
                params, opt_state, images_uint8[idx], labels[idx], jax.random.fold_in(epoch_key, i)
            )
            losses.append(loss)
        mean_loss = float(jnp.mean(jnp.stack(losses)))
        if not np.isfinite(mean_loss):
            raise FloatingPointError(f"classifier training: non-finite loss {mean_loss} in epoch {epoch}")
    params = jax.device_get(params)
    return params, accuracy(params, model, test_images, test_labels)


# ----------------------------------------------------------------------------------------------------
# Features


class ClassifierFeatures:
    """φ(images): (N, H, W, C) float in [−1, 1] (or uint8, converted by `to_float`) → (N, 128) float32.

    Jitted on batches of `batch_size` images, the last one padded, so it compiles once. Inputs are checked
    on the host first (`lebm_jax.data.images.as_model_images`): the classifier's (H, W, C), uint8 or finite
    floats in [−1, 1]; floats above 1 (e.g. [0, 255]) or below −1 are a ValueError. Floats with no negative
    value look like [0, 1] images but may be bright generated images, which this function is given during
    evaluation and must not reject: they are used as [−1, 1] with a warning, silenced by
    ``assume_range="[-1, 1]"``.
    """

    def __init__(self, params, num_classes: int, image_shape: tuple[int, int, int], batch_size: int = EVAL_BATCH):
        self.params = jax.device_put(params)  # on the device once, not per call
        self.image_shape = tuple(int(s) for s in image_shape)
        self.model = ConvClassifier(num_classes=num_classes)
        self.dim = self.model.feature_dim
        self.batch_size = batch_size
        self._apply = jax.jit(lambda params, x: self.model.apply(params, x)[1])

    def __call__(self, images, *, assume_range: str | None = None) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != self.image_shape:
            raise ValueError(
                f"classifier features expect images of shape (N, {', '.join(map(str, self.image_shape))}), "
                f"got {images.shape}"
            )
        images = as_model_images(images, "classifier features", self.image_shape,
                                 assume_range=assume_range, ambiguous="warn")
        return _batched(lambda x: self._apply(self.params, x), images, self.dim, self.batch_size)


# ----------------------------------------------------------------------------------------------------
# Cache


@dataclasses.dataclass(frozen=True)
class ClassifierInfo:
    """What the JSON sidecar holds, plus where the parameters are and whether they came from the cache."""

    data_name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    test_accuracy: float
    epochs: int
    batch_size: int
    learning_rate: float
    max_shift: int
    seed: int
    data_sha256: str  # of both splits' images and labels
    params_sha256: str  # of the msgpack file's bytes
    train_seconds: float
    format_version: int
    path: str = ""
    from_cache: bool = False

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("path"), d.pop("from_cache")
        d["image_shape"] = list(self.image_shape)
        return d


def data_digest(data: ImageData) -> str:
    """SHA-256 of both splits' images (shape and bytes) and int64 labels."""
    h = hashlib.sha256()
    for images, labels in ((data.train, data.train_labels), (data.test, data.test_labels)):
        images = np.ascontiguousarray(images, np.uint8)
        h.update(repr(images.shape).encode())
        h.update(images.tobytes())
        h.update(np.ascontiguousarray(labels, "<i8").tobytes())
    return h.hexdigest()


def _read_cache(params_path: Path, info_path: Path, expected: dict, template) -> tuple[dict, ClassifierInfo]:
    """(params, info) of a cache entry; raises ValueError/OSError when it is unreadable or does not match."""
    saved = json.loads(info_path.read_text())
    for key, value in expected.items():
        if saved.get(key) != value:
            raise ValueError(f"sidecar {key}={saved.get(key)!r}, expected {value!r}")
    payload = params_path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != saved["params_sha256"]:
        raise ValueError("the parameter file's SHA-256 does not match its sidecar")
    params = flax.serialization.from_bytes(template, payload)
    want = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), template)
    got = jax.tree_util.tree_map(lambda a: (np.shape(a), np.asarray(a).dtype), params)
    if want != got:
        raise ValueError("the saved parameters do not have the classifier's shapes")
    saved["image_shape"] = tuple(saved["image_shape"])
    info = ClassifierInfo(**saved, path=str(params_path), from_cache=True)
    return params, info


def load_or_train(
    data: ImageData,
    *,
    seed: int = 0,
    directory: str | os.PathLike | None = None,
    epochs: int | None = None,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    max_shift: int = 2,
) -> tuple[ClassifierFeatures, ClassifierInfo]:
    """(φ, info) for a labelled data set: the cached classifier when there is one for exactly this data and
    these settings, else one trained now and cached. `directory` defaults to ``cache_dir("classifiers")``.
    info.test_accuracy is the classifier's accuracy on ``data.test``; it is also logged."""
    if data.train_labels is None or data.test_labels is None:
        raise ValueError(
            f"data set {data.name!r} has no labels: the classifier feature space needs labels to train its "
            "classifier (use the Inception features for unlabelled data)"
        )
    train = _check_images(data.train, f"{data.name} training images")
    train_labels = _check_labels(data.train_labels, len(train), f"{data.name} training labels")
    test_labels = _check_labels(data.test_labels, len(data.test), f"{data.name} test labels")
    image_shape = tuple(int(s) for s in train.shape[1:])
    num_classes = int(max(train_labels.max(), test_labels.max(initial=0))) + 1
    epochs = default_epochs(len(train)) if epochs is None else int(epochs)
    digest = data_digest(data)
    settings = dict(
        data_name=data.name, image_shape=list(image_shape), num_classes=num_classes, epochs=epochs,
        batch_size=batch_size, learning_rate=learning_rate, max_shift=max_shift, seed=seed, data_sha256=digest,
        format_version=FORMAT_VERSION,
    )
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    directory = Path(directory) if directory is not None else cache_dir("classifiers")
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', data.name)}_{'x'.join(map(str, image_shape))}_{key}"
    params_path, info_path = directory / f"{stem}.msgpack", directory / f"{stem}.json"

    model = ConvClassifier(num_classes=num_classes)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape), jnp.float32)))
    template = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)

    if params_path.exists() or info_path.exists():
        try:
            params, info = _read_cache(params_path, info_path, settings, template)
        except (OSError, ValueError, KeyError, TypeError) as e:
            warnings.warn(
                f"classifier cache {params_path} is unusable ({type(e).__name__}: {e}); retraining", stacklevel=2
            )
        else:
            logger.info(
                "classifier for %s %s from %s: test accuracy %.4f",
                data.name, image_shape, params_path, info.test_accuracy,
            )
            return ClassifierFeatures(params, num_classes, image_shape), info

    start = time.perf_counter()
    params, test_accuracy = train_classifier(
        train, train_labels, data.test, test_labels, seed=seed, epochs=epochs, batch_size=batch_size,
        learning_rate=learning_rate, num_classes=num_classes, max_shift=max_shift,
    )
    seconds = time.perf_counter() - start
    payload = flax.serialization.to_bytes(params)
    info = ClassifierInfo(
        data_name=data.name, image_shape=image_shape, num_classes=num_classes, test_accuracy=test_accuracy,
        epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, max_shift=max_shift, seed=seed,
        data_sha256=digest, params_sha256=hashlib.sha256(payload).hexdigest(), train_seconds=seconds,
        format_version=FORMAT_VERSION, path=str(params_path), from_cache=False,
    )
    write_atomic(params_path, payload)
    write_atomic(info_path, (json.dumps(info.to_json(), indent=1, sort_keys=True) + "\n").encode())
    logger.info(
        "trained classifier for %s %s in %.1f s (%d epochs): test accuracy %.4f; saved to %s",
        data.name, image_shape, seconds, epochs, test_accuracy, params_path,
    )
    return ClassifierFeatures(params, num_classes, image_shape), info
