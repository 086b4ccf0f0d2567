"""Tests for lebm_jax.networks: shapes, exact values against numpy, parameter counts, errors, tracing."""

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from lebm_jax.core import backend, networks
from lebm_jax.core.networks import (
    ConvGenerator,
    EnergyMLP,
    LinearGenerator,
    QuadraticTilt,
    base_conv_transpose,
    generator_layout,
    linear_generator_matrices,
    quadratic_tilt_matrices,
    up_conv_transpose,
)

NZ = 6


def _count(params) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))


# ---------------------------------------------------------------- EnergyMLP


@pytest.mark.parametrize("lead", [(), (5,), (3, 5)])
def test_energy_mlp_shape(lead):
    model = EnergyMLP(hidden=8)
    z = jax.random.normal(jax.random.key(0), lead + (NZ,))
    params = model.init(jax.random.key(1), z)
    out = model.apply(params, z)
    assert out.shape == lead
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("activation", ["gelu", "leaky_relu", "relu", "swish", "silu", "tanh", "softplus"])
def test_energy_mlp_activations_run(activation):
    model = EnergyMLP(hidden=8, depth=3, activation=activation)
    z = jnp.ones((4, NZ))
    params = model.init(jax.random.key(0), z)
    assert model.apply(params, z).shape == (4,)
    assert set(params["params"]) == {"hidden_0", "hidden_1", "hidden_2", "output"}


def test_energy_mlp_gelu_is_exact_erf_form():
    rng = np.random.default_rng(0)
    hidden = 7
    w1 = rng.normal(size=(NZ, hidden)).astype(np.float32)
    b1 = rng.normal(size=hidden).astype(np.float32)
    w2 = rng.normal(size=(hidden, 1)).astype(np.float32)
    b2 = rng.normal(size=1).astype(np.float32)
    z = (2.0 * rng.normal(size=(10, NZ))).astype(np.float32)
    params = {"params": {"hidden_0": {"kernel": w1, "bias": b1}, "output": {"kernel": w2, "bias": b2}}}

    out = np.asarray(EnergyMLP(hidden=hidden, depth=1).apply(params, z))

    h = z.astype(np.float64) @ w1 + b1
    exact = (0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))) @ w2[:, 0] + b2[0]
    tanh_form = (0.5 * h * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (h + 0.044715 * h**3)))) @ w2[:, 0] + b2[0]
    np.testing.assert_allclose(out, exact, rtol=1e-5, atol=1e-5)
    # The tolerance above is tight enough to tell the two forms apart.
    assert np.max(np.abs(exact - tanh_form)) > 1e-3


def test_energy_mlp_svhn_parameter_count():
    # Linear(100→200) + Linear(200→200) + Linear(200→1), with biases.
    params = jax.eval_shape(EnergyMLP().init, jax.random.key(0), jnp.zeros((1, 100)))
    assert _count(params) == 100 * 200 + 200 + 200 * 200 + 200 + 200 + 1


@pytest.mark.parametrize(
    "kwargs, field, value",
    [
        ({"activation": "foo"}, "activation", "'foo'"),
        ({"depth": 0}, "depth", "0"),
        ({"hidden": 0}, "hidden", "0"),
        ({"hidden": -3}, "hidden", "-3"),
    ],
)
def test_energy_mlp_bad_fields(kwargs, field, value):
    with pytest.raises(ValueError, match=re.escape(f"{field}={value}")):
        EnergyMLP(**kwargs)


def test_energy_mlp_unknown_activation_lists_choices():
    with pytest.raises(ValueError, match=r"is not one of \('gelu', .*'softplus'\)"):
        EnergyMLP(activation="foo")


# ---------------------------------------------------------------- ConvGenerator


@pytest.mark.parametrize(
    "image_size, layout",
    [(8, (4, 1)), (14, (7, 1)), (16, (4, 2)), (28, (7, 2)), (32, (4, 3)), (56, (7, 3)), (64, (4, 4)), (128, (4, 5))],
)
def test_generator_layout(image_size, layout):
    assert generator_layout(image_size) == layout


