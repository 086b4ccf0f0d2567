"""FID Inception-v3 port: architecture shapes, input preprocessing, pooling, the torch-file loader, weight-file
resolution, and the batched feature function.

The last tests compare with pytorch-fid itself and run only where torch and pytorch-fid are installed (skipped
otherwise). Install them in a virtual environment of their own, outside the repository, e.g.

    python3.11 -m venv /work/parity-venv
    /work/parity-venv/bin/pip install torch==2.14.1 torchvision==0.29.1   # pinned: plain `torch` may pull CUDA
    /work/parity-venv/bin/pip install --no-deps pytorch-fid && /work/parity-venv/bin/pip install pillow scipy
    /work/parity-venv/bin/pip install -e '.[test]'
    PYTHONPATH=. /work/parity-venv/bin/python -m pytest -q tests/test_inception.py -k parity -s

(the `parity` extra in pyproject.toml names the same packages). They build pytorch-fid's
`InceptionV3([3], use_fid_inception=True)` with random weights and random BatchNorm statistics (its weight download
is stubbed out), save its state dict with torch.save in both formats, load it through `load_fid_params`, and
require relative feature error ≤ 1e-4 and relative FID error ≤ 1e-3 on the same images; they also check the
resize against F.interpolate, the pool against F.avg_pool2d, and that torch.load reads tests/torch_files.py's files.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch_files

from lebm_jax.measure import inception as inc
from lebm_jax.measure.inception import weights as inc_weights

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# ---------------------------------------------------------------------------------------------- random weights


def random_state_dict(seed: int = 0, with_extras: bool = True) -> dict[str, np.ndarray]:
    """A torch-layout state dict of the FID Inception with He-normal convs and random BatchNorm statistics, plus the
    fc head and num_batches_tracked counters that the real file carries."""
    rng = np.random.default_rng(seed)
    draws = {  # BatchNorm leaf → sampler
        "scale": lambda shape: rng.uniform(0.5, 1.5, shape),
        "bias": lambda shape: rng.normal(0.0, 0.1, shape),
        "mean": lambda shape: rng.normal(0.0, 0.1, shape),
        "var": lambda shape: rng.uniform(0.5, 2.0, shape),
    }
    state = {}
    for path, shape in inc_weights._param_template().items():
        name, tshape = inc_weights._torch_name(path), inc_weights._torch_shape(path, shape)
        if path[-2] == "conv":
            state[name] = rng.normal(0.0, np.sqrt(2.0 / np.prod(tshape[1:])), tshape).astype(np.float32)
            continue
        state[name] = draws[path[-1]](tshape).astype(np.float32)
        if with_extras and path[-1] == "var":
            state[name.replace("running_var", "num_batches_tracked")] = np.array(0, np.int64)
    if with_extras:
        state["fc.weight"] = rng.normal(0.0, 0.01, (1008, 2048)).astype(np.float32)
        state["fc.bias"] = np.zeros(1008, np.float32)
    return state


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return random_state_dict(0)


@pytest.fixture(scope="module")
def params(state):
    return inc.fid_params_from_state_dict(state)


@pytest.fixture(scope="module")
def feature_fn(params):
    return inc.make_feature_fn(params, batch_size=2)


def _images(n: int, size: int, channels: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (n, size, size, channels)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- architecture


@pytest.mark.parametrize("size", [299, 32])
def test_documented_shapes(size):
    model = inc.FIDInceptionV3()

    def run(x):
        return model.init_with_output(jax.random.key(0), x, capture_intermediates=True)

    out, variables = jax.eval_shape(run, jnp.zeros((2, size, size, 3)))
    assert out.shape == (2, 2048) and out.dtype == jnp.float32
    shapes = {k: v["__call__"][0].shape for k, v in variables["intermediates"].items() if k != "__call__"}
    expected = {
        "Conv2d_1a_3x3": (149, 32), "Conv2d_2a_3x3": (147, 32), "Conv2d_2b_3x3": (147, 64),
        "Conv2d_3b_1x1": (73, 80), "Conv2d_4a_3x3": (71, 192),
        "Mixed_5b": (35, 256), "Mixed_5c": (35, 288), "Mixed_5d": (35, 288),
        "Mixed_6a": (17, 768), "Mixed_6b": (17, 768), "Mixed_6c": (17, 768), "Mixed_6d": (17, 768),
        "Mixed_6e": (17, 768), "Mixed_7a": (8, 1280), "Mixed_7b": (8, 2048), "Mixed_7c": (8, 2048),
    }
    assert shapes == {k: (2, s, s, c) for k, (s, c) in expected.items()}


def test_parameter_count_and_names():
    template = inc_weights._param_template()
    # 94 BasicConv2d (stem 5, A 3×7, B 4, C 4×10, D 6, E 2×9): conv kernel + BN scale, bias, mean, var
    assert len(template) == 94 * 5
    names = {inc_weights._torch_name(p) for p in template}
    assert "Mixed_7c.branch3x3dbl_3b.conv.weight" in names and "Conv2d_1a_3x3.bn.running_var" in names


# ---------------------------------------------------------------------------------------------- preprocessing


def torch_bilinear_reference(x: np.ndarray, out_h: int, out_w: int, exact: bool = False) -> np.ndarray:
    """torch's upsample_bilinear2d, align_corners=False, written out per output pixel:
    s = max((i + ½)·in/out − ½, 0), i0 = ⌊s⌋, i1 = min(i0 + 1, in − 1), weights (1 − λ, λ) with λ = s − i0.
    torch's float kernel rounds in/out to float32 and s once to float32 (a fused multiply-add); `exact` keeps
    s and λ in float64 instead. The weighted sums are taken in float64."""

    def axis_weights(n_in: int, n_out: int) -> np.ndarray:
        w = np.zeros((n_out, n_in))
        ratio = float(np.float32(n_in) / np.float32(n_out)) if not exact else n_in / n_out
        for i in range(n_out):
            s = ratio * (i + 0.5) - 0.5
            s = max(s if exact else float(np.float32(s)), 0.0)
            i0 = int(np.floor(s))
            i1 = min(i0 + 1, n_in - 1)
            lam = min(max(s - i0, 0.0), 1.0)
            w[i, i0] += 1.0 - lam
            w[i, i1] += lam
        return w

    wh, ww = axis_weights(x.shape[1], out_h), axis_weights(x.shape[2], out_w)
    rows = np.einsum("ph,bhwc->bpwc", wh, x.astype(np.float64))
    return np.einsum("qw,bpwc->bpqc", ww, rows)


@pytest.mark.parametrize("shape", [(32, 32), (7, 13), (400, 400), (598, 310), (299, 299), (1, 299)])
def test_resize_matches_torch_bilinear(shape):
    """Up- and downsampling (no antialiasing), non-square, and the identity at 299, against torch's formula."""
    x = np.random.default_rng(1).uniform(-1, 1, (2, *shape, 3)).astype(np.float32)
    ours = np.asarray(inc.resize_bilinear(jnp.asarray(x), 299))
    np.testing.assert_allclose(ours, torch_bilinear_reference(x, 299, 299), rtol=0, atol=3e-7)
    # jax.image.resize without antialiasing is the same map; its weights and torch's float32 source positions
    # both differ from exact arithmetic by about ulp(in) (λ error ~ in · 2⁻²⁴, so up to ~4e-5 for 598 → 299)
    exact = torch_bilinear_reference(x, 299, 299, exact=True)
    theirs = np.asarray(jax.image.resize(x, (2, 299, 299, 3), "bilinear", antialias=False))
    tol = 2 * 2.0 * max(shape) * 2.0**-23 + 1e-6
    np.testing.assert_allclose(theirs, exact, rtol=0, atol=tol)
    np.testing.assert_allclose(ours, exact, rtol=0, atol=tol)


