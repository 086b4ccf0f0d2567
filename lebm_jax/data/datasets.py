"""Image data sets in host memory, and the deterministic, resumable batch order over them.

A data set is held as uint8 NHWC arrays (`ImageData`); a batch is converted to float32 in [-1, 1]
(x/127.5 − 1, the generator's tanh range) only when it is drawn (`host_batch`).

Batch order is a pure function of (seed, step): epoch e = step // steps_per_epoch uses the permutation
``np.random.default_rng([seed, e]).permutation(N)``, and step's global batch is the (step mod spe)-th
slice of B indices of it (the last N mod B indices of each permutation are dropped). There is no
iterator state, so a run resumed at any step sees exactly the batches an uninterrupted run would have.
Every host computes the same global batch and keeps its contiguous share of rows.

Sources (``data.name``):
- ``digits``: scikit-learn's 8×8 digits (0..16 → round(v·255/16)), last 297 images held out.
- ``mnist``, ``fashion_mnist``, ``svhn`` (tfds ``svhn_cropped``), ``cifar10``, ``celeba`` (tfds ``celeb_a``,
  centre crop 140×140 first): tfds splits "train"/"test", read from the tfds data_dir ``data.path``
  (tfds' default when empty). Nothing is ever downloaded: a data set that is not prepared is an error.
- ``npz``: ``images`` (N, H, W[, C]) uint8, optional ``labels`` (N,), stored at exactly the configured size.
- ``folder``: PNG/JPEG files under ``data.path`` (recursive, sorted by relative path), centre-cropped
  to a square and resized.
``npz`` and ``folder`` hold out their last round(test_fraction·N) images.

Resizing is bilinear with half-pixel centres and antialiasing on downscaling (``tf.image.resize(...,
method="bilinear", antialias=True)`` for arrays, PIL's ``Image.BILINEAR`` for folder files; the two
agree to within one grey level). When a tfds data set's stored channels differ from ``data.channels``
it is converted: grey → RGB by repetition, RGB → grey by the ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from lebm_jax.data.images import to_float

DIGITS_TEST = 297  # the last 297 of scikit-learn's 1,797 digits are the test split
CELEBA_CROP = 140  # centre crop of the 218×178 aligned CelebA faces before resizing (Pang et al.)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's "L" conversion

# data.name -> (tfds name, centre crop before resizing or None, label feature or None)
TFDS_SOURCES = {
    "mnist": ("mnist", None, "label"),
    "fashion_mnist": ("fashion_mnist", None, "label"),
    "svhn": ("svhn_cropped", None, "label"),
    "cifar10": ("cifar10", None, "label"),
    "celeba": ("celeb_a", CELEBA_CROP, None),
}


@dataclasses.dataclass(frozen=True)
class ImageData:
    """A data set held in host memory as uint8 NHWC (converted to float per batch)."""

    name: str
    train: np.ndarray  # (N, H, W, C) uint8
    test: np.ndarray  # (M, H, W, C) uint8
    train_labels: np.ndarray | None  # (N,) int64
    test_labels: np.ndarray | None  # (M,) int64


# ----------------------------------------------------------------------------------------------------
# Loading


def load(data_config) -> ImageData:
    """Loads the data set ``data_config`` (``config.data``) names into host memory as uint8 NHWC."""
    name = data_config.name
    size, channels = data_config.image_size, data_config.channels
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"data.image_size={size!r}: must be an int >= 1")
    if channels not in (1, 3):
        raise ValueError(f"data.channels={channels!r}: must be 1 or 3")
    if name == "digits":
        return _load_digits(size, channels)
    if name in TFDS_SOURCES:
        return _load_tfds(name, data_config.path, size, channels)
    if name == "npz":
        images, labels = _read_npz(data_config.path, size, channels)
        return _split_tail(name, images, labels, data_config.test_fraction, data_config.path)
    if name == "folder":
        images = _read_folder(data_config.path, size, channels)
        return _split_tail(name, images, None, data_config.test_fraction, data_config.path)
    known = ("digits", *TFDS_SOURCES, "npz", "folder")
    raise ValueError(f"data.name={name!r}: unknown data set; expected one of {known}")


@functools.cache
def _tf():
    """TensorFlow, imported on first use and kept off any accelerator (JAX owns those)."""
    import tensorflow as tf  # local: seconds to import, and only the tfds, npz and folder data sets need it

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices were already initialised by an earlier import; leave them
        pass
    return tf


def _tf_transform(images, size: int, channels: int, crop: int | None = None):
    """(b, H, W, C) uint8 tensor → (b, size, size, channels) uint8: centre crop, resize, channel map.

    Rounds once, at the end; a step that is not needed (crop None, size already right, channels
    already right) is skipped, so an image stored at the configured shape passes through unchanged.
    """
    tf = _tf()
    height, width, stored_channels = images.shape[1:]
    if crop is not None:
        if crop > height or crop > width:
            raise ValueError(f"centre crop {crop} does not fit images of {height}×{width}")
        images = tf.image.crop_to_bounding_box(images, (height - crop) // 2, (width - crop) // 2, crop, crop)
        height = width = crop
    if (height, width, stored_channels) == (size, size, channels):
        return images
    x = tf.cast(images, tf.float32)
    if (height, width) != (size, size):
        x = tf.image.resize(x, [size, size], method="bilinear", antialias=True)
    if stored_channels != channels:
        if stored_channels == 1:
            x = tf.repeat(x, channels, axis=-1)
        elif stored_channels == 3 and channels == 1:
            x = tf.tensordot(x, tf.constant(LUMA, tf.float32), axes=1)[..., None]
        else:
            raise ValueError(f"cannot convert {stored_channels}-channel images to {channels} channels")
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def _load_digits(size: int, channels: int) -> ImageData:
    from sklearn.datasets import load_digits  # local: scikit-learn is slow to import and only digits needs it

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]  # (1797, 8, 8, 1)
    images = np.asarray(_tf_transform(_tf().constant(images), size, channels))
    labels = digits.target.astype(np.int64)
    n_train = len(images) - DIGITS_TEST
    return ImageData("digits", images[:n_train], images[n_train:], labels[:n_train], labels[n_train:])


def _load_tfds(name: str, path: str, size: int, channels: int) -> ImageData:
    import tensorflow_datasets as tfds  # local: imports TensorFlow (seconds); only tfds data sets need it

    tfds_name, crop, label_key = TFDS_SOURCES[name]
    builder = tfds.builder(tfds_name, data_dir=path or None)
    keys = {"image": True, **({label_key: True} if label_key else {})}
    arrays = {}
    for split in ("train", "test"):
        try:
            ds = builder.as_dataset(split=split, shuffle_files=False, decoders=tfds.decode.PartialDecoding(keys))
        except AssertionError as e:  # tfds' way of saying "not downloaded and prepared"
            raise FileNotFoundError(
                f"data.name={name!r}: the tfds data set {tfds_name!r} is not prepared in "
                f"{path or 'the default tfds data_dir'} (looked for {builder.data_dir}). Nothing is downloaded "
                f"here: prepare it once on a machine with network (`tfds build {tfds_name} --data_dir=DIR`, "
                f"or tfds.load({tfds_name!r}, data_dir=DIR)) and set data.path=DIR, the tfds data_dir that "
                f"holds {tfds_name}/<version>/."
            ) from e
        arrays[split] = _gather(ds, size, channels, crop, label_key)
    (train, train_labels), (test, test_labels) = arrays["train"], arrays["test"]
    return ImageData(name, train, test, train_labels, test_labels)


def _gather(ds, size: int, channels: int, crop: int | None, label_key: str | None, chunk: int = 1024):
    """Reads a tfds split into (images (N, size, size, channels) uint8, labels (N,) int64 or None)."""
    tf = _tf()

    def transform(batch):
        out = {"image": _tf_transform(batch["image"], size, channels, crop)}
        if label_key:
            out["label"] = tf.cast(batch[label_key], tf.int64)
        return out

    count = int(ds.cardinality())  # known for tfds splits; negative when unknown
    batches = ds.batch(chunk).map(transform, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
    if count >= 0:  # fill preallocated arrays: peak memory is the data set itself, not twice it
        images = np.empty((count, size, size, channels), np.uint8)
        labels = np.empty((count,), np.int64) if label_key else None
        filled = 0
        for batch in batches.as_numpy_iterator():
            b = len(batch["image"])
            images[filled : filled + b] = batch["image"]
            if label_key:
                labels[filled : filled + b] = batch["label"]
            filled += b
        if filled != count:
            raise RuntimeError(f"tfds split announced {count} examples but yielded {filled}")
        return images, labels
    parts = list(batches.as_numpy_iterator())
    images = np.concatenate([p["image"] for p in parts]) if parts else np.empty((0, size, size, channels), np.uint8)
    labels = np.concatenate([p["label"] for p in parts]) if (label_key and parts) else None
    return images, labels


def _npz_arrays(path: Path, want: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``images`` and ``labels`` (or None) arrays of an .npz; one ValueError naming the path when the file
    is not a complete .npz archive (truncated, another format, a damaged or non-array member)."""
    contents = ("an .npz archive (np.savez / np.savez_compressed) holding 'images' (N, H, W[, C]) uint8 and "
                f"optionally 'labels' (N,) integers; here {want}")
    try:
        with open(path, "rb") as raw:
            head = raw.read(6)
    except OSError as e:
        raise ValueError(f"data.path={str(path)!r}: cannot read the file ({e})") from e
    if not head.startswith(b"PK"):  # every zip archive, so every .npz, starts with "PK"
        kind = "empty" if not head else "a .npy file (one array)" if head == b"\x93NUMPY" else "not a zip archive"
        raise ValueError(f"{path}: not a valid .npz file ({kind}); expected {contents}")
    names = []
    try:
        with np.load(path, allow_pickle=False) as f:
            names = sorted(f.files)
            images = f["images"] if "images" in names else None
            labels = f["labels"] if "labels" in names else None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
        reason = str(e).split("\n")[0]
        if "pickle" in reason.lower():  # an object array: reading it would mean unpickling, which is never done
            raise ValueError(
                f"{path}: not a valid .npz data file (an array holds Python objects, not numbers); expected {contents}"
            ) from None
        raise ValueError(
            f"{path}: not a valid, complete .npz file (truncated or damaged: {type(e).__name__}: {reason}); "
            f"expected {contents}"
        ) from e
    if images is None:
        raise ValueError(f"{path}: no array named 'images' (found {names}); expected {contents}")
    for name, array in (("images", images), ("labels", labels)):
        if array is not None and not isinstance(array, np.ndarray):
            raise ValueError(f"{path}: the member {name!r} is not a NumPy .npy array; expected {contents}")
    return images, labels


