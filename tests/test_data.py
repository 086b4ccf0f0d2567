"""Data loading (every source, the tfds ones under `tfds.testing.mock_data`) and the batch order."""

import time

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from sklearn.datasets import load_digits

from lebm_jax.data import datasets as data


def data_config(name, image_size, channels, path="", test_fraction=0.1):
    return ml_collections.ConfigDict(
        dict(name=name, image_size=image_size, channels=channels, path=str(path), test_fraction=test_fraction)
    )


# ----------------------------------------------------------------------------------------------------
# to_float


def test_to_float_maps_uint8_onto_minus_one_one():
    x = np.array([0, 1, 127, 128, 254, 255], np.uint8)
    y = data.to_float(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x / 127.5 - 1.0, rtol=0, atol=1e-7)
    assert y[0] == -1.0 and y[-1] == 1.0
    with pytest.raises(ValueError, match="uint8"):
        data.to_float(y)


# ----------------------------------------------------------------------------------------------------
# tfds data sets, read by the real loading code from mocked builders

TFDS_CASES = [  # data.name, image_size, channels, labelled
    ("mnist", 28, 1, True),
    ("fashion_mnist", 28, 1, True),
    ("svhn", 32, 3, True),
    ("cifar10", 32, 3, True),
    ("celeba", 64, 3, False),
]


@pytest.mark.parametrize("name,size,channels,labelled", TFDS_CASES)
def test_tfds_sources_load_under_mock(name, size, channels, labelled, tmp_path):
    with tfds.testing.mock_data(num_examples=5):
        ds = data.load(data_config(name, size, channels, tmp_path))
    assert ds.name == name
    for images, labels in ((ds.train, ds.train_labels), (ds.test, ds.test_labels)):
        assert images.shape == (5, size, size, channels) and images.dtype == np.uint8
        x = data.to_float(images)
        assert x.min() >= -1.0 and x.max() <= 1.0 and x.max() > x.min()
        if labelled:
            assert labels.shape == (5,) and labels.dtype == np.int64
            assert labels.min() >= 0 and labels.max() < 10
        else:
            assert labels is None


def _mock_images(tfds_name, split, n, features=("image", "label")):
    """The raw images the mocked builder serves, read directly.

    The mock draws the decoded ``features`` from one random stream, so they must be those `data.load` decodes.
    """
    keys = tfds.decode.PartialDecoding({key: True for key in features})
    ds = tfds.load(tfds_name, split=split, decoders=keys)
    return np.stack([ex["image"] for ex in tfds.as_numpy(ds.take(n))])


def test_tfds_images_at_stored_shape_pass_through_unchanged():
    with tfds.testing.mock_data(num_examples=4):
        raw = _mock_images("cifar10", "train", 4)
        ds = data.load(data_config("cifar10", 32, 3))
    np.testing.assert_array_equal(ds.train, raw)


