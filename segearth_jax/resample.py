"""Bilinear resampling as PyTorch does it with `align_corners=False`: point sampling with zero
padding (`grid_sample(padding_mode="zeros")`) and whole-map resizing (`F.interpolate`)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def bilinear_taps(coords: jax.Array, height: int, width: int
                  ) -> list[tuple[jax.Array, jax.Array]]:
    """The four corner taps of bilinear samples of a height x width map, as
    `grid_sample(align_corners=False, padding_mode="zeros")` takes them.

    coords: [..., 2] normalized (x, y), (0, 0) the top-left corner of the map and (1, 1) the
    bottom-right one (pixel centre i at (i + 0.5) / size). Returns the corners (x0, y0),
    (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1) as (index, weight) pairs, each [...]: index into
    the row-major flattened map (clipped into it), weight the bilinear weight, 0 where the corner
    lies outside the map (the zero padding).
    """
    x = coords[..., 0] * width - 0.5
    y = coords[..., 1] * height - 0.5
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
    taps = []
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
        index = jnp.clip(yi, 0, height - 1) * width + jnp.clip(xi, 0, width - 1)
        taps.append((index, jnp.where(inside, w, 0)))
    return taps


def resize_bilinear(x: jax.Array, size: Sequence[int], axes: Sequence[int] = (-2, -1)
                    ) -> jax.Array:
    """`x` resized to `size` along `axes` (default the last two: [..., h, w] -> [..., H, W]) as
    torch `F.interpolate(mode="bilinear", align_corners=False)`: half-pixel centres, edge samples
    clamped, no antialiasing (jax.image.resize's triangle kernel, renormalized at the border,
    gives exactly that). Same dtype as `x`."""
    shape = list(x.shape)
    for axis, n in zip(axes, size, strict=True):
        shape[axis] = n
    return jax.image.resize(x, shape, "bilinear", antialias=False).astype(x.dtype)
