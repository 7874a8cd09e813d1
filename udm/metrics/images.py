"""Image grids written as PNG files, pixel-exact, without touching pyplot's global state."""
import math
import os
import tempfile
from typing import Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_PAD_VALUE = 1.0  # White lines between tiles, in [0, 1] display units.
_TITLE_HEIGHT_PX = 24


def image_grid(images: np.ndarray, *, ncols: Optional[int] = None, scale: int = 1) -> np.ndarray:
    """Tiles images into one RGB array with a 1-pixel border around every tile.

    Args:
        images: [N, H, W, C] in [-1, 1], C = 1 (grayscale) or 3 (RGB); values outside are clipped.
        ncols: tiles per row; default ceil(sqrt(N)).
        scale: each image pixel becomes a scale x scale block (nearest neighbour).

    Returns:
        float32 [rows * (H + 1) + 1, ncols * (W + 1) + 1, 3] (times `scale`) in [0, 1].
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
        raise ValueError(f"images must be [N, H, W, C] with N >= 1 and C in {{1, 3}}, got {images.shape}")
    num, height, width, _ = images.shape
    ncols = ncols or math.ceil(math.sqrt(num))
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    nrows = math.ceil(num / ncols)
    tiles = np.clip((images + 1.0) / 2.0, 0.0, 1.0)
    tiles = np.broadcast_to(tiles, (num, height, width, 3))
    grid = np.full((nrows * (height + 1) + 1, ncols * (width + 1) + 1, 3), _PAD_VALUE, np.float32)
    for i in range(num):
        row, col = divmod(i, ncols)
        top, left = 1 + row * (height + 1), 1 + col * (width + 1)
        grid[top:top + height, left:left + width] = tiles[i]
    return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)


def save_image_grid(images: np.ndarray, path: str, *, ncols: Optional[int] = None, title: Optional[str] = None,
                    scale: Optional[int] = None) -> str:
    """Writes images as a PNG grid, atomically (temp file then os.replace).

    The grid is placed with `figimage`, so the PNG's pixels are exactly `image_grid(...)` (no
    resampling); a title adds a white band of 24 pixels above it.

    Args:
        images: [N, H, W, C] in [-1, 1], C = 1 (grayscale) or 3 (RGB).
        path: the .png file to write; its folder must exist.
        ncols: tiles per row; default ceil(sqrt(N)).
        title: optional text above the grid.
        scale: pixel upscaling; default makes each tile about 64 pixels across.

    Returns:
        path.
    """
    images = np.asarray(images)
    if scale is None:
        scale = max(1, 64 // max(images.shape[1:3])) if images.ndim == 4 else 1
    grid = image_grid(images, ncols=ncols, scale=scale)
    dpi = 100
    title_px = _TITLE_HEIGHT_PX if title else 0
    fig = Figure(figsize=(grid.shape[1] / dpi, (grid.shape[0] + title_px) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    # figimage's offsets count from the bottom-left corner, so the grid sits at the bottom.
    fig.figimage(grid, xo=0, yo=0, origin="upper")
    if title:
        fig.text(0.5, 1.0 - 0.5 * title_px / (grid.shape[0] + title_px), title, ha="center", va="center",
                 fontsize=10)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(suffix=".png.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    return path