def test_default_jax_resize_would_antialias():
    """jax.image.resize's default low-pass filters when downsampling; torch's bilinear does not."""
    x = np.random.default_rng(2).uniform(-1, 1, (1, 400, 400, 1)).astype(np.float32)
    smoothed = np.asarray(jax.image.resize(x, (1, 299, 299, 1), "bilinear"))
    assert np.abs(smoothed - torch_bilinear_reference(x, 299, 299)).max() > 0.05


def test_preprocess_grey_and_range():
    grey = _images(2, 16, 1, 3)
    out = np.asarray(inc.preprocess(jnp.asarray(grey)))
    rgb = np.asarray(inc.preprocess(jnp.asarray(np.repeat(grey, 3, axis=-1))))
    assert out.shape == (2, 299, 299, 3)
    np.testing.assert_array_equal(out, rgb)
    # pytorch-fid: 2 · resize(u) − 1 with u = (x + 1) / 2 equals resize(x)
    u = (grey.astype(np.float64) + 1.0) / 2.0
    np.testing.assert_allclose(out[..., :1], 2.0 * torch_bilinear_reference(u, 299, 299) - 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="C in"):
        inc.preprocess(jnp.zeros((1, 8, 8, 2)))


# ---------------------------------------------------------------------------------------------- pooling


