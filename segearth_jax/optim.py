"""Optimizer and the trainable/frozen split (docs/conventions.md, Optimization).

Which parameters train is a list of regexes over '/'-joined parameter paths (config
`trainable`); everything else is frozen: it gets no gradient and no optimizer state.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

Params = dict[str, Any]


def _flat(params: Params) -> dict[str, Any]:
    return traverse_util.flatten_dict(params, sep="/")


def split_params(params: Params, trainable: Sequence[str]) -> tuple[Params, Params]:
    """-> (trainable subtree, frozen subtree); each keeps only its own leaves."""
    patterns = [re.compile(p) for p in trainable]
    flat = _flat(params)
    train = {k: v for k, v in flat.items() if any(p.fullmatch(k) for p in patterns)}
    unmatched = [p.pattern for p in patterns if not any(p.fullmatch(k) for k in flat)]
    if unmatched:
        raise ValueError(f"trainable patterns match no parameter: {unmatched}")
    frozen = {k: v for k, v in flat.items() if k not in train}
    return (traverse_util.unflatten_dict(train, sep="/"),
            traverse_util.unflatten_dict(frozen, sep="/"))


def merge_params(trainable: Params, frozen: Params) -> Params:
    """Inverse of `split_params`."""
    flat = _flat(frozen)
    overlap = flat.keys() & _flat(trainable).keys()
    if overlap:
        raise ValueError(f"parameters both trainable and frozen: {sorted(overlap)[:5]}")
    flat.update(_flat(trainable))
    return traverse_util.unflatten_dict(flat, sep="/")


def cast(tree: Any, dtype: Any) -> Any:
    """Floating leaves to `dtype` (frozen weights are kept in the compute dtype)."""
    dtype = jnp.dtype(dtype)
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def learning_rate(config: Any) -> optax.Schedule:
    """Linear warmup over `warmup_frac` of the steps, then cosine decay to 0 (paper)."""
    total = int(config.total_steps)
    warmup = max(int(round(config.optim.warmup_frac * total)), 0)
    if config.optim.schedule == "constant":
        return optax.constant_schedule(config.optim.lr)
    if config.optim.schedule != "cosine":
        raise ValueError(f"unknown schedule {config.optim.schedule!r}: 'cosine' or 'constant'")
    return optax.warmup_cosine_decay_schedule(0.0, config.optim.lr, warmup, max(total, warmup + 1),
                                              end_value=0.0)


def make_optimizer(config: Any) -> optax.GradientTransformation:
    """AdamW (paper: lr 1e-4, weight decay 0) with optional global-norm clipping, inside
    `optax.apply_if_finite`: a step whose gradients are not all finite changes neither the
    params nor the AdamW moments (the train loop then stops at its next check; see
    `bad_step`)."""
    o = config.optim
    chain = []
    if o.grad_clip and o.grad_clip > 0:
        chain.append(optax.clip_by_global_norm(o.grad_clip))
    chain.append(optax.adamw(learning_rate(config), b1=o.b1, b2=o.b2, eps=o.eps,
                             weight_decay=o.weight_decay))
    tx = optax.chain(*chain)
    if o.flatten and config.mesh.fsdp == 1:
        # One vector for all trainable leaves: a few large kernels instead of several per leaf
        # (small models on a CPU: faster step and compile). It gathers the leaves into one
        # array, so it is skipped on an fsdp mesh (sharded parameters stay sharded).
        tx = optax.flatten(tx)
    # Never give up skipping: the loop stops on the first non-finite step anyway.
    return optax.apply_if_finite(tx, max_consecutive_errors=2**30)
