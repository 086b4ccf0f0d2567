"""The FID Inception-v3 network in Flax: images in [-1, 1] → 2048-d pool3 features (docs/design.md §6).

The network is pytorch-fid's `InceptionV3(output_blocks=[3], use_fid_inception=True)`: torchvision's Inception-v3
trunk up to Mixed_7c with the TF-graph quirks of the 2015-12-05 FID model (docs/design.md §6):

- every conv is BasicConv2d: conv without bias, BatchNorm (eps 1e-3, running statistics), ReLU;
- Mixed_5b-d (A), Mixed_6b-e (C) and Mixed_7b (E_1) average-pool their pool branch 3×3, stride 1, pad 1 **without**
  counting the padding (count_include_pad=False); Mixed_7c (E_2) max-pools it instead;
- the stem max-pools 3×3 stride 2 without padding (ceil_mode False), as do Mixed_6a (B) and Mixed_7a (D);
- features are the mean over the final 8×8 map, (B, 2048).

Input convention. Our images x are NHWC in [-1, 1]; pytorch-fid takes NCHW u in [0, 1] and computes
`2 · bilinear_resize(u, 299) − 1`. Resizing is linear with weights summing to one, so that equals
`bilinear_resize(x, 299)` for u = (x + 1) / 2, which is what `preprocess` does (grey images are repeated to three
channels first). The resize is torch's `F.interpolate(mode='bilinear', align_corners=False)`: half-pixel centres,
two taps per axis, no antialiasing when downsampling (see `resize_bilinear`).

Intermediate maps (e.g. Mixed_7c, (B, 8, 8, 2048) at 299) are available through flax's
`model.apply(params, x, capture_intermediates=True, mutable=["intermediates"])`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

INPUT_SIZE = 299
FEATURE_DIM = 2048
BATCH_NORM_EPS = 1e-3

DEFAULT_PRECISION = jax.lax.Precision.HIGHEST  # full float32 convs on GPU/TPU too (no TF32 / bf16 passes)


class FrozenBatchNorm(nn.Module):
    """Inference BatchNorm y = (x − mean) / √(var + eps) · scale + bias, running statistics held as parameters.

    Computed as x · a + (bias − mean · a) with a = scale / √(var + eps), as torch's CPU kernel does.
    """

    eps: float = BATCH_NORM_EPS

    @nn.compact
    def __call__(self, x: Array) -> Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        mean = self.param("mean", nn.initializers.zeros, (features,))
        var = self.param("var", nn.initializers.ones, (features,))
        a = scale * jax.lax.rsqrt(var + self.eps)
        return x * a + (bias - mean * a)


class BasicConv2d(nn.Module):
    """Conv (no bias, explicit symmetric padding as torch's `padding=`) → FrozenBatchNorm → ReLU."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: Array) -> Array:
        (ph, pw) = self.padding
        x = nn.Conv(
            self.features,
            self.kernel_size,
            strides=self.strides,
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            precision=self.precision,
            name="conv",
        )(x)
        return nn.relu(FrozenBatchNorm(name="bn")(x))


def avg_pool_3x3_exclude_pad(x: Array) -> Array:
    """3×3 stride-1 average pool with one pixel of padding, dividing by the number of real pixels in each window.

    torch's `F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)` (the TF graph's behaviour):
    a corner output averages 4 pixels, an edge output 6, an interior one 9.
    """
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3(x: Array, stride: int, pad: int) -> Array:
    """3×3 max pool; padding (if any) is −inf, as torch's; output floor((H + 2·pad − 3) / stride) + 1."""
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
    """Mixed_5b-d: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avgpool(exclude pad)→1×1; 224 + pool_features channels."""

    pool_features: int
    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b1 = conv(64, (1, 1), name="branch1x1")(x)
        b5 = conv(48, (1, 1), name="branch5x5_1")(x)
        b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = conv(self.pool_features, (1, 1), name="branch_pool")(avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a (grid reduction 35→17): 3×3/2 | 1×1→3×3→3×3/2 | maxpool 3×3/2; 384 + 96 + in channels."""

    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b3 = conv(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
        bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = conv(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, max_pool_3x3(x, 2, 0)], axis=-1)


# (kernel, padding) of the factorised 7×7 convolutions: a row (1×7) and a column (7×1), each keeping the size
_ROW_7 = {"kernel_size": (1, 7), "padding": (0, 3)}
_COL_7 = {"kernel_size": (7, 1), "padding": (3, 0)}


class InceptionC(nn.Module):
    """Mixed_6b-e: 1×1 | 1×1→1×7→7×1 | 1×1→7×1→1×7→7×1→1×7 | avgpool(exclude pad)→1×1; 768 channels."""

    channels_7x7: int
    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c7 = self.channels_7x7
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b1 = conv(192, (1, 1), name="branch1x1")(x)
        b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = conv(c7, **_ROW_7, name="branch7x7_2")(b7)
        b7 = conv(192, **_COL_7, name="branch7x7_3")(b7)
        bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = conv(c7, **_COL_7, name="branch7x7dbl_2")(bd)
        bd = conv(c7, **_ROW_7, name="branch7x7dbl_3")(bd)
        bd = conv(c7, **_COL_7, name="branch7x7dbl_4")(bd)
        bd = conv(192, **_ROW_7, name="branch7x7dbl_5")(bd)
        bp = conv(192, (1, 1), name="branch_pool")(avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a (grid reduction 17→8): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | maxpool 3×3/2; 320 + 192 + in channels."""

    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b3 = conv(192, (1, 1), name="branch3x3_1")(x)
        b3 = conv(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
        b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = conv(192, **_ROW_7, name="branch7x7x3_2")(b7)
        b7 = conv(192, **_COL_7, name="branch7x7x3_3")(b7)
        b7 = conv(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, max_pool_3x3(x, 2, 0)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b/7c: 1×1 | 1×1→(1×3 ‖ 3×1) | 1×1→3×3→(1×3 ‖ 3×1) | pool→1×1; 320 + 768 + 768 + 192 = 2048 channels.

    `pool` is "avg" (exclude pad) for Mixed_7b (FIDInceptionE_1) and "max" for Mixed_7c (FIDInceptionE_2).
    """

    pool: str
    precision: Any = DEFAULT_PRECISION

    def __post_init__(self) -> None:
        if self.pool not in ("avg", "max"):
            raise ValueError(f"pool={self.pool!r} must be 'avg' or 'max'")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        conv = functools.partial(BasicConv2d, precision=self.precision)
        row, col = {"kernel_size": (1, 3), "padding": (0, 1)}, {"kernel_size": (3, 1), "padding": (1, 0)}
        b1 = conv(320, (1, 1), name="branch1x1")(x)
        b3 = conv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([conv(384, **row, name="branch3x3_2a")(b3), conv(384, **col, name="branch3x3_2b")(b3)],
                             axis=-1)
        bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [conv(384, **row, name="branch3x3dbl_3a")(bd), conv(384, **col, name="branch3x3dbl_3b")(bd)], axis=-1
        )
        pooled = avg_pool_3x3_exclude_pad(x) if self.pool == "avg" else max_pool_3x3(x, 1, 1)
        bp = conv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's align_corners=False source taps for one axis: s = max((i + ½) · r − ½, 0) with r = n_in / n_out,
    i0 = ⌊s⌋, i1 = min(i0 + 1, n_in − 1), λ = s − i0; output i is (1 − λ) · x[i0] + λ · x[i1].

    Rounded as torch's float kernel: r in float32, then s from one fused multiply-add (r · (i + ½) − ½ rounded once
    to float32), λ in float32. These taps reproduce F.interpolate's weights exactly on x86 builds of torch.
    """
    ratio = np.float64(np.float32(n_in) / np.float32(n_out))
    s = (ratio * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)  # product exact in float64
    s = np.maximum(s, np.float32(0))
    i0 = np.minimum(np.floor(s).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = np.clip(s - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, i1, lam


def resize_bilinear(images: Array, size: int) -> Array:
    """(B, H, W, C) → (B, size, size, C) as torch's F.interpolate(mode='bilinear', align_corners=False).

    Two taps per axis from `bilinear_taps`, for up- and downsampling alike (no antialiasing filter), applied along
    W and then H, which is torch's association h0λ·(w0λ·x00 + w1λ·x01) + h1λ·(w0λ·x10 + w1λ·x11).
    `jax.image.resize(..., "bilinear", antialias=False)` computes the same map up to float32 rounding (a few
    1e-6 here); with its default antialias=True it low-pass filters when downsampling, which torch does not.
    """
    _, h, w, _ = images.shape
    if (h, w) == (size, size):
        return images  # torch's map is the identity here: s = i
    j0, j1, mu = bilinear_taps(w, size)
    x = images[:, :, j0, :] * (1 - mu)[:, None] + images[:, :, j1, :] * mu[:, None]  # (B, H, size, C)
    i0, i1, lam = bilinear_taps(h, size)
    return x[:, i0] * (1 - lam)[:, None, None] + x[:, i1] * lam[:, None, None]  # (B, size, size, C)


def preprocess(images: Array) -> Array:
    """Images (B, H, W, C ∈ {1, 3}) in [-1, 1] → Inception input (B, 299, 299, 3) float32 in [-1, 1].

    Equals pytorch-fid's `2 · interpolate(u, 299, bilinear) − 1` for its input u = (x + 1) / 2. The range is
    not checked here (this runs traced, inside jit): [0, 1] or [0, 255] input gives wrong features silently.
    Callers with images from outside go through `InceptionFeatures`, which checks it on the host
    (`lebm_jax.data.images.as_model_images`).
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (B, H, W, C) with C in (1, 3), got shape {images.shape}")
    x = resize_bilinear(jnp.asarray(images, jnp.float32), INPUT_SIZE)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    return x


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3: images (B, H, W, C) in [-1, 1] → pool3 features (B, 2048) float32.

    At 299×299: Conv2d_1a (149, 32) → 2a (147, 32) → 2b (147, 64) → maxpool (73) → 3b (73, 80) → 4a (71, 192)
    → maxpool (35) → Mixed_5b-d (35, 256/288/288) → 6a (17, 768) → 6b-e (17, 768) → 7a (8, 1280) → 7b, 7c (8, 2048)
    → mean over the 8×8 map. Parameter names follow the torch state dict (`Mixed_5b/branch1x1/conv/kernel` ↔
    `Mixed_5b.branch1x1.conv.weight`).
    """

    precision: Any = DEFAULT_PRECISION

    @nn.compact
    def __call__(self, images: Array) -> Array:
        p = self.precision
        x = preprocess(images)  # (B, 299, 299, 3)
        x = BasicConv2d(32, (3, 3), strides=(2, 2), precision=p, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), precision=p, name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=(1, 1), precision=p, name="Conv2d_2b_3x3")(x)
        x = max_pool_3x3(x, 2, 0)
        x = BasicConv2d(80, (1, 1), precision=p, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), precision=p, name="Conv2d_4a_3x3")(x)
        x = max_pool_3x3(x, 2, 0)  # (B, 35, 35, 192)
        x = InceptionA(32, precision=p, name="Mixed_5b")(x)
        x = InceptionA(64, precision=p, name="Mixed_5c")(x)
        x = InceptionA(64, precision=p, name="Mixed_5d")(x)
        x = InceptionB(precision=p, name="Mixed_6a")(x)  # (B, 17, 17, 768)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, precision=p, name=name)(x)
        x = InceptionD(precision=p, name="Mixed_7a")(x)  # (B, 8, 8, 1280)
        x = InceptionE("avg", precision=p, name="Mixed_7b")(x)
        x = InceptionE("max", precision=p, name="Mixed_7c")(x)  # (B, 8, 8, 2048)
        return jnp.mean(x, axis=(1, 2))  # adaptive average pool to 1×1

