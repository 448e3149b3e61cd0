"""Losses (segearth_jax/losses.py) against PyTorch / transformers' Mask2Former criterion and
hand-computed numbers. fp32; tolerances stated per test."""

from __future__ import annotations

import functools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.models.mask2former import modeling_mask2former as m2f

from configs import segearth_r2 as segearth_r2_config
from convert.mask2former import hf_config
from segearth_jax import losses

TOL = 1e-5  # fp32 abs tolerance against PyTorch.



def _key(seed):
    """rbg keys: threefry's uniform takes seconds to compile on CPU; the losses take any key."""
    return jax.random.key(seed, impl="rbg")


# Jitted once per shape: eager op-by-op dispatch is slow on CPU.
mask_loss = jax.jit(losses.mask_loss, static_argnames=(
    "num_points", "oversample_ratio", "importance_sample_ratio", "full_resolution"))
text_loss = jax.jit(losses.text_loss)
spatial_loss_paper = jax.jit(losses.spatial_loss_paper, static_argnames=("divide_by_all_rows",))
spatial_loss_official = jax.jit(losses.spatial_loss_official, static_argnums=(1,))


def _close(actual, expected, tol=TOL):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# Text.


def test_text_loss_matches_torch_cross_entropy():
    rng = np.random.default_rng(0)
    b, t, v = 3, 7, 11
    logits = rng.normal(size=(b, t, v)).astype(np.float32) * 3
    labels = rng.integers(0, v, size=(b, t))
    labels[0, :3] = -100  # prompt positions
    labels[1, :] = -100  # a row with nothing to predict
    labels[2, 4] = -100
    loss, n = text_loss(jnp.asarray(logits), jnp.asarray(labels))
    ref = torch.nn.CrossEntropyLoss()(torch.from_numpy(logits[:, :-1]).reshape(-1, v),
                                      torch.from_numpy(labels[:, 1:]).reshape(-1))
    _close(loss, ref.item())
    assert int(n) == int((labels[:, 1:] != -100).sum()) == 6 - 2 + 5

    # bf16 logits are promoted to fp32 before the log-softmax: same value as fp32 of the bf16.
    lo_bf16 = jnp.asarray(logits).astype(jnp.bfloat16)
    loss_bf16, _ = text_loss(lo_bf16, jnp.asarray(labels))
    ref_bf16 = torch.nn.CrossEntropyLoss()(
        torch.from_numpy(np.array(lo_bf16.astype(jnp.float32))[:, :-1]).reshape(-1, v),
        torch.from_numpy(labels[:, 1:]).reshape(-1))
    _close(loss_bf16, ref_bf16.item())


def test_text_loss_all_ignored_is_zero():
    logits = jnp.ones((2, 4, 5))
    labels = jnp.full((2, 4), -100)
    labels = labels.at[:, 0].set(3)  # position 0 is never a target (shift)
    loss, n = text_loss(logits, labels)
    assert float(loss) == 0.0 and int(n) == 0
    g = jax.jit(jax.grad(lambda x: text_loss(x, labels)[0]))(logits)
    assert np.all(np.asarray(g) == 0)


# ---------------------------------------------------------------------------------------------
# Points.


def test_point_sample_matches_grid_sample():
    rng = np.random.default_rng(1)
    lead, h, w, k = (2, 3), 5, 7, 50
    maps = rng.normal(size=(*lead, h, w)).astype(np.float32)
    coords = rng.uniform(size=(*lead, k, 2)).astype(np.float32)
    coords[0, 0, :4] = [[0, 0], [0.999, 0.999], [0, 0.6], [0.95, 0.02]]  # border / zero padding
    got = losses.point_sample(jnp.asarray(maps), jnp.asarray(coords))
    ref = F.grid_sample(torch.from_numpy(maps).reshape(6, 1, h, w),
                        torch.from_numpy(2 * coords - 1).reshape(6, k, 1, 2),
                        align_corners=False).reshape(*lead, k)
    _close(got, ref.numpy())
    # transformers' wrapper (the Mask2Former criterion's point_sample) agrees too.
    ref2 = m2f.sample_point(torch.from_numpy(maps).reshape(6, 1, h, w),
                            torch.from_numpy(coords).reshape(6, k, 2), align_corners=False)
    _close(got, ref2.reshape(*lead, k).numpy())
    # uint8 0/1 masks (targets) are sampled as their float values.
    mask = (maps > 0).astype(np.uint8)
    got_u8 = losses.point_sample(jnp.asarray(mask), jnp.asarray(coords))
    ref_u8 = F.grid_sample(torch.from_numpy(mask.astype(np.float32)).reshape(6, 1, h, w),
                           torch.from_numpy(2 * coords - 1).reshape(6, k, 1, 2),
                           align_corners=False).reshape(*lead, k)
    _close(got_u8, ref_u8.numpy())


