"""Window layout and blending of a scene: windows of the model's input size (at the model's
scale) overlapping by a fraction, weights 1 in a window's centre falling to EDGE_WEIGHT at its
border, targets keyed by their normalised `<p>` name."""

from __future__ import annotations

import functools
import re

import numpy as np

EDGE_WEIGHT = 0.05  # blend weight at a window's border (1 at its centre)
ABSENT_LOGIT = -20.0  # a window without target t: background for it
_NAMED_SEG = re.compile(r"(?:<p>((?:(?!</?p>).)*?)</p>\s*)?\[SEG\]", re.DOTALL)


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Offsets of windows of `window` covering [0, size) with step `stride`, the last one flush
    with the end (one window at 0 when the scene is smaller)."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window, stride))
    return starts + [size - window]


@functools.lru_cache(maxsize=8)
def blend_weight(h: int, w: int) -> np.ndarray:
    """[h, w] float32: 1 in the centre, falling linearly to EDGE_WEIGHT at the border (cached:
    every full window shares one; do not modify it)."""

    def ramp(n: int) -> np.ndarray:
        d = np.minimum(np.arange(n) + 0.5, n - np.arange(n) - 0.5) / (n / 2)  # 0 edge .. 1 centre
        return EDGE_WEIGHT + (1 - EDGE_WEIGHT) * np.clip(d, 0, 1)

    return np.outer(ramp(h), ramp(w)).astype(np.float32)


def normalise(name: str) -> str:
    """A `<p>` name as a scene key: lower case, single spaces, no surrounding punctuation."""
    return " ".join(name.lower().split()).strip(" .,;:!?\"'")


def target_keys(answer: str) -> list[str]:
    """The scene key of each `[SEG]` of an answer, in order: its normalised `<p>` name, or, for
    a `[SEG]` without one, "target i" (its 1-based index in the answer: the index rule)."""
    keys = []
    for i, match in enumerate(_NAMED_SEG.finditer(answer), start=1):
        keys.append(normalise(match.group(1) or "") or f"target {i}")
    return keys