def test_celeba_is_centre_cropped_to_140_then_resized():
    with tfds.testing.mock_data(num_examples=3):
        raw = _mock_images("celeb_a", "test", 3, features=("image",))  # (3, 218, 178, 3)
        ds = data.load(data_config("celeba", 64, 3))
    assert raw.shape[1:] == (218, 178, 3)
    # independent reference: PIL's antialiased bilinear resize of the 140×140 centre crop
    crops = raw[:, 39 : 39 + 140, 19 : 19 + 140]
    ref = np.stack([np.asarray(Image.fromarray(c).resize((64, 64), Image.BILINEAR)) for c in crops])
    diff = np.abs(ds.test.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.5


def test_tfds_channels_are_converted():
    with tfds.testing.mock_data(num_examples=3):
        raw = _mock_images("mnist", "train", 3)
        rgb = data.load(data_config("mnist", 28, 3))
        grey = data.load(data_config("cifar10", 16, 1))
    np.testing.assert_array_equal(rgb.train, np.repeat(raw, 3, axis=-1))  # grey → RGB repeats the channel
    assert grey.train.shape == (3, 16, 16, 1) and grey.train.dtype == np.uint8


class Mnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes a small data set under tfds' name "mnist" with MNIST's features, offline."""

    VERSION = tfds.core.Version("3.0.1")

    def _info(self):
        features = {"image": tfds.features.Image(shape=(28, 28, 1)), "label": tfds.features.ClassLabel(num_classes=10)}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples("train"), "test": self._generate_examples("test")}

    def _generate_examples(self, split):
        for i, (image, label) in enumerate(zip(*PREPARED[split])):
            yield i, {"image": image, "label": label}


PREPARED = {  # split -> (images, labels) that Mnist writes
    split: (np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1)).astype(np.uint8), np.arange(n) % 10)
    for split, seed, n in (("train", 1, 30), ("test", 2, 7))
}


def test_prepared_tfds_data_set_is_read_from_data_dir(tmp_path):
    """The unmocked read path: a prepared data set in the tfds data_dir data.path."""
    Mnist(data_dir=str(tmp_path)).download_and_prepare()
    ds = data.load(data_config("mnist", 28, 1, tmp_path))
    for split, images, labels in (("train", ds.train, ds.train_labels), ("test", ds.test, ds.test_labels)):
        written_images, written_labels = PREPARED[split]
        assert images.shape == written_images.shape and images.dtype == np.uint8
        written = {im.tobytes(): label for im, label in zip(written_images, written_labels)}
        assert len(written) == len(images)
        assert {im.tobytes(): label for im, label in zip(images, labels)} == written  # tfds reorders examples
    again = data.load(data_config("mnist", 28, 1, tmp_path))
    np.testing.assert_array_equal(again.train, ds.train)  # in a fixed order
    upscaled = data.load(data_config("mnist", 32, 3, tmp_path))
    assert upscaled.train.shape == (30, 32, 32, 3)


@pytest.mark.parametrize("name,tfds_name", [("mnist", "mnist"), ("celeba", "celeb_a")])
def test_missing_tfds_data_set_is_an_immediate_clear_error(name, tfds_name, tmp_path):
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as err:
        data.load(data_config(name, 28, 1, tmp_path))
    assert time.monotonic() - start < 10.0  # no download attempt
    message = str(err.value)
    assert repr(tfds_name) in message and "data.path" in message and str(tmp_path) in message


def test_unknown_data_set_names_the_field():
    with pytest.raises(ValueError, match=r"data\.name='imagenet'"):
        data.load(data_config("imagenet", 32, 3))


# ----------------------------------------------------------------------------------------------------
# digits


def test_digits_split_scale_labels_and_determinism():
    ds = data.load(data_config("digits", 16, 1))
    assert ds.train.shape == (1500, 16, 16, 1) and ds.test.shape == (297, 16, 16, 1)
    assert ds.train.dtype == np.uint8 and ds.test.dtype == np.uint8
    assert ds.train.min() == 0 and ds.train.max() == 255  # full 0..255 scale
    target = load_digits().target
    np.testing.assert_array_equal(ds.train_labels, target[:1500])
    np.testing.assert_array_equal(ds.test_labels, target[1500:])
    again = data.load(data_config("digits", 16, 1))
    np.testing.assert_array_equal(again.train, ds.train)
    np.testing.assert_array_equal(again.test, ds.test)


def test_digits_at_native_size_are_the_scaled_originals():
    ds = data.load(data_config("digits", 8, 1))
    expected = np.round(load_digits().images * 255 / 16).astype(np.uint8)[..., None]
    np.testing.assert_array_equal(np.concatenate([ds.train, ds.test]), expected)


# ----------------------------------------------------------------------------------------------------
# npz


def _images(n, size, channels=None, seed=0):
    shape = (n, size, size) if channels is None else (n, size, size, channels)
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def test_npz_round_trip_with_labels(tmp_path):
    images, labels = _images(12, 16, 3), np.arange(12) % 5
    path = tmp_path / "x.npz"
    np.savez(path, images=images, labels=labels)
    ds = data.load(data_config("npz", 16, 3, path, test_fraction=0.25))
    np.testing.assert_array_equal(ds.train, images[:9])
    np.testing.assert_array_equal(ds.test, images[9:])
    np.testing.assert_array_equal(ds.train_labels, labels[:9])
    np.testing.assert_array_equal(ds.test_labels, labels[9:])


def test_npz_round_trip_rank3_without_labels(tmp_path):
    images = _images(10, 8)
    path = tmp_path / "x.npz"
    np.savez_compressed(path, images=images)
    ds = data.load(data_config("npz", 8, 1, path, test_fraction=0.0))
    assert ds.train.shape == (10, 8, 8, 1) and ds.test.shape == (0, 8, 8, 1)
    np.testing.assert_array_equal(ds.train[..., 0], images)
    assert ds.train_labels is None and ds.test_labels is None


NPZ_ERRORS = [  # arrays, image_size, channels, expected phrase
    (dict(images=_images(10, 16, 1).astype(np.float32)), 16, 1, "dtype float32 is not uint8"),
    (dict(images=_images(10, 16, 1)[..., None]), 16, 1, "rank 5"),
    (dict(images=np.zeros((10, 16), np.uint8)), 16, 1, "rank 2"),
    (dict(images=np.zeros((10, 16, 12, 1), np.uint8)), 16, 1, "not square"),
    (dict(images=_images(10, 16, 4)), 16, 1, "4 channels is not data.channels=1"),
    (dict(images=_images(10, 16)), 16, 3, "1 channels is not data.channels=3"),
    (dict(images=_images(10, 32, 1)), 16, 1, "size 32 is not data.image_size=16"),
    (dict(images=np.zeros((0, 16, 16, 1), np.uint8)), 16, 1, "no images"),
    (dict(pictures=_images(10, 16, 1)), 16, 1, "no array named 'images'"),
    (dict(images=_images(10, 16, 1), labels=np.arange(9)), 16, 1, "labels have shape (9,)"),
    (dict(images=_images(10, 16, 1), labels=np.ones(10)), 16, 1, "labels have shape (10,) and dtype float64"),
]


@pytest.mark.parametrize("arrays,size,channels,phrase", NPZ_ERRORS)
def test_npz_bad_contents_are_errors_naming_file_and_problem(arrays, size, channels, phrase, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError) as err:
        data.load(data_config("npz", size, channels, path))
    message = str(err.value)
    assert str(path) in message and phrase in message


def test_npz_error_message_states_the_expected_shape(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, images=_images(10, 16, 4))
    with pytest.raises(ValueError) as err:
        data.load(data_config("npz", 16, 1, path))
    assert "images have shape (10, 16, 16, 4)" in str(err.value)
    assert "expected (N, 16, 16, 1) uint8 for data.image_size=16, data.channels=1" in str(err.value)


def test_npz_missing_file_and_no_training_images(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        data.load(data_config("npz", 16, 1, tmp_path / "nothere.npz"))
    path = tmp_path / "one.npz"
    np.savez(path, images=_images(1, 16, 1))
    with pytest.raises(ValueError, match="no training images"):
        data.load(data_config("npz", 16, 1, path, test_fraction=0.9))


# ----------------------------------------------------------------------------------------------------
# folder


def _write_folder(root):
    """Six images in sorted order a0..a5 (one JPEG, one in a subfolder, odd sizes and modes) and a text file."""
    (root / "sub").mkdir(parents=True)
    stripes = np.zeros((16, 32, 3), np.uint8)  # 16 high, 32 wide: red | green (centre 16 columns) | blue
    stripes[:, :8] = (255, 0, 0)
    stripes[:, 8:24] = (0, 255, 0)
    stripes[:, 24:] = (0, 0, 255)
    Image.fromarray(stripes).save(root / "a0.png")
    Image.fromarray(np.full((20, 20), 200, np.uint8), mode="L").save(root / "a1.png")
    Image.fromarray(np.full((40, 30, 4), 90, np.uint8), mode="RGBA").save(root / "a2.png")
    Image.fromarray(np.full((24, 24, 3), (10, 120, 240), np.uint8)).save(root / "a3.JPG", quality=95)
    Image.fromarray(_images(1, 8, 3)[0]).save(root / "a4.png")
    Image.fromarray(np.full((16, 16, 3), 30, np.uint8)).save(root / "sub" / "a5.png")
    (root / "notes.txt").write_text("not an image")


def test_folder_loads_crops_resizes_and_splits(tmp_path):
    _write_folder(tmp_path)
    ds = data.load(data_config("folder", 16, 3, tmp_path, test_fraction=0.2))
    assert ds.train.shape == (5, 16, 16, 3) and ds.test.shape == (1, 16, 16, 3)  # round(0.2·6) = 1 held out
    assert ds.train.dtype == np.uint8 and ds.train_labels is None and ds.test_labels is None
    np.testing.assert_array_equal(ds.train[0], np.broadcast_to(np.uint8([0, 255, 0]), (16, 16, 3)))  # centre crop
    np.testing.assert_array_equal(ds.train[1], 200)  # grey file → RGB
    assert np.abs(ds.train[3].astype(int) - [10, 120, 240]).max() <= 3  # the JPEG, lossy
    np.testing.assert_array_equal(ds.test[0], 30)  # sub/a5.png sorts last
    grey = data.load(data_config("folder", 8, 1, tmp_path, test_fraction=0.0))
    assert grey.train.shape == (6, 8, 8, 1)
    np.testing.assert_array_equal(grey.train[1], 200)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image folder"):
        data.load(data_config("folder", 16, 1, tmp_path / "absent"))
    (tmp_path / "empty" / "deeper").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no .png/.jpg/.jpeg files"):
        data.load(data_config("folder", 16, 1, tmp_path / "empty"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="b.png: cannot read"):
        data.load(data_config("folder", 16, 1, tmp_path / "broken"))


# ----------------------------------------------------------------------------------------------------
# batch order


def test_steps_per_epoch_and_data_smaller_than_a_batch():
    assert data.steps_per_epoch(1500, 100) == 15
    assert data.steps_per_epoch(1599, 100) == 15
    with pytest.raises(ValueError, match=r"batch_size=100 is larger than the training set \(50 images\)"):
        data.steps_per_epoch(50, 100)
    with pytest.raises(ValueError, match="batch_size"):
        data.steps_per_epoch(50, 0)


def test_one_epoch_partitions_its_permutation():
    n, b, seed = 103, 10, 7
    spe = data.steps_per_epoch(n, b)
    for epoch in range(3):
        batches = [data.global_batch_indices(n, b, seed, epoch * spe + i) for i in range(spe)]
        assert all(batch.shape == (b,) for batch in batches)
        seen = np.concatenate(batches)
        assert len(np.unique(seen)) == spe * b  # every index at most once per epoch
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        np.testing.assert_array_equal(seen, perm[: spe * b])


def test_batch_order_is_a_function_of_seed_and_step():
    n, b = 1000, 100
    spe = data.steps_per_epoch(n, b)
    first = data.global_batch_indices(n, b, 0, 3)
    np.testing.assert_array_equal(first, data.global_batch_indices(n, b, 0, 3))  # resumable: same step, same batch
    assert not np.array_equal(first, data.global_batch_indices(n, b, 1, 3))  # another seed
    assert not np.array_equal(first, data.global_batch_indices(n, b, 0, 3 + spe))  # next epoch's order
    epoch0 = np.concatenate([data.global_batch_indices(n, b, 0, i) for i in range(spe)])
    epoch1 = np.concatenate([data.global_batch_indices(n, b, 0, spe + i) for i in range(spe)])
    assert not np.array_equal(epoch0, epoch1) and np.array_equal(np.sort(epoch0), np.sort(epoch1))
    first[:] = -1  # the returned array is the caller's own
    assert data.global_batch_indices(n, b, 0, 3).min() >= 0


def test_host_slices_concatenate_to_the_global_batch():
    images = _images(50, 4, 1, seed=3)
    for step in (0, 4, 5, 12):
        whole = data.host_batch(images, 10, seed=5, step=step)
        assert whole.shape == (10, 4, 4, 1) and whole.dtype == np.float32
        np.testing.assert_array_equal(whole, data.to_float(images[data.global_batch_indices(50, 10, 5, step)]))
        halves = [data.host_batch(images, 10, 5, step, process_index=p, process_count=2) for p in range(2)]
        assert all(h.shape == (5, 4, 4, 1) for h in halves)
        np.testing.assert_array_equal(np.concatenate(halves), whole)


def test_host_batch_argument_errors():
    images = _images(50, 4, 1)
    with pytest.raises(ValueError, match="not divisible"):
        data.host_batch(images, 10, 0, 0, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="process_index=2"):
        data.host_batch(images, 10, 0, 0, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="larger than the training set"):
        data.host_batch(images, 100, 0, 0)
    with pytest.raises(ValueError, match="step=-1"):
        data.host_batch(images, 10, 0, -1)