def _fake_rand(monkeypatch, draws):
    """torch.rand returning `draws` in order (shapes checked)."""
    queue = [torch.from_numpy(np.ascontiguousarray(d, np.float32)) for d in draws]

    def rand(*size, **kwargs):
        out = queue.pop(0)
        assert tuple(out.shape) == tuple(size), (out.shape, size)
        return out

    monkeypatch.setattr(torch, "rand", rand)
    return queue


def test_select_uncertain_points_matches_transformers(monkeypatch):
    rng = np.random.default_rng(2)
    r, h, w = 4, 6, 8
    num_points, oversample, importance = 40, 3.0, 0.75
    n_over, n_unc = int(num_points * oversample), int(importance * num_points)
    logits = rng.normal(size=(r, h, w)).astype(np.float32)
    over = rng.uniform(size=(r, n_over, 2)).astype(np.float32)
    rand = rng.uniform(size=(r, num_points - n_unc, 2)).astype(np.float32)

    queue = _fake_rand(monkeypatch, [over, rand])
    ref = m2f.Mask2FormerLoss.sample_points_using_uncertainty(
        None, torch.from_numpy(logits)[:, None], lambda x: -torch.abs(x), num_points, oversample,
        importance)
    assert not queue

    point_logits = losses.point_sample(jnp.asarray(logits), jnp.asarray(over))
    got = losses.select_uncertain_points(point_logits, jnp.asarray(over), jnp.asarray(rand),
                                         n_unc)
    assert got.shape == (r, num_points, 2)
    np.testing.assert_array_equal(np.asarray(got), ref.numpy())  # coords are copied: exact


def test_sample_points_shape_range_no_gradient():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 6, 6)), jnp.float32)
    coords = jax.jit(losses.sample_points, static_argnums=(2, 3, 4))(_key(1), logits, 20, 3.0,
                                                                     0.75)
    assert coords.shape == (2, 3, 20, 2)
    assert float(coords.min()) >= 0.0 and float(coords.max()) < 1.0
    # The first int(0.75 * 20) coords are the most uncertain of the 60 oversampled ones.
    u = -jnp.abs(losses.point_sample(logits, coords[:, :, :15]))
    assert np.all(np.diff(np.asarray(u), axis=-1) <= 1e-6)  # decreasing uncertainty
    g = jax.jit(jax.grad(
        lambda x: losses.sample_points(_key(1), x, 20, 3.0, 0.75).sum()))(logits)
    assert np.all(np.asarray(g) == 0)