@pytest.mark.parametrize("image_size", [0, 4, 7, 12, 24, 48, 100, -8])
def test_generator_layout_rejects(image_size):
    with pytest.raises(ValueError, match=re.escape(f"image_size={image_size}") + r".*8, 14, 16, 28, 32, 56, 64"):
        generator_layout(image_size)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("image_size", [8, 14, 16, 28, 32, 64])
def test_conv_generator_shapes_and_range(image_size, channels):
    model = ConvGenerator(image_size=image_size, channels=channels, ngf=4)
    z = 3.0 * jax.random.normal(jax.random.key(0), (2, NZ))
    params = model.init(jax.random.key(1), z)
    x = model.apply(params, z)
    assert x.shape == (2, image_size, image_size, channels)
    assert np.all(np.isfinite(x))
    assert np.all(np.abs(x) <= 1.0)


def test_conv_generator_svhn_parameter_count():
    # Hand count of the official SVHN generator (ConvTranspose2d: in·out·k·k weights + out biases):
    #   100·512·16 + 512 = 819712;  512·256·16 + 256 = 2097408;
    #   256·128·16 + 128 = 524416;  128·3·16 + 3 = 6147;  total 3447683.
    model = ConvGenerator(image_size=32, channels=3, ngf=64)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 100)))
    assert _count(params) == 3447683
    kernels = {name: layer["kernel"].shape for name, layer in params["params"].items()}
    assert kernels == {
        "base": (4, 4, 100, 512),
        "up_0": (4, 4, 512, 256),
        "up_1": (4, 4, 256, 128),
        "up_2": (4, 4, 128, 3),
    }


def test_conv_generator_celeba_default_widths():
    model = ConvGenerator(image_size=64, channels=3, ngf=64)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 100)))
    outs = [params["params"][n]["kernel"].shape[-1] for n in ("base", "up_0", "up_1", "up_2", "up_3")]
    assert outs == [512, 256, 128, 64, 3]


@pytest.mark.parametrize("widths", [(5, 3), [5, 3]])
def test_conv_generator_custom_widths(widths):
    model = ConvGenerator(image_size=28, channels=1, widths=widths)
    assert model.widths == (5, 3) and hash(model) == hash(ConvGenerator(28, 1, widths=(5, 3)))
    z = jnp.ones((2, NZ))
    params = model.init(jax.random.key(0), z)
    outs = [params["params"][n]["kernel"].shape[-1] for n in ("base", "up_0", "up_1")]
    assert outs == [5, 3, 1]
    assert model.apply(params, z).shape == (2, 28, 28, 1)


def _torch_conv_transpose(x, weight, bias, stride, padding):
    """numpy ConvTranspose2d with PyTorch semantics: x (N, H, W, C), weight (C, O, k, k) -> (N, H', W', O)."""
    n, h, w, _ = x.shape
    _, o, k, _ = weight.shape
    full = np.zeros((n, (h - 1) * stride + k, (w - 1) * stride + k, o))
    for a in range(k):
        for b in range(k):
            contrib = np.einsum("nhwc,co->nhwo", x, weight[:, :, a, b])
            full[:, a : a + (h - 1) * stride + 1 : stride, b : b + (w - 1) * stride + 1 : stride] += contrib
    out = full[:, padding : full.shape[1] - padding, padding : full.shape[2] - padding]
    return out + bias