def _read_npz(path: str, size: int, channels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """images (N, size, size, channels) uint8 and labels (N,) int64 or None from an .npz; never resizes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data.path={str(path)!r}: no such .npz file")
    want = f"(N, {size}, {size}, {channels}) uint8 for data.image_size={size}, data.channels={channels}"
    expected = f"expected {want}"
    images, labels = _npz_arrays(path, want)
    problems = []
    if images.dtype != np.uint8:
        hint = " (store [0, 1] floats as np.round(x * 255).astype(np.uint8))" if images.dtype.kind == "f" else ""
        problems.append(f"dtype {images.dtype} is not uint8{hint}")
    if images.ndim == 3:  # (N, H, W): one channel
        shape = images.shape + (1,)
    elif images.ndim == 4:
        shape = images.shape
    else:
        shape = None
        problems.append(f"rank {images.ndim} is neither 4 (N, H, W, C) nor 3 (N, H, W)")
    if shape is not None:
        n, h, w, c = shape
        if n == 0:
            problems.append("there are no images")
        if h != w:
            problems.append(f"images are not square ({h}×{w})")
        elif h != size:
            problems.append(f"size {h} is not data.image_size={size} (npz images are not resized)")
        if c != channels:
            problems.append(f"{c} channels is not data.channels={channels}")
    if problems:
        raise ValueError(
            f"{path}: images have shape {images.shape} and dtype {images.dtype}: {'; '.join(problems)}; {expected}"
        )
    images = images.reshape(shape)
    if labels is not None:
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{path}: labels have shape {labels.shape} and dtype {labels.dtype}; "
                f"expected ({len(images)},) integers, one per image"
            )
        labels = labels.astype(np.int64)
    return images, labels


def _read_folder(path: str, size: int, channels: int) -> np.ndarray:
    """PNG/JPEG files under ``path`` (recursive, sorted) → (N, size, size, channels) uint8."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"data.path={str(root)!r}: no such image folder")
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise ValueError(f"data.path={str(root)!r}: no {'/'.join(IMAGE_SUFFIXES)} files in the folder or below it")
    mode = "L" if channels == 1 else "RGB"
    images = np.empty((len(files), size, size, channels), np.uint8)
    for i, file in enumerate(files):
        try:
            with Image.open(file) as im:
                im = im.convert(mode)
                w, h = im.size
                s = min(w, h)
                left, top = (w - s) // 2, (h - s) // 2
                im = im.crop((left, top, left + s, top + s))
                if s != size:
                    im = im.resize((size, size), Image.BILINEAR)
                images[i] = np.asarray(im, np.uint8).reshape(size, size, channels)
        except OSError as e:  # PIL's UnidentifiedImageError and truncated files are OSErrors
            raise ValueError(f"{file}: cannot read as an image ({e})") from e
    return images


def _split_tail(name: str, images, labels, test_fraction: float, path) -> ImageData:
    """The last round(test_fraction·N) images are the test split, the rest train."""
    n = len(images)
    n_test = round(test_fraction * n)
    if not 0 <= n_test < n:
        raise ValueError(
            f"{path}: data.test_fraction={test_fraction!r} of {n} images leaves no training images"
        )
    n_train = n - n_test
    return ImageData(
        name,
        images[:n_train],
        images[n_train:],
        None if labels is None else labels[:n_train],
        None if labels is None else labels[n_train:],
    )


# ----------------------------------------------------------------------------------------------------
# Batch order


def _nonnegative_int(value, what: str) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{what}={value!r}: must be an int") from None
    if value < 0:
        raise ValueError(f"{what}={value!r}: must be >= 0")
    return value


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    """⌊N / B⌋ full global batches per epoch; ValueError when the data set holds less than one batch."""
    num_examples = _nonnegative_int(num_examples, "num_examples")
    global_batch = _nonnegative_int(global_batch, "batch_size")
    if global_batch < 1:
        raise ValueError(f"batch_size={global_batch}: must be >= 1")
    if num_examples < global_batch:
        raise ValueError(
            f"batch_size={global_batch} is larger than the training set ({num_examples} images): "
            "an epoch needs at least one full global batch"
        )
    return num_examples // global_batch


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    perm.flags.writeable = False  # shared by every step of the epoch
    return perm


def global_batch_indices(num_examples: int, global_batch: int, seed: int, step: int) -> np.ndarray:
    """(B,) int indices of step's global batch: slice (step mod spe) of epoch (step // spe)'s permutation."""
    spe = steps_per_epoch(num_examples, global_batch)
    seed = _nonnegative_int(seed, "seed")
    epoch, i = divmod(_nonnegative_int(step, "step"), spe)
    return _epoch_permutation(num_examples, seed, epoch)[i * global_batch : (i + 1) * global_batch].copy()


def host_batch(
    data: np.ndarray,
    global_batch: int,
    seed: int,
    step: int,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
    """This host's rows p·B/P … (p+1)·B/P of step's global batch, float32 in [−1, 1]: (B/P, H, W, C)."""
    process_count = _nonnegative_int(process_count, "process_count")
    process_index = _nonnegative_int(process_index, "process_index")
    if process_count < 1 or process_index >= process_count:
        raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
    global_batch = _nonnegative_int(global_batch, "batch_size")
    if global_batch % process_count:
        raise ValueError(
            f"batch_size={global_batch} is not divisible by the number of processes ({process_count})"
        )
    per_host = global_batch // process_count
    rows = global_batch_indices(len(data), global_batch, seed, step)
    rows = rows[process_index * per_host : (process_index + 1) * per_host]
    return to_float(np.take(data, rows, axis=0))