def test_unordered_selection_keeps_the_same_points():
    """ordered=False (the training path): the same kept coords as top_k (ties: lower index),
    in their drawn order; float32 ties, zeros and one-value rows included."""
    rng = np.random.default_rng(4)
    n_over, n_unc = 96, 24
    x = rng.normal(size=(3, 5, n_over)).astype(np.float32)
    x[0, 0, :40] = 0.25  # ties across the threshold
    x[0, 1] = 0.0  # every value equal
    x[1, 2, ::7] = -x[1, 2, ::7]  # equal |x| with opposite signs
    over = rng.uniform(size=(3, 5, n_over, 2)).astype(np.float32)
    rand = rng.uniform(size=(3, 5, 8, 2)).astype(np.float32)
    args = jnp.asarray(x), jnp.asarray(over), jnp.asarray(rand), n_unc
    ordered = np.asarray(losses.select_uncertain_points(*args))
    unordered = np.asarray(jax.jit(functools.partial(
        losses.select_uncertain_points, ordered=False), static_argnums=3)(*args))
    np.testing.assert_array_equal(unordered[..., n_unc:, :], ordered[..., n_unc:, :])
    for i in np.ndindex(3, 5):
        kept = {tuple(c) for c in ordered[i][:n_unc]}
        assert {tuple(c) for c in unordered[i][:n_unc]} == kept
        index = [int(np.flatnonzero((over[i] == c).all(-1))[0]) for c in unordered[i][:n_unc]]
        assert index == sorted(index)  # drawn order
    coords = losses.sample_points(_key(3), jnp.asarray(x[..., :64].reshape(3, 5, 8, 8)), 20,
                                  3.0, 0.75, ordered=False)
    same = losses.sample_points(_key(3), jnp.asarray(x[..., :64].reshape(3, 5, 8, 8)), 20, 3.0,
                                0.75)
    assert coords.shape == same.shape == (3, 5, 20, 2)
    np.testing.assert_array_equal(np.sort(np.asarray(coords[..., :15, 0]), -1),
                                  np.sort(np.asarray(same[..., :15, 0]), -1))


def test_point_losses_match_transformers():
    rng = np.random.default_rng(3)
    r, k = 5, 64
    x = (rng.normal(size=(r, k)) * 4).astype(np.float32)
    t = rng.uniform(size=(r, k)).astype(np.float32)
    t[:, ::3] = (t[:, ::3] > 0.5)  # binary and fractional (boundary) labels
    bce, dice = losses.point_mask_losses(jnp.asarray(x), jnp.asarray(t))
    assert bce.shape == dice.shape == (r,)
    tx, tt = torch.from_numpy(x), torch.from_numpy(t)
    _close(bce.sum() / 3, m2f.sigmoid_cross_entropy_loss(tx, tt, 3).item())
    _close(dice.sum() / 3, m2f.dice_loss(tx, tt, 3).item())


# ---------------------------------------------------------------------------------------------
# mask_loss.


def _mask_inputs(seed, p=2, b=2, q=3, h=5, w=6, scale=4):
    rng = np.random.default_rng(seed)
    pred = (rng.normal(size=(p, b, q, h, w)) * 3).astype(np.float32)
    masks = (rng.uniform(size=(b, q, h * scale, w * scale)) > 0.6).astype(np.uint8)
    return pred, masks


def test_mask_loss_points_matches_transformers_loss_masks(monkeypatch):
    """End to end against transformers' `Mask2FormerLoss.loss_masks` (identity matching), with
    torch.rand fed the uniforms our code draws: one `uniform(rng, [P, B, Q, 3K + K/4, 2])`, split
    into the oversampled coords (first 3K) and the random ones (see `losses.sample_points`)."""
    pred, masks = _mask_inputs(4)
    p, b, q = pred.shape[:3]
    valid = np.array([[True, True, False], [True, False, False]])
    num_points = 32
    n_over, n_unc = int(num_points * 3.0), int(0.75 * num_points)
    rng = _key(7)
    bce, dice = mask_loss(jnp.asarray(pred), jnp.asarray(masks), jnp.asarray(valid), rng,
                                 num_points=num_points)

    config = hf_config(train_num_points=num_points, oversample_ratio=3.0,
                       importance_sample_ratio=0.75)
    criterion = m2f.Mask2FormerLoss(config, weight_dict={})
    counts = valid.sum(1)
    labels = [torch.from_numpy(masks[i, :c].astype(np.float32)) for i, c in enumerate(counts)]
    indices = [(torch.arange(c), torch.arange(c)) for c in counts]
    draws = np.asarray(jax.random.uniform(rng, (p, b, q, n_over + num_points - n_unc, 2)))
    ref_bce = ref_dice = 0.0
    for i in range(p):
        over, rand = draws[i][valid][:, :n_over], draws[i][valid][:, n_over:]
        _fake_rand(monkeypatch, [over, rand])
        out = criterion.loss_masks(torch.from_numpy(pred[i]), labels, indices,
                                   num_masks=int(valid.sum()))
        ref_bce += out["loss_mask"].item()
        ref_dice += out["loss_dice"].item()
    _close(bce, ref_bce)
    _close(dice, ref_dice)