def test_conv_generator_matches_pytorch_semantics():
    # ConvT(k4, s1, p0) then ConvT(k4, s2, p1), with the flax kernel spatially flipped into PyTorch's layout.
    model = ConvGenerator(image_size=8, channels=3, widths=(5,), negative_slope=0.2)
    z = jax.random.normal(jax.random.key(0), (2, NZ))
    params = model.init(jax.random.key(1), z)
    out = np.asarray(model.apply(params, z))

    def torch_weight(layer):
        kernel = np.asarray(layer["kernel"], np.float64)  # (k, k, in, out)
        return kernel[::-1, ::-1].transpose(2, 3, 0, 1), np.asarray(layer["bias"], np.float64)

    p = params["params"]
    h = _torch_conv_transpose(np.asarray(z, np.float64)[:, None, None, :], *torch_weight(p["base"]), 1, 0)
    h = np.where(h > 0, h, 0.2 * h)
    expected = np.tanh(_torch_conv_transpose(h, *torch_weight(p["up_0"]), 2, 1))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)



class _FlaxConvTransposeGenerator(nn.Module):
    """The generator written with flax's own nn.ConvTranspose: the reference ConvGenerator must equal."""

    image_size: int
    channels: int
    widths: tuple

    @nn.compact
    def __call__(self, z):
        base, _ = generator_layout(self.image_size)
        x = nn.ConvTranspose(self.widths[0], (base, base), padding="VALID", name="base")(z[:, None, None, :])
        for i, features in enumerate(self.widths[1:] + (self.channels,)):
            x = nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME", name=f"up_{i}")(
                nn.leaky_relu(x, 0.2))
        return jnp.tanh(x)


@pytest.mark.parametrize("image_size, widths", [(16, (12, 6)), (28, (10, 5))])
def test_conv_generator_equals_flax_conv_transpose(image_size, widths):
    # Same parameters from the same key, same images, same parameter and latent gradients.
    ours = ConvGenerator(image_size=image_size, channels=3, widths=widths)
    ref = _FlaxConvTransposeGenerator(image_size, 3, widths)
    z = jax.random.normal(jax.random.key(0), (5, NZ))
    params = ours.init(jax.random.key(1), z)
    ref_params = ref.init(jax.random.key(1), z)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(params) == jax.tree.structure(ref_params)
    w = jax.random.normal(jax.random.key(2), (5, image_size, image_size, 3))
    loss = lambda module: lambda p, z: jnp.sum(w * module.apply(p, z))  # noqa: E731
    np.testing.assert_allclose(ours.apply(params, z), ref.apply(params, z), rtol=1e-5, atol=1e-6)
    got = jax.grad(loss(ours), argnums=(0, 1))(params, z)
    want = jax.grad(loss(ref), argnums=(0, 1))(params, z)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(b))))


def test_conv_generator_bfloat16_computes_in_bfloat16_with_float32_parameters():
    # Same float32 parameters; images and gradients within bfloat16 rounding of the float32 generator's, and
    # gradients returned as float32.
    f32 = ConvGenerator(image_size=16, channels=3, widths=(32, 16))
    bf16 = ConvGenerator(image_size=16, channels=3, widths=(32, 16), dtype=jnp.bfloat16)
    z = jax.random.normal(jax.random.key(0), (8, NZ))
    params = f32.init(jax.random.key(1), z)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(bf16.init(jax.random.key(1), z)), strict=True):
        assert a.dtype == b.dtype == jnp.float32
        np.testing.assert_array_equal(a, b)
    want, got = f32.apply(params, z), bf16.apply(params, z)
    assert got.dtype == jnp.float32
    rel = float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))
    assert 1e-4 < rel < 0.02, rel  # bfloat16 really used (0.5 % measured), and close
    # the convolutions' operands are bfloat16 in the program
    jaxpr = str(jax.make_jaxpr(bf16.apply)(params, z))
    assert "bf16[" in jaxpr
    w = jax.random.normal(jax.random.key(2), want.shape)
    loss = lambda module: lambda p, z: jnp.sum(w * module.apply(p, z))  # noqa: E731
    g_want = jax.grad(loss(f32), argnums=(0, 1))(params, z)
    g_got = jax.grad(loss(bf16), argnums=(0, 1))(params, z)
    # Each operand and product is rounded to 2**-9 relative; the bias and kernel gradients sum a few hundred
    # such terms of random sign (w), so their relative error grows to a few percent (5 % measured for the
    # base bias, 0.4 % for the last kernel).
    for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want), strict=True):
        assert a.dtype == jnp.float32
        rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
        assert 1e-6 < rel < 0.1, rel


