"""Networks of the latent EBM: the prior tilt f_α and the generator g_β.

Sign convention: every tilt here is a log-density tilt, p_α(z) ∝ exp(f_α(z)) π0(z), so higher f_α means more
likely; the energy of Pang et al.'s code is E = -f_α.

Image models (`EnergyMLP`, `ConvGenerator`) follow the official code of Pang et al. (2020). The linear-Gaussian
pair (`QuadraticTilt`, `LinearGenerator`) has closed-form priors, posteriors and evidence (docs/design.md §4) and is
what the verification tests plug into the same samplers and objectives.

All modules are used through pure `init` / `apply`; images are NHWC in [-1, 1].
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lebm_jax.core.backend import up_conv_methods

Array = jax.Array

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": functools.partial(nn.gelu, approximate=False),  # exact erf form, as torch.nn.GELU()
    "leaky_relu": functools.partial(nn.leaky_relu, negative_slope=0.2),
    "relu": nn.relu,
    "swish": nn.swish,
    "silu": nn.silu,
    "tanh": jnp.tanh,
    "softplus": nn.softplus,
}

# Default channel multipliers of ConvGenerator's base layer and hidden doubling layers, in units of ngf.
_WIDTH_MULTIPLIERS = (8, 4, 2)
_GENERATOR_BASES = (4, 7)


def _require_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name}={value!r} must be >= 1")


def _inner_params(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """Accepts the tree `init` returns ({'params': {...}}) or its inner dict."""
    return params["params"] if "params" in params else params


class EnergyMLP(nn.Module):
    """Prior tilt f_α(z) = MLP(z), one scalar per latent (higher = more likely; energy E = -f_α).

    `depth` hidden layers Dense(hidden) + activation, then Dense(1), squeezed: z (..., nz) -> (...,).
    Pang's SVHN net is the default: Linear(nz→200) GELU Linear(200→200) GELU Linear(200→1).
    """

    hidden: int = 200
    depth: int = 2
    activation: str = "gelu"

    def __post_init__(self) -> None:
        _require_positive("hidden", self.hidden)
        _require_positive("depth", self.depth)
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not one of {tuple(_ACTIVATIONS)}")
        super().__post_init__()

    @nn.compact
    def __call__(self, z: Array) -> Array:
        act = _ACTIVATIONS[self.activation]
        h = z
        for i in range(self.depth):
            h = act(nn.Dense(self.hidden, name=f"hidden_{i}")(h))  # (..., hidden)
        return nn.Dense(1, name="output")(h)[..., 0]


def generator_layout(image_size: int) -> tuple[int, int]:
    """Returns (base, num_doublings) with image_size = base · 2**num_doublings, base ∈ {4, 7}, num_doublings ≥ 1.

    Base 4 gives 8, 16, 32, 64, 128, ...; base 7 gives 14, 28, 56, 112, ... (the two never overlap).
    """
    for base in _GENERATOR_BASES:
        size, doublings = image_size, 0
        while size > base and size % 2 == 0:
            size, doublings = size // 2, doublings + 1
        if size == base and doublings >= 1:
            return base, doublings
    raise ValueError(
        f"image_size={image_size!r} is not supported: it must be 4 * 2**L or 7 * 2**L with L >= 1 "
        "(8, 14, 16, 28, 32, 56, 64, 112, 128, ...)"
    )


def default_widths(ngf: int, num_doublings: int) -> tuple[int, ...]:
    """ngf · (8, 4, 2, 1, 1, ...), first num_doublings entries."""
    multipliers = _WIDTH_MULTIPLIERS + (1,) * max(num_doublings - len(_WIDTH_MULTIPLIERS), 0)
    return tuple(ngf * m for m in multipliers[:num_doublings])


# --- transposed convolutions --------------------------------------------------------------------------
# The generator's layers are flax ConvTranspose layers (same parameters, same results) computed in a way
# XLA's CPU backend runs fast. The base layer (a 1x1 map, k x k kernel, VALID) is a dense product. The
# stride-2 layers avoid the convolution with a dilated input that flax and jax.grad produce: on CPU XLA's
# kernel gradient of it runs 20-70x slower than the forward pass, and the forward pass itself up to 2x
# slower than plain convolutions doing the same work. They are computed over the four output phases as
# plain (undilated) convolutions or one matrix product instead; `backend.up_conv_methods` picks one per shape.
_NHWC = ("NHWC", "HWIO", "NHWC")


def base_conv_transpose(z: Array, kernel: Array) -> Array:
    """ConvTranspose(k, stride 1, VALID) of a 1×1 map: y[n, a, b] = z[n] · K[k−1−a, k−1−b]. z (N, C) -> (N, k, k, O).

    Equal to ``lax.conv_transpose(z[:, None, None], K, (1, 1), "VALID")``, as one matrix product.
    """
    return jnp.einsum("nc,abco->nabo", z, kernel[::-1, ::-1])


def _up_reference(x: Array, kernel: Array) -> Array:
    return lax.conv_transpose(x, kernel, (2, 2), "SAME", dimension_numbers=_NHWC)


# Along each spatial axis y[2i − k + 2] += x[i] K[k] (k = 0..3), i.e. output phase by phase
#     y[2m] = x[m−1] K[0] + x[m] K[2],     y[2m+1] = x[m] K[1] + x[m+1] K[3]     (x outside [0, H) is 0);
# _PHASE_TAPS[r][d] is the tap from x[m−1+r+d] to y[2m+r]. Paired as (y[2p−1], y[2p]), p = 0..H, both
# outputs come from (x[p−1], x[p]) alone:
#     y[2p−1] = x[p−1] K[1] + x[p] K[3],   y[2p] = x[p−1] K[0] + x[p] K[2];
# _PAIR_TAPS[d][q] is the tap from x[p−1+d] to y[2p−1+q].
_PHASE_TAPS = ((0, 2), (1, 3))
_PAIR_TAPS = ((1, 0), (3, 2))
_HWOI = ("NHWC", "HWOI", "NHWC")


def _tap_kernel(kernel: Array, rows, cols) -> Array:
    """(2, 2, C, Q·T·O) kernel of a 2×2 convolution: window offset (d, e) reaches output slot (q, t) through
    K[rows[d][q], cols[e][t]] (slots in (q, t, O) order along the last axis)."""
    c, o = kernel.shape[2:]
    k = jnp.stack([
        jnp.stack([kernel[a, b] for a in rows[d] for b in cols[e]], axis=1)  # (C, Q·T, O)
        for d in (0, 1) for e in (0, 1)
    ])
    return k.reshape(2, 2, c, -1)


def _up_forward_row_phases(x: Array, kernel: Array) -> Array:
    """y as two plain 2×2 convolutions of x, one per row phase r, each with 2·O outputs: the column pair
    (y[2m+r, 2p−1], y[2m+r, 2p]) at (m, p), p = 0..W, then depth-to-space and a crop of the outer columns
    ((W+1)/W times the FLOPs)."""
    n, h, w, _ = x.shape
    o = kernel.shape[-1]
    rows = []
    for r in (0, 1):
        k = _tap_kernel(kernel, [(a,) for a in _PHASE_TAPS[r]], _PAIR_TAPS)  # (2, 2, C, 2·O)
        p = lax.conv_general_dilated(x, k, (1, 1), ((1 - r, r), (1, 1)), dimension_numbers=_NHWC)  # (N, H, W+1, 2·O)
        rows.append(p.reshape(n, h, 2 * w + 2, o)[:, :, 1:-1])
    return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, o)  # (N, H, 2, 2W, O) -> (N, 2H, 2W, O)


def _up_forward_taps(x: Array, kernel: Array) -> Array:
    """y as one matrix product T = X (NHW, C) @ K (C, 16·O), then each output phase a sum of 4 shifted
    slices of T (T is 4× the size of y: cheap for small O)."""
    n, h, w, c = x.shape
    o = kernel.shape[-1]
    t = x.reshape(n * h * w, c) @ jnp.transpose(kernel, (2, 0, 1, 3)).reshape(c, 16 * o)
    t = jnp.pad(t.reshape(n, h, w, 4, 4, o), ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))  # x[m] at m+1

    def phase(r, s):  # (N, H, W, O): y[2m+r, 2l+s]
        return sum(t[:, r + d: r + d + h, s + e: s + e + w, a, b]
                   for d, a in enumerate(_PHASE_TAPS[r]) for e, b in enumerate(_PHASE_TAPS[s]))

    y = jnp.stack([jnp.stack([phase(r, s) for s in (0, 1)], axis=3) for r in (0, 1)], axis=2)  # (N, H, 2, W, 2, O)
    return y.reshape(n, 2 * h, 2 * w, o)


def _up_input_grad_phases(dy: Array, kernel: Array) -> Array:
    """∂x as a sum of four plain 2×2 convolutions, one per phase of ∂y (exact FLOPs): along each axis
    ∂x[i] = ∂y[2i] K[2]ᵀ + ∂y[2i+2] K[0]ᵀ  +  ∂y[2i−1] K[3]ᵀ + ∂y[2i+1] K[1]ᵀ."""
    n, h2, w2, o = dy.shape
    phases = dy.reshape(n, h2 // 2, 2, w2 // 2, 2, o)
    # window offsets (0, 1) read phase 0 at (i, i+1) (padding (0, 1)), phase 1 at (i−1, i) (padding (1, 0))
    taps = [[(a,) for a in reversed(_PHASE_TAPS[r])] for r in (0, 1)]
    dx = 0
    for r in (0, 1):
        for s in (0, 1):
            dx = dx + lax.conv_general_dilated(phases[:, :, r, :, s], _tap_kernel(kernel, taps[r], taps[s]), (1, 1),
                                               ((r, 1 - r), (s, 1 - s)), dimension_numbers=_HWOI)
    return dx


def _up_input_grad_pairs(dy: Array, kernel: Array) -> Array:
    """∂x as one plain 2×2 convolution of E[p] = (∂y[2p−1], ∂y[2p]) (space-to-depth, (N, H+1, W+1, 4·O)),
    exact FLOPs: along each axis ∂x[i] = Σ_{d ∈ {0, 1}} E[i+d] · K[_PAIR_TAPS[1−d]]ᵀ."""
    n, h2, w2, o = dy.shape
    h, w = h2 // 2, w2 // 2
    e = jnp.pad(dy, ((0, 0), (1, 1), (1, 1), (0, 0)))
    e = e.reshape(n, h + 1, 2, w + 1, 2, o).transpose(0, 1, 3, 2, 4, 5).reshape(n, h + 1, w + 1, 4 * o)
    k = _tap_kernel(kernel, _PAIR_TAPS[::-1], _PAIR_TAPS[::-1])  # (2, 2, C, 4·O)
    return lax.conv_general_dilated(e, k, (1, 1), "VALID", dimension_numbers=_HWOI)


def _up_input_grad_xla(dy: Array, kernel: Array) -> Array:
    """∂x as XLA computes it for lax.conv_transpose, a 4×4 convolution with stride 2:
    along each axis ∂x[i] = Σ_u ∂y[2i+u−1] K[3−u]ᵀ."""
    return lax.conv_general_dilated(dy, kernel[::-1, ::-1], (2, 2), ((1, 1), (1, 1)), dimension_numbers=_HWOI)


_UP_FORWARD = {"xla": _up_reference, "row_phases": _up_forward_row_phases, "taps": _up_forward_taps}
_UP_INPUT_GRAD = {"xla": _up_input_grad_xla, "pairs": _up_input_grad_pairs, "phases": _up_input_grad_phases}


def _cotangent_like(value: Array, primal: Array) -> Array:
    """`value` given `primal`'s type over shard_map's manual mesh axes (elsewhere a no-op), as a custom_vjp's
    cotangent must be: summed over the axes only `value` varies over (as the transpose of JAX's implicit
    broadcast of `primal` would), cast to vary over those only `primal` varies over."""
    have = jax.typeof(value).manual_axis_type.varying
    want = jax.typeof(primal).manual_axis_type.varying
    if have - want:
        value = lax.psum(value, tuple(sorted(have - want)))
    if want - have:
        value = lax.pcast(value, tuple(sorted(want - have)), to="varying")
    return value


def _up_forward(x: Array, kernel: Array) -> Array:
    return _UP_FORWARD[up_conv_methods(x.shape, kernel.shape)[0]](x, kernel)


@jax.custom_vjp
def up_conv_transpose(x: Array, kernel: Array) -> Array:
    """ConvTranspose(k4, stride 2, SAME) (= PyTorch's ConvTranspose2d(k4, s2, p1)): (N, H, W, C) -> (N, 2H, 2W, O).

    y[2i − k + 2] += x[i] K[k] along each spatial axis: ``lax.conv_transpose(x, K, (2, 2), "SAME")`` up to float
    rounding. The forward pass and the input gradient are plain convolutions or a matrix product over the
    output phases (`backend.up_conv_methods`); the kernel gradient ∂K[kh, kw] = Σ_{n,i,j} x[n,i,j]ᵀ ∂y[n, 2i−kh+2, 2j−kw+2]
    is one matrix product over strided slices of ∂y.
    """
    return _up_forward(x, kernel)


def _up_fwd(x, kernel):
    return _up_forward(x, kernel), (x, kernel)


def _up_bwd(residuals, dy):
    x, kernel = residuals
    _, h, w, c = x.shape
    kh_size, kw_size = kernel.shape[:2]
    dx = _UP_INPUT_GRAD[up_conv_methods(x.shape, kernel.shape)[1]](dy, kernel)
    # output index 2i − k + 2 runs over [−1, 2H + 1]; pad so that index o sits at o + 1
    dy_pad = jnp.pad(dy, ((0, 0), (1, 2), (1, 2), (0, 0)))
    taps = [
        dy_pad[:, 3 - a: 3 - a + 2 * h: 2, 3 - b: 3 - b + 2 * w: 2, :]  # (N, H, W, O) at offsets (a, b)
        for a in range(kh_size)
        for b in range(kw_size)
    ]
    dk = jnp.einsum("nhwc,nhwko->kco", x, jnp.stack(taps, axis=3))  # (16, C, O)
    dk = dk.reshape(kernel.shape).astype(kernel.dtype)
    return _cotangent_like(dx.astype(x.dtype), x), _cotangent_like(dk, kernel)


up_conv_transpose.defvjp(_up_fwd, _up_bwd)


class _ConvTranspose(nn.Module):
    """A flax ``nn.ConvTranspose`` twin (same parameter names, shapes and initialisation) for the two
    shapes the generator uses: ``"base"`` (1×1 map, k×k, VALID) and ``"up"`` (k4, stride 2, SAME).

    Parameters are float32; the product runs in ``dtype`` (input and kernel cast to it) and its result,
    plus the bias, is float32.
    """

    features: int
    kernel_size: int
    kind: str  # "base" | "up"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_features = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (self.kernel_size, self.kernel_size, in_features, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if self.kind == "base":
            y = base_conv_transpose(x, kernel)
        else:
            y = up_conv_transpose(x, kernel)
        return y.astype(jnp.float32) + bias


class ConvGenerator(nn.Module):
    """Generator g_β(z): transposed convolutions from z (N, nz) to images (N, image_size, image_size, channels).

    image_size = base · 2**L (see `generator_layout`). z is read as a 1×1 map; ConvT(k=base, stride 1, VALID)
    makes a base×base map, then L layers ConvT(k4, stride 2, SAME) each double it; LeakyReLU(negative_slope)
    after every layer but the last, tanh at the end, no normalisation, biases on. The channel counts of the
    base layer and the L-1 hidden doubling layers are `widths` (default: the first L of ngf · (8, 4, 2, 1, 1, ...)),
    so 32×32 with ngf 64 is Pang's SVHN net: nz → 512 (4×4) → 256 (8×8) → 128 (16×16) → channels (32×32).

    ``dtype`` is the type the convolutions compute in: float32 (default), or bfloat16 for faster matrix units on
    GPU/TPU. Parameters, activations between layers and the output stay float32 either way.

    'SAME' for k4 s2 pads the dilated input by 2 on each side, exactly as PyTorch's ConvTranspose2d(k4, s2, p1);
    a flax kernel K (kh, kw, in, out) equals the PyTorch weight W (in, out, kh, kw) with
    W[c, o, a, b] = K[kh-1-a, kw-1-b, c, o] (spatially flipped).
    """

    image_size: int
    channels: int
    ngf: int = 64
    widths: tuple[int, ...] | None = None
    negative_slope: float = 0.2
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        _, num_doublings = generator_layout(self.image_size)
        if self.channels not in (1, 3):
            raise ValueError(f"channels={self.channels!r} must be 1 or 3")
        if jnp.dtype(self.dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
            raise ValueError(f"dtype={self.dtype!r} must be float32 or bfloat16")
        _require_positive("ngf", self.ngf)
        if self.widths is not None:
            self.widths = tuple(self.widths)  # a list (e.g. from a config) would make the module unhashable
            if len(self.widths) != num_doublings:
                raise ValueError(
                    f"widths={self.widths!r} must have {num_doublings} entries for "
                    f"image_size={self.image_size} (the base layer and each hidden doubling layer)"
                )
            if any(w < 1 for w in self.widths):
                raise ValueError(f"widths={self.widths!r} must all be >= 1")
        super().__post_init__()

    @nn.compact
    def __call__(self, z: Array) -> Array:
        if z.ndim != 2:
            raise ValueError(f"z must have shape (N, nz), got z.shape={z.shape}")
        base, num_doublings = generator_layout(self.image_size)
        widths = self.widths if self.widths is not None else default_widths(self.ngf, num_doublings)
        x = _ConvTranspose(widths[0], base, "base", self.dtype, name="base")(z)  # (N, base, base, widths[0])
        for i, features in enumerate(widths[1:] + (self.channels,)):
            x = nn.leaky_relu(x, self.negative_slope)
            x = _ConvTranspose(features, 4, "up", self.dtype, name=f"up_{i}")(x)
        return jnp.tanh(x)  # (N, image_size, image_size, channels)


class QuadraticTilt(nn.Module):
    """Exactly solvable tilt f(z) = bᵀz − ½ zᵀAz, A = C Cᵀ (PSD by construction; C need not be triangular).

    Params `b` (nz,) ~ N(0, init_scale²) and `chol` = C (nz, nz) ~ init_scale · N(0, 1). z (..., nz) -> (...,).
    With π0 = N(0, σ0² I) the prior is N(S0 b, S0), S0 = (I/σ0² + A)⁻¹.
    """

    latent_dim: int
    init_scale: float = 0.3

    def __post_init__(self) -> None:
        _require_positive("latent_dim", self.latent_dim)
        super().__post_init__()

    @nn.compact
    def __call__(self, z: Array) -> Array:
        if z.shape[-1] != self.latent_dim:
            raise ValueError(f"z.shape[-1]={z.shape[-1]} must equal latent_dim={self.latent_dim}")
        init = nn.initializers.normal(stddev=self.init_scale)
        b = self.param("b", init, (self.latent_dim,))
        chol = self.param("chol", init, (self.latent_dim, self.latent_dim))
        u = z @ chol  # (..., nz) = Cᵀz, so zᵀAz = |u|²
        return z @ b - 0.5 * jnp.sum(u * u, axis=-1)


def quadratic_tilt_matrices(params: Mapping[str, Any]) -> tuple[Array, Array]:
    """(b, A = C Cᵀ) from QuadraticTilt params, given as {'params': {...}} or the inner dict."""
    p = _inner_params(params)
    chol = p["chol"]
    return p["b"], chol @ chol.T


class LinearGenerator(nn.Module):
    """Linear generator g(z) = W z + c: z (..., nz) -> (..., data_dim), any leading dims.

    Params `W` (data_dim, nz) and `c` (data_dim,), both ~ init_scale · N(0, 1); nz is read from the input at init.
    """

    data_dim: int
    init_scale: float = 0.5

    def __post_init__(self) -> None:
        _require_positive("data_dim", self.data_dim)
        super().__post_init__()

    @nn.compact
    def __call__(self, z: Array) -> Array:
        init = nn.initializers.normal(stddev=self.init_scale)
        w = self.param("W", init, (self.data_dim, z.shape[-1]))
        c = self.param("c", init, (self.data_dim,))
        return z @ w.T + c


def linear_generator_matrices(params: Mapping[str, Any]) -> tuple[Array, Array]:
    """(W, c) from LinearGenerator params, given as {'params': {...}} or the inner dict."""
    p = _inner_params(params)
    return p["W"], p["c"]