@pytest.mark.parametrize("full_resolution", [False, True])
def test_mask_loss_ignores_invalid_queries(full_resolution):
    pred, masks = _mask_inputs(5)
    valid = jnp.array([[True, False, True], [False, True, False]])
    kw = dict(num_points=24, full_resolution=full_resolution)
    rng = _key(3)
    base = mask_loss(jnp.asarray(pred), jnp.asarray(masks), valid, rng, **kw)
    pred2, masks2 = pred.copy(), masks.copy()
    inv = ~np.asarray(valid)
    pred2[:, inv] = np.random.default_rng(9).normal(size=pred2[:, inv].shape) * 10
    masks2[inv] = 1 - masks2[inv]
    other = mask_loss(jnp.asarray(pred2), jnp.asarray(masks2), valid, rng, **kw)
    np.testing.assert_allclose(np.asarray(other), np.asarray(base), rtol=1e-6, atol=0)
    g = jax.jit(jax.grad(lambda x: sum(mask_loss(x, jnp.asarray(masks), valid, rng, **kw))))(
        jnp.asarray(pred))
    g = np.asarray(g)
    assert np.all(g[:, inv] == 0) and np.all(np.isfinite(g)) and np.any(g[:, ~inv] != 0)


@pytest.mark.parametrize("full_resolution", [False, True])
def test_mask_loss_num_masks_normalization(full_resolution):
    """3 valid masks: 3 * L = 2 * L(first image's 2 masks alone) + 1 * L(second image's mask)."""
    pred, masks = _mask_inputs(6)
    kw = dict(num_points=24, full_resolution=full_resolution)
    rng = _key(4)
    run = lambda v: np.asarray(mask_loss(jnp.asarray(pred), jnp.asarray(masks),
                                                jnp.asarray(v), rng, **kw))
    both = run([[True, True, False], [True, False, False]])
    first = run([[True, True, False], [False, False, False]])
    second = run([[False, False, False], [True, False, False]])
    np.testing.assert_allclose(3 * both, 2 * first + second, rtol=1e-6)
    np.testing.assert_array_equal(run(np.zeros((2, 3), bool)), [0.0, 0.0])  # num_masks >= 1


def _np_upsample_bilinear(x, size):
    """Half-pixel-centre bilinear upsampling with clamped edges (align_corners=False)."""
    h, w = x.shape[-2:]
    oh, ow = size

    def axis(n_in, n_out):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, fy = axis(h, oh)
    x0, x1, fx = axis(w, ow)
    rows = x[..., y0, :] * (1 - fy)[:, None] + x[..., y1, :] * fy[:, None]
    return rows[..., x0] * (1 - fx) + rows[..., x1] * fx


def test_mask_loss_full_resolution_matches_numpy():
    pred, masks = _mask_inputs(8, p=3)
    valid = np.array([[True, True, False], [True, False, True]])
    bce, dice = mask_loss(jnp.asarray(pred), jnp.asarray(masks), jnp.asarray(valid),
                                 _key(0), full_resolution=True)
    up = _np_upsample_bilinear(pred.astype(np.float64), masks.shape[-2:])  # [P, B, Q, H, W]
    ref_up = F.interpolate(torch.from_numpy(pred).flatten(0, 1), size=masks.shape[-2:],
                           mode="bilinear", align_corners=False).reshape(up.shape)
    _close(up, ref_up.numpy())  # the numpy reference itself is torch's upsampling
    t = masks.astype(np.float64)
    bce_px = np.logaddexp(0, up) - up * t  # -t log s(x) - (1-t) log(1-s(x))
    prob = 1 / (1 + np.exp(-up))
    bce_mask = bce_px.mean((-1, -2))  # [P, B, Q]
    dice_mask = 1 - (2 * (prob * t).sum((-1, -2)) + 1) / (prob.sum((-1, -2)) + t.sum((-1, -2)) + 1)
    n = valid.sum()
    _close(bce, bce_mask[:, valid].sum() / n)
    _close(dice, dice_mask[:, valid].sum() / n)
    # P predictions are summed.
    parts = [mask_loss(jnp.asarray(pred[i:i + 1]), jnp.asarray(masks), jnp.asarray(valid),
                              _key(0), full_resolution=True) for i in range(3)]
    _close(bce, sum(float(x[0]) for x in parts))
    _close(dice, sum(float(x[1]) for x in parts))


