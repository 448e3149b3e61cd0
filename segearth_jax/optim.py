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


def flattens(config: Any) -> bool:
    """Whether the optimizer works on one vector of all trainable leaves (`optim.flatten`;
    never on an fsdp mesh, where parameters stay sharded)."""
    return bool(config.optim.flatten) and config.mesh.fsdp == 1


def _ravel(tree: Any) -> jax.Array:
    """The leaves of `tree` as one vector, in `optax.flatten`'s order and ops."""
    return jnp.concatenate([jnp.reshape(x, [-1]) for x in jax.tree.leaves(tree)])


def grad_norm(config: Any, grads: Any) -> jax.Array:
    """The global L2 norm of `grads` (a scalar): the ops of `skip_non_finite`'s check, on the
    vector the optimizer sees (one vector where it flattens), so XLA computes it once."""
    return optax.tree.norm(_ravel(grads) if flattens(config) else grads)


def skip_non_finite(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`optax.apply_if_finite` that never gives up, checked on the global L2 norm: an update
    whose gradients' norm is not finite (a NaN or inf anywhere, or a norm past fp range)
    changes neither the params (zero updates) nor the inner state, and is counted. The state
    is optax's `ApplyIfFiniteState` (checkpoints are interchangeable). Why not optax's own:
    it reduces every leaf once more for its check (a kernel per leaf to compile), where this
    one shares the norm the train step logs (`grad_norm`), whose finiteness the step already
    uses to stop the run (`TrainState.bad_step`)."""

    def init(params):
        return optax.ApplyIfFiniteState(
            notfinite_count=jnp.zeros([], jnp.int32), last_finite=jnp.array(True, jnp.bool_),
            total_notfinite=jnp.zeros([], jnp.int32), inner_state=inner.init(params))

    def update(updates, state, params=None):
        finite = jnp.isfinite(optax.tree.norm(updates))
        updates, inner_state = jax.lax.cond(
            finite, lambda: inner.update(updates, state.inner_state, params),
            lambda: (optax.tree.zeros_like(updates), state.inner_state))
        bump = lambda n: jnp.where(finite, n, optax.safe_increment(n))
        return updates, optax.ApplyIfFiniteState(
            notfinite_count=jnp.where(finite, 0, optax.safe_increment(state.notfinite_count)),
            last_finite=finite, total_notfinite=bump(state.total_notfinite),
            inner_state=inner_state)

    return optax.GradientTransformation(init, update)


def make_optimizer(config: Any) -> optax.GradientTransformation:
    """AdamW (paper: lr 1e-4, weight decay 0) with optional global-norm clipping, inside
    `skip_non_finite`: a step whose gradients are not all finite changes neither the params
    nor the AdamW moments (the train loop then stops at its next check; see `bad_step`)."""
    o = config.optim
    chain = []
    if o.grad_clip and o.grad_clip > 0:
        chain.append(optax.clip_by_global_norm(o.grad_clip))
    chain.append(optax.adamw(learning_rate(config), b1=o.b1, b2=o.b2, eps=o.eps,
                             weight_decay=o.weight_decay))
    tx = skip_non_finite(optax.chain(*chain))
    if flattens(config):
        # One vector for all trainable leaves: a few large kernels instead of several per leaf
        # (small models on a CPU: faster step and compile), the finiteness check and its
        # `lax.cond` included. It gathers the leaves into one array, so it is skipped on an
        # fsdp mesh (sharded parameters stay sharded). (`optax.flatten` keeps the inner state
        # as it is: the same state tree as without it, on one vector.)
        tx = optax.flatten(tx)
    return tx
