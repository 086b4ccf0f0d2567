"""Image values and image files: the one uint8 ↔ [−1, 1] conversion, and grids of images as PNG.

The models work on float32 images in [−1, 1] (the generator's tanh range); data sets and files hold
uint8 in [0, 255]. `to_float` (x/127.5 − 1) and `to_uint8` are the only conversions between the two.
`as_model_images` is the check at every place images enter from outside (`Trained`, the feature
functions): uint8 or [−1, 1] floats in, float32 [−1, 1] out, a ValueError naming the caller otherwise.
"""

from __future__ import annotations

import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


def to_float(images_uint8):
    """uint8 [0, 255] → float32 [−1, 1]: x/127.5 − 1 (0 → −1, 255 → 1 exactly).

    numpy in, numpy out; a JAX array (or a traced one, inside jit) in, a JAX array out.
    """
    xp = jnp if isinstance(images_uint8, jax.Array) else np
    images_uint8 = images_uint8 if xp is jnp else np.asarray(images_uint8)
    if images_uint8.dtype != np.uint8:
        raise ValueError(f"to_float expects uint8 images, got dtype {images_uint8.dtype}")
    return images_uint8.astype(xp.float32) / xp.float32(127.5) - xp.float32(1.0)


EXPECTED_RANGE = "expected uint8 in [0, 255] or float in [-1, 1]"
RANGE_TOLERANCE = 1e-3  # floats may stray this far outside [-1, 1] (rounding); they are clipped back
AMBIGUOUS = ("raise", "warn")


def _describe(x) -> str:
    return f"dtype {x.dtype}, shape {tuple(x.shape)}"


def as_model_images(x, where: str, image_shape: tuple[int, ...] | None = None, *,
                    assume_range: str | None = None, ambiguous: str = "raise"):
    """Images from outside → float32 (N, H, W, C) in [−1, 1], or a ValueError that names ``where``.

    Accepted: uint8 in [0, 255] (converted by `to_float`) or floats in [−1, 1] (any float dtype; values
    up to `RANGE_TOLERANCE` outside are clipped back), of shape (N, H, W, C) with C in (1, 3), and
    (H, W, C) == ``image_shape`` when given. N may be 0. Rejected, with the dtype, shape and the
    min/max found in the message: other dtypes, other ranks or channel counts, NaN or ±inf, floats
    outside [−1, 1] (floats with no negative value and a maximum above 1 are named as [0, 255] images,
    with the conversion to use).

    The ambiguous range. Floats with no negative value (min ≥ −tol) and max ≤ 1 + tol may be [0, 1]
    images or [−1, 1] images without a single pixel below mid-grey. Real [−1, 1] data is almost never
    like that (digits' background is −1; natural images have dark pixels), and [0, 1] floats taken for
    [−1, 1] would silently give wrong numbers, so such a batch is treated as [0, 1]: with
    ``ambiguous="raise"`` (the default) it is a ValueError that says how to convert (2·x − 1, or pass
    uint8); with ``ambiguous="warn"`` it is accepted as [−1, 1] with a warning. A caller that knows the
    floats are [−1, 1] (generator outputs g_β(z), which may be anything in (−1, 1)) passes
    ``assume_range="[-1, 1]"``: the batch is then never rejected for looking like [0, 1], while the
    dtype, shape, finiteness and [−1, 1] checks still apply. Dark [−1, 1] images (all ≤ 0) are never
    ambiguous: a [0, 1] batch has no negative value.

    Host-side: min/max/finiteness are computed eagerly (numpy, or jax.numpy for a jax.Array, which then
    stays on its device); never call this inside jit. numpy in → numpy out; a jax.Array in → a jax.Array out.
    """
    if assume_range not in (None, "[-1, 1]"):
        raise ValueError(f"assume_range={assume_range!r}: must be None or '[-1, 1]'")
    if ambiguous not in AMBIGUOUS:
        raise ValueError(f"ambiguous={ambiguous!r}: must be one of {AMBIGUOUS}")
    xp = jnp if isinstance(x, jax.Array) else np
    x = x if xp is jnp else np.asarray(x)
    is_uint8 = x.dtype == np.uint8
    if not is_uint8 and not np.issubdtype(x.dtype, np.floating):
        hint = " (integer images in [0, 255]: x.astype(np.uint8))" if np.issubdtype(x.dtype, np.integer) else ""
        raise ValueError(f"{where}: images have {_describe(x)}; {EXPECTED_RANGE}{hint}")
    want = "(N, H, W, C) with C in (1, 3)"
    if image_shape is not None:
        image_shape = tuple(int(d) for d in image_shape)
        want += f", here (N, {', '.join(map(str, image_shape))})"
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or (image_shape is not None and tuple(x.shape[1:]) != image_shape):
        hint = ""
        if image_shape is not None and tuple(x.shape) == image_shape:
            hint = "; for one image add the batch axis: x[None]"
        elif x.ndim == 4 and x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):
            hint = "; channels go last (NHWC), not first: x.transpose(0, 2, 3, 1)"
        raise ValueError(f"{where}: images have {_describe(x)} (rank {x.ndim}); expected {want}{hint}")
    if x.size == 0:
        return to_float(x) if is_uint8 else x.astype(xp.float32)
    if is_uint8:
        return to_float(x)
    lo, hi = float(x.min()), float(x.max())  # NaN propagates into both; ±inf shows in one
    found = f"{where}: images ({_describe(x)}) have min {lo:.6g} and max {hi:.6g}"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        nan, inf = int(xp.isnan(x).sum()), int(xp.isinf(x).sum())
        raise ValueError(
            f"{where}: images ({_describe(x)}) contain {nan} NaN and {inf} infinite values; "
            f"{EXPECTED_RANGE}, all finite"
        )
    tol = RANGE_TOLERANCE
    if lo >= -tol and 1 + tol < hi <= 255 + tol:
        raise ValueError(
            f"{found}: they look like [0, 255] images; {EXPECTED_RANGE}. Pass them as uint8 "
            "(x.astype(np.uint8) when they are whole numbers) or convert with x / 127.5 - 1"
        )
    if lo < -1 - tol or hi > 1 + tol:
        raise ValueError(f"{found}, outside [-1, 1]; {EXPECTED_RANGE}")
    if lo >= -tol and assume_range is None:
        message = (
            f"{found} and no negative value: they look like [0, 1] images; {EXPECTED_RANGE}. Convert "
            "[0, 1] images with 2 * x - 1 (or pass uint8); if they are [-1, 1] images with no pixel below "
            "mid-grey, pass assume_range='[-1, 1]'"
        )
        if ambiguous == "raise":
            raise ValueError(message)
        warnings.warn(message + " (taken as [-1, 1] this time)", stacklevel=3)
    x = x if x.dtype == np.float32 else x.astype(xp.float32)
    return xp.clip(x, -1.0, 1.0) if (lo < -1 or hi > 1) else x


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> [0, 255] uint8 (values outside are clipped)."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def tile(images: np.ndarray, num_cols: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, H, W, C) in [-1, 1] -> one (rows·(H+pad)+pad, cols·(W+pad)+pad, C) uint8 grid, white padding."""
    images = to_uint8(images)
    n, h, w, c = images.shape
    cols = num_cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top : top + h, left : left + w] = images[i]
    return grid


def save_grid(images: np.ndarray, path: str, num_cols: int | None = None, scale: int = 1) -> str:
    """Writes the grid of ``images`` (N, H, W, C) in [-1, 1] as a PNG; ``scale`` repeats pixels."""
    grid = tile(images, num_cols)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path
