"""Image values and image files: the one uint8 ↔ [−1, 1] conversion, and grids of images as PNG.

The models work on float32 images in [−1, 1] (the generator's tanh range); data sets and files hold
uint8 in [0, 255]. `to_float` (x/127.5 − 1) and `to_uint8` are the only conversions between the two.
"""

from __future__ import annotations

import math
import os

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