@pytest.mark.parametrize("shape", [(3, 4, 4, 5), (2, 7, 3, 4), (1, 1, 1, 2)])
def test_up_conv_transpose_gradients_match_autodiff(shape):
    # The hand-written kernel gradient against JAX's transposition of lax.conv_transpose.
    x = jax.random.normal(jax.random.key(0), shape)
    kernel = jax.random.normal(jax.random.key(1), (4, 4, shape[-1], 6))
    dy = jax.random.normal(jax.random.key(2), (shape[0], 2 * shape[1], 2 * shape[2], 6))
    ref = lambda x, k: jax.lax.conv_transpose(x, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
    y, vjp = jax.vjp(up_conv_transpose, x, kernel)
    y_ref, vjp_ref = jax.vjp(ref, x, kernel)
    np.testing.assert_array_equal(y, y_ref)
    for a, b in zip(vjp(dy), vjp_ref(dy)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


_UP_SHAPES = [  # (x shape (N, H, W, C), O): odd and non-square maps, batch 1, one input or output channel
    ((2, 3, 5, 4), 7),
    ((1, 1, 1, 1), 1),
    ((1, 4, 4, 1), 3),
    ((3, 5, 2, 6), 1),
    ((2, 4, 3, 3), 64),
]


def _up_case(shape, out_channels):
    x = jax.random.normal(jax.random.key(0), shape)
    kernel = jax.random.normal(jax.random.key(1), (4, 4, shape[-1], out_channels))
    dy = jax.random.normal(jax.random.key(2), (shape[0], 2 * shape[1], 2 * shape[2], out_channels))
    ref = lambda x, k: jax.lax.conv_transpose(x, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
    y_ref, vjp_ref = jax.vjp(ref, x, kernel)
    return x, kernel, dy, y_ref, vjp_ref(dy)


def _assert_close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))


@pytest.mark.parametrize("method", sorted(networks._UP_FORWARD))
@pytest.mark.parametrize("shape, out_channels", _UP_SHAPES)
def test_up_conv_transpose_forward_methods(method, shape, out_channels):
    # Every way of computing the forward pass, whichever shapes `backend.up_conv_methods` gives it.
    x, kernel, _, y_ref, _ = _up_case(shape, out_channels)
    y = jax.jit(networks._UP_FORWARD[method])(x, kernel)
    assert y.shape == y_ref.shape
    _assert_close(y, y_ref)


@pytest.mark.parametrize("method", sorted(networks._UP_INPUT_GRAD))
@pytest.mark.parametrize("shape, out_channels", _UP_SHAPES)
def test_up_conv_transpose_input_gradient_methods(method, shape, out_channels):
    x, kernel, dy, _, (dx_ref, _) = _up_case(shape, out_channels)
    dx = jax.jit(networks._UP_INPUT_GRAD[method])(dy, kernel)
    assert dx.shape == x.shape
    _assert_close(dx, dx_ref)


@pytest.mark.parametrize("shape, out_channels", _UP_SHAPES)
def test_up_conv_transpose_value_and_gradients(shape, out_channels):
    # The methods `backend.up_conv_methods` picks for each shape (all of them over these shapes), value and both gradients.
    x, kernel, dy, y_ref, grads_ref = _up_case(shape, out_channels)
    y, vjp = jax.vjp(jax.jit(up_conv_transpose), x, kernel)
    _assert_close(y, y_ref)
    for a, b in zip(vjp(dy), grads_ref, strict=True):
        _assert_close(a, b)


def test_up_conv_transpose_methods_cover_every_implementation():
    picked = [backend.up_conv_methods(shape, (4, 4, shape[-1], o)) for shape, o in _UP_SHAPES]
    assert {f for f, _ in picked} == set(networks._UP_FORWARD) - {"xla"}
    assert {g for _, g in picked} == set(networks._UP_INPUT_GRAD)


def test_up_conv_transpose_under_vmap():
    # Tempered chains vmap the generator over rungs: batched value and input gradient equal the loop.
    x = jax.random.normal(jax.random.key(0), (3, 2, 4, 4, 5))
    kernel = jax.random.normal(jax.random.key(1), (4, 4, 5, 64))
    w = jax.random.normal(jax.random.key(2), (3, 2, 8, 8, 64))
    loss = lambda x, w: jnp.sum(w * jnp.tanh(up_conv_transpose(x, kernel)))  # noqa: E731
    got = jax.vmap(jax.value_and_grad(loss))(x, w)
    for t in range(3):
        want = jax.value_and_grad(loss)(x[t], w[t])
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a[t], b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("out_channels", [1, 3, 64])
def test_up_conv_transpose_inside_shard_map(out_channels):
    # Inside shard_map (as in training) each cotangent must have its primal's type, also when ∂y does not
    # vary over the mesh axis while x does: a loss linear in y with replicated weights.
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = jax.make_mesh((1,), ("data",))
    x = jax.random.normal(jax.random.key(0), (2, 4, 3, 5))
    kernel = jax.random.normal(jax.random.key(1), (4, 4, 5, out_channels))
    w = jax.random.normal(jax.random.key(2), (8, 6, out_channels))
    loss = lambda x, k: jnp.sum(w * up_conv_transpose(x, k))  # noqa: E731

    local = jax.grad(loss, argnums=(0, 1))  # ∂K comes back summed over devices, as for any replicated input
    sharded = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P()), out_specs=(P("data"), P())))
    got = sharded(jax.device_put(x, NamedSharding(mesh, P("data"))), jax.device_put(kernel, NamedSharding(mesh, P())))
    for a, b in zip(got, jax.grad(loss, argnums=(0, 1))(x, kernel), strict=True):
        _assert_close(a, b)