# ---------------------------------------------------------------------------------------------
# Spatial attention.


def _spatial_case():
    """One image, five [SEG] rows over N = 4 tokens."""
    attn = np.array([[[0.4, 0.1, 0.3, 0.2],  # fg {0, 2}, bg {1, 3}
                      [0.7, 0.1, 0.1, 0.1],  # empty target: skipped
                      [0.5, 0.2, 0.2, 0.1],  # no background: a = 0
                      [0.4, 0.3, 0.2, 0.1],  # one background column
                      [0.9, 0.0, 0.0, 0.1]]], np.float32)  # padded row
    target = np.array([[[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]]],
                      np.float32)
    valid = np.array([[True, True, True, True, False]])
    return attn, target, valid


def test_spatial_loss_paper_hand_computed():
    attn, target, valid = _spatial_case()
    # Row 0: a = (0.1 + 0.2) / 2 = 0.15; fg deviations 0.25, 0.15 -> (0.0625 + 0.0225) / 2.
    row0 = -math.log(0.0425 + 1e-8)
    # Row 2: a = 0; (0.25 + 0.04 + 0.04 + 0.01) / 4 = 0.085.
    row2 = -math.log(0.085 + 1e-8)
    # Row 3: a = 0.1; deviations 0.3, 0.2, 0.1 -> (0.09 + 0.04 + 0.01) / 3.
    row3 = -math.log(0.14 / 3 + 1e-8)
    got = spatial_loss_paper(jnp.asarray(attn), jnp.asarray(target), jnp.asarray(valid))
    _close(got, (row0 + row2 + row3) / 3, 1e-6)  # rows 0, 2, 3 have targets
    got_all = spatial_loss_paper(jnp.asarray(attn), jnp.asarray(target),
                                 jnp.asarray(valid), divide_by_all_rows=True)
    _close(got_all, (row0 + row2 + row3) / 4, 1e-6)  # official: divided by the 4 valid rows
    rows, nonempty = losses.spatial_row_losses(jnp.asarray(attn), jnp.asarray(target))
    _close(rows[0, :4], [row0, 0.0, row2, row3], 1e-6)
    assert np.asarray(nonempty).tolist() == [[True, False, True, True, True]]
    # No non-empty valid target anywhere -> 0 (and a finite zero gradient).
    empty = np.zeros_like(target)
    fn = lambda a: spatial_loss_paper(a, jnp.asarray(empty), jnp.asarray(valid))
    assert float(fn(jnp.asarray(attn))) == 0.0
    assert np.all(np.asarray(jax.jit(jax.grad(fn))(jnp.asarray(attn))) == 0)


def test_spatial_loss_official_hand_computed():
    # Two layers, two heads, one image, two rows over N = 3 tokens; row 1 has an empty target.
    heads = np.array([
        [[[0.2, 0.1, 0.3], [0.3, 0.3, 0.4]], [[0.4, 0.1, 0.1], [0.1, 0.1, 0.8]]],  # layer 0
        [[[0.1, 0.2, 0.2], [0.5, 0.2, 0.3]], [[0.1, 0.3, 0.1], [0.2, 0.2, 0.6]]],  # layer 1
    ], np.float32)[:, None]  # [Lyr, B, H, Q, N]
    target = np.array([[[1, 0, 0], [0, 0, 0]]], np.float32)
    valid = np.array([[True, True]])
    # Layer 0, row 0: head sum [0.6, 0.2, 0.4], a = 0.3, mse = 0.3^2 = 0.09.
    # Layer 1, row 0: head sum [0.2, 0.5, 0.3], a = 0.4, mse = 0.2^2 = 0.04.
    # Each layer divides by its 2 rows; layers summed.
    expected = -math.log(0.09 + 1e-8) / 2 - math.log(0.04 + 1e-8) / 2
    got = spatial_loss_official(jnp.asarray(heads.mean(2)), 2, jnp.asarray(target),
                                       jnp.asarray(valid))
    _close(got, expected, 1e-6)


