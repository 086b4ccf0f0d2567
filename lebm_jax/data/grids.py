"""Image grids: arrays in [-1, 1] to a tiled uint8 image and a PNG file."""

from __future__ import annotations

import math
import os

import numpy as np


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
    from PIL import Image

    grid = tile(images, num_cols)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path