def test_base_conv_transpose_is_the_valid_transposed_convolution():
    z = jax.random.normal(jax.random.key(0), (3, 5))
    kernel = jax.random.normal(jax.random.key(1), (7, 7, 5, 4))
    ref = jax.lax.conv_transpose(z[:, None, None, :], kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(base_conv_transpose(z, kernel), ref, rtol=1e-5, atol=1e-5)

@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"image_size": 12, "channels": 3}, "image_size=12"),
        ({"image_size": 4, "channels": 3}, "image_size=4"),
        ({"image_size": 32, "channels": 2}, "channels=2"),
        ({"image_size": 32, "channels": 4}, "channels=4"),
        ({"image_size": 32, "channels": 3, "widths": (8, 4)}, "widths=(8, 4)"),
        ({"image_size": 32, "channels": 3, "widths": (8, 4, 2, 1)}, "widths=(8, 4, 2, 1)"),
        ({"image_size": 32, "channels": 3, "ngf": 0}, "ngf=0"),
        ({"image_size": 32, "channels": 3, "dtype": jnp.float16}, "dtype="),
    ],
)
def test_conv_generator_bad_fields(kwargs, pattern):
    with pytest.raises(ValueError, match=re.escape(pattern)):
        ConvGenerator(**kwargs)


def test_conv_generator_rejects_non_2d_input():
    model = ConvGenerator(image_size=8, channels=1, ngf=2)
    params = model.init(jax.random.key(0), jnp.zeros((1, NZ)))
    with pytest.raises(ValueError, match=re.escape("z.shape=(3, 1, 6)")):
        model.apply(params, jnp.zeros((3, 1, NZ)))


# ---------------------------------------------------------------- QuadraticTilt / LinearGenerator