def _official_attention_loss(attn_maps, targets):
    """Transcription of the official AttentionLoss loop. attn_maps: per layer [R, H, N] (the
    real [SEG] rows, all heads); targets: [R, N]."""
    total = 0.0
    for layer_attn in attn_maps:
        attn = layer_attn.sum(1)  # heads summed
        loss = 0.0
        for i in range(attn.shape[0]):
            t = targets[i] > 0
            if t.sum() == 0:
                continue
            bg_mean = attn[i][~t].mean()
            mse = ((attn[i][t] - bg_mean) ** 2).mean()
            loss += -torch.log(mse + 1e-8)
        total += loss / attn.shape[0]
    return total


def test_spatial_loss_official_matches_transcription():
    rng = np.random.default_rng(11)
    lyr, b, h, q, n = 3, 2, 4, 3, 9
    heads = rng.dirichlet(np.ones(n), size=(lyr, b, h, q)).astype(np.float32) * 0.3
    target = (rng.uniform(size=(b, q, n)) > 0.6).astype(np.float32)
    target[0, 1] = 0  # empty target (skipped, still counted)
    target[1, 0, :2] = 1
    target[1, 0, 2:] = 0
    valid = np.array([[True, True, True], [True, True, False]])
    got = spatial_loss_official(jnp.asarray(heads.mean(2)), h, jnp.asarray(target),
                                       jnp.asarray(valid))
    th = torch.from_numpy(heads).permute(0, 1, 3, 2, 4)[:, torch.from_numpy(valid)]  # [L,R,H,N]
    ref = _official_attention_loss(list(th), torch.from_numpy(target[valid]))
    _close(got, ref.item())


# ---------------------------------------------------------------------------------------------
# Combiner.


def _combiner_inputs(seed=0):
    rng = np.random.default_rng(seed)
    # Mask shapes as in _mask_inputs and num_points 24: the jitted mask_loss is reused.
    b, t, v, p, q, h, w, lyr, heads, g = 2, 6, 9, 2, 3, 5, 6, 2, 4, 3
    labels = rng.integers(0, v, size=(b, t))
    labels[:, :2] = -100
    masks_grid = (rng.uniform(size=(b, q, g, g)) > 0.5).astype(np.float32)
    outputs = dict(
        logits=jnp.asarray(rng.normal(size=(b, t, v)), jnp.float32),
        mask_logits=jnp.asarray(rng.normal(size=(p, b, q, h, w)) * 2, jnp.float32),
        seg_attention=jnp.asarray(
            rng.dirichlet(np.ones(g * g), size=(lyr, b, heads, q)) * 0.5, jnp.float32),
    )
    batch = dict(labels=jnp.asarray(labels),
                 masks=jnp.asarray(rng.uniform(size=(b, q, 4 * h, 4 * w)) > 0.5, jnp.uint8),
                 masks_grid=jnp.asarray(masks_grid),
                 seg_valid=jnp.asarray([[True, True, False], [True, False, False]]))
    return outputs, batch


def _config(**overrides):
    cfg = segearth_r2_config.base().loss
    cfg.num_points = 24
    cfg.update(overrides)
    return cfg


@functools.partial(jax.jit, static_argnames=("variant",))
def _combined(outputs, batch, rng, weights, variant):
    """segearth_loss with a plain attribute config whose weights are traced (one compile per
    variant and shapes)."""
    cfg = types.SimpleNamespace(**dict(_config().to_dict(), spatial_variant=variant))
    cfg.text_weight, cfg.bce_weight, cfg.dice_weight, cfg.spatial_weight = weights
    return losses.segearth_loss(outputs, batch, rng, cfg)


