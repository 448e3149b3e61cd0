"""Training losses of SegEarth-R2 (docs/conventions.md, Losses): pure, jit-friendly functions of
arrays.

`L = text_weight * L_text + bce_weight * L_bce + dice_weight * L_dice
     + spatial_weight * L_spatial` (text_weight 1 in the paper).

* `text_loss`: shifted next-token cross-entropy, labels -100 ignored (PyTorch
  `CrossEntropyLoss(reduction="mean")` semantics).
* `mask_loss`: the Mask2Former criterion (`loss_masks` of the official SegEarth-R1/R2 code):
  BCE + Dice on points picked by uncertainty-based importance sampling, normalized by the number
  of masks, summed over the deep-supervision predictions. The i-th `[SEG]` pairs with the i-th
  GT mask, so there is no Hungarian matching. `full_resolution=True` uses every pixel of the
  bilinearly upsampled logits instead of points.
* `spatial_loss_paper` / `spatial_loss_official`: the `[SEG]` -> image attention supervision.

Point coordinates are (x, y) in [0, 1]^2, x along the width, as `grid_sample` reads them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from segearth_jax.constants import IGNORE_INDEX
from segearth_jax.resample import bilinear_taps, resize_bilinear

SPATIAL_VARIANTS = ("paper", "official", "none")


# ---------------------------------------------------------------------------------------------
# Text.


def _normalizer(count: jax.Array) -> jax.Array:
    return jnp.maximum(count, 1).astype(jnp.float32)


def text_loss(logits: jax.Array, labels: jax.Array, denominator: jax.Array | None = None
              ) -> tuple[jax.Array, jax.Array]:
    """Shifted next-token cross-entropy: logits[:, t] predicts labels[:, t + 1].

    logits: [B, T, V] (any float dtype; computed in float32); labels: [B, T] int, -100 = ignored.
    Returns (mean over the non-ignored targets, 0 when there is none; their count, int32). A
    `denominator` (e.g. the whole batch's count when this is one micro-batch) replaces the count
    as the divisor.
    """
    # The labels shift, not the logits: slicing [B, T, V] would copy it, and its transpose (a
    # pad) would copy the gradient again. The last position predicts nothing (ignored).
    logits = logits.astype(jnp.float32)  # [B, T, V]
    targets = jnp.pad(labels[:, 1:], ((0, 0), (0, 1)), constant_values=IGNORE_INDEX)  # [B, T]
    keep = targets != IGNORE_INDEX
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, jnp.where(keep, targets, 0)[..., None], axis=-1)[..., 0]
    nll = jnp.where(keep, lse - picked, 0.0)
    n_tokens = keep.sum(dtype=jnp.int32)
    n = n_tokens if denominator is None else denominator
    return nll.sum() / _normalizer(n), n_tokens


# ---------------------------------------------------------------------------------------------
# Masks (Mask2Former criterion).


def point_sample(maps: jax.Array, coords: jax.Array) -> jax.Array:
    """Bilinear samples of `maps` at `coords`, as `grid_sample(maps, 2 * coords - 1,
    align_corners=False, padding_mode="zeros")` (Mask2Former's `point_sample`).

    maps: [..., h, w] (float, bool or uint8; taps are gathered in that dtype, then cast);
    coords: [..., K, 2] (x, y) in [0, 1], same leading dims as `maps`. Returns [..., K] float32.
    """
    h, w = maps.shape[-2:]
    flat = maps.reshape(*maps.shape[:-2], h * w)
    taps = bilinear_taps(coords.astype(jnp.float32), h, w)  # weights 0 outside the map
    return sum(jnp.take_along_axis(flat, index, axis=-1).astype(jnp.float32) * weight
               for index, weight in taps)


def select_uncertain_points(point_logits_over: jax.Array, coords_over: jax.Array,
                            coords_random: jax.Array, num_uncertain: int, *,
                            ordered: bool = True) -> jax.Array:
    """Mask2Former's `get_uncertain_point_coords_with_randomness`, random draws given.

    point_logits_over: [..., K_over] logits at the oversampled coords_over [..., K_over, 2];
    coords_random: [..., K_rand, 2]. Keeps the `num_uncertain` coords of largest uncertainty
    -|logit|, then appends coords_random. Returns [..., num_uncertain + K_rand, 2].
    ordered: the kept coords in decreasing uncertainty (`lax.top_k`, as torch.topk); False:
    the same coords (ties: the lower index, as top_k) in their oversampled order, found by
    `_least_k_mask` (3x faster than XLA:CPU's TopK; the losses only sum over points).
    """
    if ordered:
        _, idx = jax.lax.top_k(-jnp.abs(point_logits_over), num_uncertain)  # [..., K_unc]
        chosen = jnp.take_along_axis(coords_over, idx[..., None], axis=-2)
    else:
        keep = _least_k_mask(jnp.abs(point_logits_over), num_uncertain)  # [..., K_over]
        slot = jnp.where(keep, jnp.cumsum(keep, axis=-1) - 1, num_uncertain)  # K_unc: dropped
        lead, n = keep.shape[:-1], keep.shape[-1]
        chosen = jax.vmap(lambda sl, c: jnp.zeros((num_uncertain, 2), c.dtype).at[sl].set(
            c, mode="drop"))(slot.reshape(-1, n), coords_over.reshape(-1, n, 2))
        chosen = chosen.reshape(*lead, num_uncertain, 2)
    return jnp.concatenate([chosen, coords_random.astype(coords_over.dtype)], axis=-2)


def _least_k_mask(a: jax.Array, k: int) -> jax.Array:
    """a: [..., n] float32 >= 0 (no NaN) -> bool [..., n], True at the k smallest (ties: the
    lower indices). Bisection on the float bits (monotonic for a >= 0): the least threshold t
    with count(bits <= t) >= k, in 32 halvings of [-1, bits(inf)]."""
    bits = jax.lax.bitcast_convert_type(a.astype(jnp.float32), jnp.int32)

    def halve(_, bounds):
        lo, hi = bounds  # count(bits <= lo) < k <= count(bits <= hi)
        mid = lo + (hi - lo) // 2
        enough = (bits <= mid[..., None]).sum(-1) >= k
        return jnp.where(enough, lo, mid), jnp.where(enough, mid, hi)

    lo = jnp.full(a.shape[:-1], -1, jnp.int32)
    hi = jnp.full(a.shape[:-1], 0x7F800000, jnp.int32)
    _, t = jax.lax.fori_loop(0, 32, halve, (lo, hi))
    below, tie = bits < t[..., None], bits == t[..., None]
    room = k - below.sum(-1, keepdims=True)
    return below | (tie & (jnp.cumsum(tie, axis=-1) <= room))


def sample_points(rng: jax.Array, logits: jax.Array, num_points: int, oversample_ratio: float,
                  importance_sample_ratio: float, *, ordered: bool = True) -> jax.Array:
    """Uncertainty-based importance sampling of point coords, no gradient.

    logits: [..., h, w]; returns coords [..., num_points, 2], drawn independently per map. One
    uniform draw `[..., K_over + K_rand, 2]` is split into the oversampled coords (first K_over =
    int(num_points * oversample_ratio)) and the fresh random ones (K_rand = num_points -
    int(importance_sample_ratio * num_points)). ordered: see `select_uncertain_points`.
    """
    num_over = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    lead = logits.shape[:-2]
    draws = jax.random.uniform(rng, (*lead, num_over + num_points - num_uncertain, 2),
                               jnp.float32)
    coords_over, coords_random = draws[..., :num_over, :], draws[..., num_over:, :]
    point_logits = point_sample(jax.lax.stop_gradient(logits), coords_over)
    return jax.lax.stop_gradient(select_uncertain_points(
        point_logits, coords_over, coords_random, num_uncertain, ordered=ordered))


def point_mask_losses(point_logits: jax.Array, point_labels: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
    """Per-mask BCE-with-logits (mean over points) and Dice, not yet normalized.

    point_logits, point_labels: [..., K] (labels in [0, 1]). Returns (bce [...], dice [...]),
    dice = 1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1) with p = sigmoid(logits).
    """
    x = point_logits.astype(jnp.float32)
    t = point_labels.astype(jnp.float32)
    bce = (jnp.maximum(x, 0.0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))).mean(-1)
    p = jax.nn.sigmoid(x)
    dice = 1.0 - (2.0 * (p * t).sum(-1) + 1.0) / (p.sum(-1) + t.sum(-1) + 1.0)
    return bce, dice


def num_masks(valid: jax.Array) -> jax.Array:
    """max(number of valid masks in the (global) batch, 1), float32. valid: [B, Q] bool."""
    return jnp.maximum(valid.sum(), 1).astype(jnp.float32)


def mask_loss(pred: jax.Array, masks: jax.Array, valid: jax.Array, rng: jax.Array, *,
              num_points: int = 12544, oversample_ratio: float = 3.0,
              importance_sample_ratio: float = 0.75, full_resolution: bool = False,
              denominator: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Mask2Former BCE and Dice, summed over the P deep-supervision predictions.

    pred: [P, B, Q, h, w] mask logits (1/4 of the canvas); masks: [B, Q, H, W] 0/1 (uint8/bool)
    GT on the full canvas; valid: [B, Q] bool, a real `[SEG]` with a GT mask (padded queries
    contribute nothing). Each prediction and each mask gets its own random points. Returns
    (bce, dice), each sum_P sum_valid(per-mask loss) / num_masks(valid), unweighted (or / max(
    `denominator`, 1): the whole batch's mask count when this is one micro-batch).
    """
    p, b, q = pred.shape[:3]
    if masks.shape[:2] != (b, q) or valid.shape != (b, q):
        raise ValueError(f"mask_loss: pred {pred.shape} [P, B, Q, h, w] needs masks [B, Q, H, W] "
                         f"and valid [B, Q] with B, Q = {(b, q)}; got masks {masks.shape}, "
                         f"valid {valid.shape}")

    if full_resolution:
        def one_prediction(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
            up = resize_bilinear(logits.astype(jnp.float32), masks.shape[-2:])  # [B, Q, H, W]
            return point_mask_losses(up.reshape(b, q, -1), masks.reshape(b, q, -1))

        # Sequential over P: one upsampled prediction alive at a time.
        bce, dice = jax.lax.map(one_prediction, pred)  # [P, B, Q] each
    else:
        # The kept points in their drawn order, not sorted: the losses sum over points.
        coords = sample_points(rng, pred, num_points, oversample_ratio,
                               importance_sample_ratio, ordered=False)  # [P, B, Q, K, 2]
        labels = jax.vmap(point_sample, in_axes=(None, 0))(masks, coords)  # [P, B, Q, K]
        bce, dice = point_mask_losses(point_sample(pred, coords), labels)
    n = num_masks(valid) if denominator is None else _normalizer(denominator)
    return jnp.where(valid, bce, 0.0).sum() / n, jnp.where(valid, dice, 0.0).sum() / n


# ---------------------------------------------------------------------------------------------
# Spatial attention supervision.


def spatial_row_losses(attn: jax.Array, target: jax.Array, eps: float = 1e-8
                       ) -> tuple[jax.Array, jax.Array]:
    """Per-row `-log(sum((attn - a)^2 G) / sum(G) + eps)`, a = mean of attn over the background
    (0 if the row has none).

    attn: [..., N]; target: [..., N] binary (nonzero = foreground). Returns (row loss [...], 0
    where the target is empty; non-empty [...] bool).
    """
    attn = attn.astype(jnp.float32)
    fg = (target != 0).astype(jnp.float32)
    bg = 1.0 - fg
    n_fg, n_bg = fg.sum(-1), bg.sum(-1)
    a = (attn * bg).sum(-1) / jnp.maximum(n_bg, 1.0)
    mse = (jnp.square(attn - a[..., None]) * fg).sum(-1) / jnp.maximum(n_fg, 1.0)
    nonempty = n_fg > 0
    return jnp.where(nonempty, -jnp.log(mse + eps), 0.0), nonempty


def spatial_loss_paper(attn: jax.Array, target: jax.Array, valid: jax.Array, *,
                       divide_by_all_rows: bool = False, eps: float = 1e-8,
                       denominator: jax.Array | None = None) -> jax.Array:
    """Paper L_S. attn: [B, Q, N] `[SEG]` -> image-token attention averaged over layers and
    heads; target: [B, Q, N] binary GT on the token grid (row-major); valid: [B, Q] bool.

    Mean of the row losses over valid rows with a non-empty target (0 if none);
    `divide_by_all_rows=True` divides by all valid rows instead (official normalization); a
    `denominator` (the whole batch's row count, for a micro-batch) replaces either count.
    """
    rows, nonempty = spatial_row_losses(attn, target, eps)
    used = valid & nonempty
    if denominator is None:
        denominator = valid.sum() if divide_by_all_rows else used.sum()
    return jnp.where(used, rows, 0.0).sum() / _normalizer(denominator)


def spatial_loss_official(attn_layers: jax.Array, num_heads: int, target: jax.Array,
                          valid: jax.Array, *, eps: float = 1e-8,
                          denominator: jax.Array | None = None) -> jax.Array:
    """Official-code L_S. attn_layers: [Lyr, B, Q, N] per-layer head MEAN (as sown);
    target: [B, Q, N] binary; valid: [B, Q] bool.

    Per layer: heads summed (= mean * num_heads), row losses of non-empty targets summed and
    divided by the number of valid rows (or `denominator`); the per-layer losses summed over
    layers.
    """
    rows, nonempty = spatial_row_losses(attn_layers * num_heads, target[None], eps)
    used = valid[None] & nonempty  # [Lyr, B, Q]
    n = num_masks(valid) if denominator is None else _normalizer(denominator)
    per_layer = jnp.where(used, rows, 0.0).sum((1, 2)) / n
    return per_layer.sum()


# ---------------------------------------------------------------------------------------------
# Combined.


def loss_denominators(batch: dict[str, jax.Array], config: Any) -> dict[str, jax.Array]:
    """The counts each loss term divides by, from the batch alone (int32 scalars): answer tokens
    (`text`), valid masks (`masks`), and the `[SEG]` rows the spatial loss averages (`spatial`).
    Computed once on a whole batch and passed to `segearth_loss` for each of its micro-batches,
    the micro-batch losses sum to the whole batch's loss (gradient accumulation)."""
    labels = batch["labels"]
    valid = batch["seg_valid"].astype(bool)
    grid = batch["masks_grid"]
    nonempty = (grid.reshape(*grid.shape[:2], -1) != 0).any(-1)
    official = config.spatial_variant == "official"
    all_rows = official or config.spatial_divide_by_all_rows
    return {"text": (labels[:, 1:] != IGNORE_INDEX).sum(dtype=jnp.int32),
            "masks": valid.sum(dtype=jnp.int32),
            "spatial": (valid if all_rows else valid & nonempty).sum(dtype=jnp.int32)}


def segearth_loss(outputs: dict[str, jax.Array], batch: dict[str, jax.Array], rng: jax.Array,
                  config: Any, denominators: dict[str, jax.Array] | None = None, *,
                  num_heads: int | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total SegEarth-R2 loss and its unweighted parts.

    outputs: `logits` [B, T, V], `mask_logits` [P, B, Q, h, w], `seg_attention` [Lyr, B, Q, N]
      (head mean) or [Lyr, B, H, Q, N] (all heads); not needed when spatial_variant is 'none'.
    batch: `labels` [B, T], `masks` [B, Q, H, W] uint8, `masks_grid` [B, Q, g, g] (nonzero =
      foreground, N = g * g), `seg_valid` [B, Q] bool.
    config: `config.loss` (its keys: configs/segearth_r2.py).
    denominators: `loss_denominators` of the whole batch when `batch` is one of its
      micro-batches (None: this batch's own counts).
    num_heads: the LLM's attention heads; the official spatial variant sums over heads, so it
      needs them when `seg_attention` is the head mean (the model's config has them).
    Returns (loss, metrics): loss = text_weight * text + bce_weight * bce + dice_weight * dice
    + spatial_weight * spatial; metrics hold every part unweighted, `loss`, `n_masks`, `n_tokens`.
    """
    variant = config.spatial_variant
    if variant not in SPATIAL_VARIANTS:
        raise ValueError(f"loss config: spatial_variant={variant!r}, expected one of "
                         f"{SPATIAL_VARIANTS}")
    valid = batch["seg_valid"].astype(bool)
    den = denominators or {}
    text, n_tokens = text_loss(outputs["logits"], batch["labels"], den.get("text"))
    bce, dice = mask_loss(outputs["mask_logits"], batch["masks"], valid, rng,
                          num_points=config.num_points, oversample_ratio=config.oversample_ratio,
                          importance_sample_ratio=config.importance_sample_ratio,
                          full_resolution=config.full_resolution, denominator=den.get("masks"))

    spatial = jnp.zeros((), jnp.float32)
    if variant != "none":
        attn = outputs["seg_attention"]
        grid = batch["masks_grid"]
        target = grid.reshape(*grid.shape[:2], -1)  # [B, Q, g*g], row-major.
        if attn.shape[-1] != target.shape[-1] or attn.shape[-2] != target.shape[1]:
            raise ValueError(f"segearth_loss: seg_attention {attn.shape} ([Lyr, B, Q, N] or "
                             f"[Lyr, B, H, Q, N]) does not match masks_grid {grid.shape} "
                             "([B, Q, g, g], N = g * g)")
        if attn.ndim == 5:  # all heads sown: [Lyr, B, H, Q, N].
            num_heads, attn = attn.shape[2], attn.mean(axis=2)
        eps = config.spatial_eps
        if variant == "paper":
            spatial = spatial_loss_paper(
                attn.mean(axis=0), target, valid, eps=eps,
                divide_by_all_rows=config.spatial_divide_by_all_rows,
                denominator=den.get("spatial"))
        else:
            if num_heads is None:
                raise ValueError("segearth_loss: the official spatial variant on head-mean "
                                 "attention needs num_heads (the LLM's attention heads)")
            spatial = spatial_loss_official(attn, num_heads, target, valid, eps=eps,
                                            denominator=den.get("spatial"))

    loss = (config.text_weight * text + config.bce_weight * bce
            + config.dice_weight * dice + config.spatial_weight * spatial)
    metrics = dict(loss=loss, text_loss=text, bce_loss=bce, dice_loss=dice,
                   spatial_loss=spatial, n_masks=valid.sum(dtype=jnp.int32), n_tokens=n_tokens)
    return loss, metrics