@pytest.mark.parametrize("lead", [(), (4,), (2, 3)])
def test_quadratic_tilt_matches_numpy(lead):
    model = QuadraticTilt(latent_dim=NZ)
    z = jax.random.normal(jax.random.key(0), lead + (NZ,))
    params = model.init(jax.random.key(1), z)
    out = np.asarray(model.apply(params, z))

    b = np.asarray(params["params"]["b"], np.float64)
    chol = np.asarray(params["params"]["chol"], np.float64)
    zn = np.asarray(z, np.float64).reshape(-1, NZ)
    expected = np.array([zi @ b - 0.5 * zi @ (chol @ chol.T) @ zi for zi in zn]).reshape(lead)
    assert out.shape == lead
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_quadratic_tilt_matrices():
    model = QuadraticTilt(latent_dim=NZ, init_scale=0.3)
    params = model.init(jax.random.key(2), jnp.zeros((NZ,)))
    assert params["params"]["b"].shape == (NZ,)
    assert params["params"]["chol"].shape == (NZ, NZ)
    b, a = quadratic_tilt_matrices(params)
    b_inner, a_inner = quadratic_tilt_matrices(params["params"])
    chol = np.asarray(params["params"]["chol"])
    np.testing.assert_array_equal(b, params["params"]["b"])
    np.testing.assert_array_equal(b_inner, b)
    np.testing.assert_array_equal(a_inner, a)
    np.testing.assert_allclose(a, chol @ chol.T, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a, np.asarray(a).T, atol=1e-7)
    assert np.min(np.linalg.eigvalsh(np.asarray(a, np.float64))) > -1e-6


def test_quadratic_tilt_bad_input():
    with pytest.raises(ValueError, match=re.escape("latent_dim=0")):
        QuadraticTilt(latent_dim=0)
    model = QuadraticTilt(latent_dim=NZ)
    with pytest.raises(ValueError, match=re.escape("z.shape[-1]=5")):
        model.init(jax.random.key(0), jnp.zeros((2, 5)))


@pytest.mark.parametrize("lead", [(), (4,), (2, 3)])
def test_linear_generator_matches_numpy(lead):
    model = LinearGenerator(data_dim=9)
    z = jax.random.normal(jax.random.key(0), lead + (NZ,))
    params = model.init(jax.random.key(1), z)
    out = np.asarray(model.apply(params, z))

    w, c = (np.asarray(v, np.float64) for v in linear_generator_matrices(params))
    assert w.shape == (9, NZ) and c.shape == (9,)
    expected = np.einsum("dk,...k->...d", w, np.asarray(z, np.float64)) + c
    assert out.shape == lead + (9,)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    w_inner, c_inner = linear_generator_matrices(params["params"])
    np.testing.assert_array_equal(w_inner, params["params"]["W"])
    np.testing.assert_array_equal(c_inner, params["params"]["c"])


def test_linear_generator_bad_field():
    with pytest.raises(ValueError, match=re.escape("data_dim=0")):
        LinearGenerator(data_dim=0)


# ---------------------------------------------------------------- tracing


@pytest.mark.parametrize(
    "model, shape",
    [
        (EnergyMLP(hidden=8), (4, NZ)),
        (ConvGenerator(image_size=16, channels=3, ngf=4), (4, NZ)),
        (QuadraticTilt(latent_dim=NZ), (4, NZ)),
        (LinearGenerator(data_dim=9), (4, NZ)),
    ],
)
def test_jitted_apply_traces_once(model, shape):
    params = model.init(jax.random.key(0), jnp.zeros(shape))
    chex.clear_trace_counter()  # the counter is keyed by code location, shared by the parametrized cases

    @jax.jit
    @chex.assert_max_traces(n=1)
    def apply(params, z):
        return model.apply(params, z)

    first = apply(params, jax.random.normal(jax.random.key(1), shape))
    second = apply(params, jax.random.normal(jax.random.key(2), shape))
    assert not np.allclose(first, second)