def test_avg_pool_excludes_padding():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    out = np.asarray(inc.avg_pool_3x3_exclude_pad(jnp.asarray(x)))[0, :, :, 0]
    # corner: mean of the 2×2 real neighbours; edge: of 6; interior: of 9 (count_include_pad=False)
    assert out[0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)
    assert out[0, 1] == pytest.approx((0 + 1 + 2 + 4 + 5 + 6) / 6)
    assert out[1, 1] == pytest.approx((0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10) / 9)
    assert out[3, 3] == pytest.approx((10 + 11 + 14 + 15) / 4)
    ref = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            ref[i, j] = x[0, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2, 0].mean()
    np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_max_pools_pad_with_minus_infinity_and_floor():
    x = -1.0 - np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)  # all negative: zero padding would win
    same = np.asarray(inc.max_pool_3x3(jnp.asarray(x), 1, 1))[0, :, :, 0]
    assert same[0, 0] == -1.0 and same[4, 4] == -19.0
    strided = np.asarray(inc.max_pool_3x3(jnp.asarray(np.zeros((1, 8, 8, 1), np.float32)), 2, 0))
    assert strided.shape == (1, 3, 3, 1)  # floor((8 − 3) / 2) + 1, ceil_mode False


# ---------------------------------------------------------------------------------------------- torch files


def _named_by_hash(path: Path) -> Path:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    named = path.with_name(f"{path.stem}-{digest[:8]}{path.suffix}")
    path.rename(named)
    return named


@pytest.mark.parametrize("writer", [torch_files.save_zip, torch_files.save_legacy], ids=["zip", "legacy"])
def test_load_random_weights_both_formats(tmp_path, state, writer):
    path = tmp_path / "inception.pth"
    writer(state, path)
    read = inc.read_torch_file(path)
    assert list(read) == list(state)
    assert read["Conv2d_1a_3x3.bn.num_batches_tracked"].shape == ()
    named = _named_by_hash(path)  # the hash prefix in the name is checked
    params = inc.load_fid_params(named)["params"]
    np.testing.assert_array_equal(
        params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
        state["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0),
    )
    assert params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"].shape == (1, 7, 128, 128)
    bn = params["Mixed_7c"]["branch_pool"]["bn"]
    for ours, theirs in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var")):
        np.testing.assert_array_equal(bn[ours], state[f"Mixed_7c.branch_pool.bn.{theirs}"])


def test_wrong_hash_is_rejected(tmp_path):
    path = tmp_path / "pt_inception-2015-12-05-deadbeef.pth"
    torch_files.save_zip({"x": np.zeros(3, np.float32)}, path)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ValueError) as err:
        inc.load_fid_params(path)
    assert str(path) in str(err.value) and "deadbeef" in str(err.value) and actual in str(err.value)
    with pytest.raises(ValueError, match="0123abcd"):
        inc.load_fid_params(path, sha256="0123abcd" * 8)