def test_segearth_loss_components_and_weights():
    outputs, batch = _combiner_inputs()
    outputs4 = dict(outputs, seg_attention=outputs["seg_attention"].mean(2))  # as sown ("mean")
    rng = _key(5)
    default = jnp.array([1.0, 5.0, 5.0, 0.01])
    loss, m = _combined(outputs4, batch, rng, default, "paper")
    valid = batch["seg_valid"]
    target = batch["masks_grid"].reshape(2, 3, 9)
    text, _ = text_loss(outputs["logits"], batch["labels"])
    bce, dice = mask_loss(outputs["mask_logits"], batch["masks"], valid, rng, num_points=24)
    spatial = spatial_loss_paper(outputs4["seg_attention"].mean(0), target, valid)
    _close(m["text_loss"], text, 1e-6)
    _close(m["bce_loss"], bce, 1e-6)
    _close(m["dice_loss"], dice, 1e-6)
    _close(m["spatial_loss"], spatial, 1e-6)
    _close(loss, text + 5 * bce + 5 * dice + 0.01 * spatial, 1e-6)
    _close(m["loss"], loss, 0)
    assert int(m["n_masks"]) == 3 and int(m["n_tokens"]) == 2 * 4  # targets 2..5 of each row
    assert float(spatial) != 0.0 and float(bce) != 0.0 and float(dice) != 0.0

    # Changing spatial_weight changes the total by exactly the weighted difference.
    loss2, _ = _combined(outputs4, batch, rng, jnp.array([1.0, 5.0, 5.0, 0.5]), "paper")
    _close(loss2 - loss, (0.5 - 0.01) * m["spatial_loss"], 1e-6)
    loss3, _ = _combined(outputs4, batch, rng, jnp.array([1.0, 2.0, 1.0, 0.01]), "paper")
    _close(loss3 - loss, -3 * m["bce_loss"] - 4 * m["dice_loss"], 1e-6)
    loss4, _ = _combined(outputs4, batch, rng, jnp.array([3.0, 5.0, 5.0, 0.01]), "paper")
    _close(loss4 - loss, 2 * m["text_loss"], 1e-6)

    # Official variant: heads summed, layers summed; the all-heads probe [Lyr, B, H, Q, N]
    # gives the same value as the head mean with config.num_heads.
    _, mo5 = _combined(outputs, batch, rng, default, "official")
    _close(mo5["spatial_loss"],
           spatial_loss_official(outputs4["seg_attention"], 4, target, valid), 1e-5)
    # 'none': no probe needed, spatial term zero.
    none_out = {k: val for k, val in outputs.items() if k != "seg_attention"}
    ln, mn = _combined(none_out, batch, rng, default, "none")
    assert float(mn["spatial_loss"]) == 0.0
    _close(ln, text + 5 * bce + 5 * dice, 1e-6)

    with pytest.raises(ValueError, match="spatial_variant"):
        _combined(outputs4, batch, rng, default, "both")
    bad = dict(batch, masks_grid=jnp.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="masks_grid"):
        _combined(outputs4, bad, rng, default, "paper")


def test_segearth_loss_jit_and_gradient():
    """ConfigDict config, under jit(value_and_grad)."""
    outputs, batch = _combiner_inputs(1)
    outputs = dict(outputs, seg_attention=outputs["seg_attention"].mean(2))
    cfg = _config()

    def total(out, bat, key):
        return losses.segearth_loss(out, bat, key, cfg)

    (loss, m), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(
        outputs, batch, _key(6))
    _close(loss, m["text_loss"] + 5 * m["bce_loss"] + 5 * m["dice_loss"]
           + 0.01 * m["spatial_loss"], 1e-6)
    assert np.isfinite(float(loss))
    for k, g in grads.items():
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), k
        assert np.any(g != 0), k
    # Padded [SEG] queries get no gradient, neither through the masks nor the attention.
    inv = ~np.asarray(batch["seg_valid"])
    assert np.all(np.asarray(grads["mask_logits"])[:, inv] == 0)
    assert np.all(np.asarray(grads["seg_attention"])[:, inv] == 0)