def test_state_dict_errors_name_the_tensors(state):
    missing = dict(state)
    del missing["Mixed_6e.branch7x7dbl_5.bn.running_mean"]
    with pytest.raises(ValueError, match=r"1 missing tensor\(s\): Mixed_6e\.branch7x7dbl_5\.bn\.running_mean"):
        inc.fid_params_from_state_dict(missing)
    extra = dict(state, **{"Mixed_5b.branch9x9.conv.weight": np.zeros((1,), np.float32)})
    with pytest.raises(ValueError, match=r"1 unexpected tensor\(s\): Mixed_5b\.branch9x9\.conv\.weight"):
        inc.fid_params_from_state_dict(extra)
    wrong = dict(state, **{"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 5, 5), np.float32)})
    shapes = r"Conv2d_1a_3x3\.conv\.weight has shape \(32, 3, 5, 5\), expected \(32, 3, 3, 3\)"
    with pytest.raises(ValueError, match=shapes):
        inc.fid_params_from_state_dict(wrong)
    with pytest.raises(TypeError, match="mapping"):
        inc.fid_params_from_state_dict([1, 2])


def test_unpickler_refuses_other_globals(tmp_path):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(os.getcwd, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        inc.read_torch_file(path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="neither a torch zip"):
        inc.read_torch_file(junk)


def test_truncated_legacy_file_is_an_error(tmp_path):
    path = tmp_path / "t.pth"
    torch_files.save_legacy({"x": np.arange(100, dtype=np.float32)}, path)
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated"):
        inc.read_torch_file(path)


# ---------------------------------------------------------------------------------------------- finding the file


def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("LEBM_JAX_CACHE", str(tmp_path))
    monkeypatch.delenv(inc.WEIGHTS_ENV, raising=False)
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return calls


def test_offline_without_file_says_where_to_put_it(monkeypatch, tmp_path):
    calls = _offline(monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        inc.load_fid_params()
    message = str(err.value)
    expected = tmp_path / "weights" / inc.FID_WEIGHTS_FILE
    assert str(expected) in message and inc.WEIGHTS_ENV in message and inc.FID_WEIGHTS_URL in message
    assert calls == [inc.FID_WEIGHTS_URL]
    assert list((tmp_path / "weights").iterdir()) == []  # no partial download left behind
    with pytest.raises(FileNotFoundError, match="download=False"):
        inc.fid_weights_path(download=False)


def test_env_var_and_explicit_path(monkeypatch, tmp_path):
    _offline(monkeypatch, tmp_path)
    monkeypatch.setenv(inc.WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(FileNotFoundError, match=inc.WEIGHTS_ENV):
        inc.fid_weights_path()
    real = tmp_path / "w.pth"
    real.write_bytes(b"x")
    monkeypatch.setenv(inc.WEIGHTS_ENV, str(real))
    assert inc.fid_weights_path() == real
    with pytest.raises(FileNotFoundError, match="other.pth"):
        inc.fid_weights_path(tmp_path / "other.pth")


class _FakeResponse(io.BytesIO):
    def __init__(self, payload: bytes):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def test_download_checks_hash_and_renames(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LEBM_JAX_CACHE", str(tmp_path))
    monkeypatch.delenv(inc.WEIGHTS_ENV, raising=False)
    payload = b"pretend weights" * 1000
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, *a, **k: _FakeResponse(payload))
    # the default destination's name demands SHA-256 prefix 6726825d, which this payload does not have
    with pytest.raises(ValueError, match="6726825d"):
        inc.fid_weights_path()
    assert list((tmp_path / "weights").iterdir()) == []
    dest = tmp_path / "weights" / inc.FID_WEIGHTS_FILE
    full = hashlib.sha256(payload).hexdigest()
    assert inc.download_fid_weights(dest, sha256=full) == dest
    assert dest.read_bytes() == payload and "100%" in capsys.readouterr().err
    assert inc.fid_weights_path() == dest  # cached: no second download


# ---------------------------------------------------------------------------------------------- features


def test_features_shape_determinism_and_one_compile(feature_fn):
    x = _images(3, 32, 1, 4)  # grey, two batches of 2 (the last zero-padded)
    a = feature_fn(x)
    assert a.shape == (3, 2048) and a.dtype == np.float32 and np.all(np.isfinite(a))
    assert np.all(a >= 0) and a.std() > 0.01  # means of ReLU outputs, not degenerate
    b = feature_fn(x)
    np.testing.assert_array_equal(a, b)
    assert feature_fn.trace_count == 1
    alone = feature_fn(x[2:])  # image 2 in another batch position, padded differently
    np.testing.assert_allclose(alone[0], a[2], rtol=1e-5, atol=1e-6)
    assert feature_fn(jnp.asarray(x[:2])).shape == (2, 2048) and feature_fn.trace_count == 1
    assert feature_fn(np.zeros((0, 32, 32, 1), np.float32)).shape == (0, 2048)


def test_features_reject_bad_input(feature_fn):
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        feature_fn(np.full((1, 32, 32, 3), 255.0, np.float32))
    with pytest.raises(ValueError, match="C in"):
        feature_fn(np.zeros((1, 32, 32, 4), np.float32))


_SHARDED_SCRIPT = """
import sys, numpy as np, jax
sys.path.insert(0, "tests")
from test_inception import random_state_dict, _images
from lebm_jax.measure import inception as inc
assert len(jax.local_devices()) == 2
fn = inc.make_feature_fn(inc.fid_params_from_state_dict(random_state_dict(0)), batch_size=3)
assert fn.batch_size == 4 and fn.mesh is not None and fn.mesh.size == 2
np.save(sys.argv[1], fn(_images(3, 32, 1, 4)))
"""


def test_sharded_over_two_devices_matches(feature_fn, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    out = tmp_path / "features.npy"
    subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT, str(out)], check=True, env=env,
                   cwd=Path(__file__).parents[1], timeout=600)
    np.testing.assert_allclose(np.load(out), feature_fn(_images(3, 32, 1, 4)), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- pytorch-fid parity


def _relative_errors(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    """(||Δ||_F / ||theirs||_F, max|Δ| / max|theirs|)."""
    diff = np.asarray(ours, np.float64) - np.asarray(theirs, np.float64)
    return float(np.linalg.norm(diff) / np.linalg.norm(theirs)), float(np.abs(diff).max() / np.abs(theirs).max())


@pytest.fixture(scope="module")
def pytorch_fid_net():
    """pytorch-fid's InceptionV3([3], use_fid_inception=True) with random weights, in eval mode, and its inner
    torchvision Inception3 (whose state dict has the layout of the released weight file)."""
    torch = pytest.importorskip("torch")
    pfi = pytest.importorskip("pytorch_fid.inception")
    import torchvision.models.inception as tvi

    captured = []
    original_load, original_fetch = tvi.Inception3.load_state_dict, pfi.load_state_dict_from_url

    def capture(self, state_dict, *args, **kwargs):  # fid_inception_v3 loads the downloaded weights here
        captured.append(self)

    try:
        tvi.Inception3.load_state_dict = capture
        pfi.load_state_dict_from_url = lambda *a, **k: None  # no download
        net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], use_fid_inception=True)
    finally:
        tvi.Inception3.load_state_dict, pfi.load_state_dict_from_url = original_load, original_fetch
    (inception,) = captured
    # random values for every tensor, in torch's own layout; strict loading checks our names and shapes too
    ours = random_state_dict(7)
    theirs = inception.state_dict()
    assert set(theirs) == set(ours), set(theirs) ^ set(ours)
    inception.load_state_dict({k: torch.from_numpy(ours[k]).reshape(theirs[k].shape) for k in theirs}, strict=True)
    net.eval()
    return torch, net, inception


def _torch_features(torch, net, images: np.ndarray) -> np.ndarray:
    u = (torch.from_numpy(images).permute(0, 3, 1, 2) + 1.0) / 2.0  # our [-1, 1] NHWC → pytorch-fid's [0, 1] NCHW
    if u.shape[1] == 1:
        u = u.repeat(1, 3, 1, 1)
    with torch.no_grad():
        return net(u)[0].squeeze(-1).squeeze(-1).numpy()


def _fid(f1: np.ndarray, f2: np.ndarray) -> float:
    try:
        from lebm_jax.measure.metrics import feature_statistics, frechet_distance
    except ImportError:  # metrics module not present: pytorch-fid's own formula
        from pytorch_fid.fid_score import calculate_frechet_distance as frechet_distance

        def feature_statistics(f):
            f = np.asarray(f, np.float64)
            return f.mean(0), np.cov(f, rowvar=False)
    return float(frechet_distance(*feature_statistics(f1), *feature_statistics(f2)))


def test_parity_loader_reads_torch_save_both_formats(pytorch_fid_net, tmp_path):
    torch, _, inception = pytorch_fid_net
    for legacy in (False, True):
        path = tmp_path / f"sd-{legacy}.pth"
        torch.save(inception.state_dict(), path, _use_new_zipfile_serialization=not legacy)
        read = inc.read_torch_file(path)
        for k, v in inception.state_dict().items():
            np.testing.assert_array_equal(read[k], v.numpy())
    for writer in (torch_files.save_zip, torch_files.save_legacy):  # our test writer produces files torch reads
        path = tmp_path / f"ours-{writer.__name__}.pth"
        state = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(3, np.int64)}
        writer(state, path)
        loaded = torch.load(path, weights_only=True)
        np.testing.assert_array_equal(loaded["a"].numpy(), state["a"])
        assert loaded["n"].shape == () and int(loaded["n"]) == 3


def test_parity_resize_and_pool_with_torch(pytorch_fid_net):
    torch = pytorch_fid_net[0]
    import torch.nn.functional as F

    for shape in ((32, 32), (400, 360), (17, 299)):
        x = np.random.default_rng(5).uniform(-1, 1, (2, *shape, 3)).astype(np.float32)
        theirs = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear",
                               align_corners=False).permute(0, 2, 3, 1).numpy()
        ours = np.asarray(inc.resize_bilinear(jnp.asarray(x), 299))
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=4e-7)
    x = np.random.default_rng(6).normal(size=(2, 9, 7, 5)).astype(np.float32)
    theirs = F.avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), 3, stride=1, padding=1, count_include_pad=False)
    np.testing.assert_allclose(np.asarray(inc.avg_pool_3x3_exclude_pad(jnp.asarray(x))),
                               theirs.permute(0, 2, 3, 1).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # pytorch-fid's sqrtm with 16 < 2048 samples
def test_parity_features_and_fid_with_pytorch_fid(pytorch_fid_net, tmp_path):
    torch, net, inception = pytorch_fid_net
    path = tmp_path / "pt_inception-random.pth"
    torch.save(inception.state_dict(), path, _use_new_zipfile_serialization=False)  # the released file's format
    fn = inc.make_feature_fn(inc.load_fid_params(path), batch_size=8)

    rng = np.random.default_rng(8)
    set_a = rng.uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32)
    set_b = np.clip(rng.normal(0.2, 0.4, (16, 32, 32, 3)), -1, 1).astype(np.float32)
    big = rng.uniform(-1, 1, (2, 331, 360, 1)).astype(np.float32)  # downsampling, grey, not square

    ours_a, ours_b, ours_big = fn(set_a), fn(set_b), fn(big)
    theirs_a, theirs_b = _torch_features(torch, net, set_a), _torch_features(torch, net, set_b)
    theirs_big = _torch_features(torch, net, big)
    fro, peak = _relative_errors(np.concatenate([ours_a, ours_b, ours_big]),
                                 np.concatenate([theirs_a, theirs_b, theirs_big]))
    fid_ours, fid_theirs = _fid(ours_a, ours_b), _fid(theirs_a, theirs_b)
    fid_rel = abs(fid_ours - fid_theirs) / fid_theirs
    from pytorch_fid.fid_score import calculate_frechet_distance  # scipy sqrtm, as pytorch-fid reports FID

    def stats(f):
        return f.astype(np.float64).mean(0), np.cov(f.astype(np.float64), rowvar=False)

    fid_pytorch_fid = float(calculate_frechet_distance(*stats(theirs_a), *stats(theirs_b)))
    print(f"\nparity: feature rel. error {fro:.2e} (Frobenius), {peak:.2e} (max); "
          f"FID ours {fid_ours:.6f} vs pytorch-fid features {fid_theirs:.6f}: rel. error {fid_rel:.2e}; "
          f"pytorch-fid's own calculate_frechet_distance on its features {fid_pytorch_fid:.6f}")
    assert fro <= 1e-4 and peak <= 1e-4
    assert fid_rel <= 1e-3
