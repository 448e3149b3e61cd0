"""The optimizer (segearth_jax/optim.py): AdamW inside `optax.apply_if_finite`, on per-leaf
arrays or on one flat vector (`optim.flatten`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import tiny
from segearth_jax import optim


def _config(flatten: bool):
    c = tiny.get_config()
    c.optim.flatten = flatten
    c.optim.grad_clip = 1.0
    return c


def _tree(seed: int) -> dict:
    k = jax.random.split(jax.random.key(seed), 3)
    return {"a": {"kernel": jax.random.normal(k[0], (3, 4)), "bias": jax.random.normal(k[1], (4,))},
            "b": jax.random.normal(k[2], (2, 2, 5))}


def _reference(config) -> optax.GradientTransformation:
    """The transformation `make_optimizer` stands for, from optax's own parts."""
    o = config.optim
    return optax.apply_if_finite(optax.chain(
        optax.clip_by_global_norm(o.grad_clip),
        optax.adamw(optim.learning_rate(config), b1=o.b1, b2=o.b2, eps=o.eps,
                    weight_decay=o.weight_decay)), max_consecutive_errors=2**30)


@pytest.mark.parametrize("flatten", [False, True])
def test_finite_steps_are_optax_adamw_and_the_state_tree_is_optax_s(flatten):
    config = _config(flatten)
    tx, ref = optim.make_optimizer(config), _reference(_config(False))
    params = _tree(0)
    state, ref_state = tx.init(params), ref.init(params)
    if not flatten:  # the same tree as optax.apply_if_finite's: checkpoints interchange
        assert jax.tree.structure(state) == jax.tree.structure(ref_state)
        assert jax.tree.map(jnp.shape, state) == jax.tree.map(jnp.shape, ref_state)
    for seed in (1, 2, 3):
        grads = _tree(seed)
        updates, state = tx.update(grads, state, params)
        ref_updates, ref_state = ref.update(grads, ref_state, params)
        # Elementwise math either way; flat sums (the clip's norm) may round differently.
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
                     updates, ref_updates)
        params = optax.apply_updates(params, updates)
    assert int(state.total_notfinite) == 0 and bool(state.last_finite)


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_gradient_changes_neither_params_nor_moments(flatten, bad):
    config = _config(flatten)
    tx = optim.make_optimizer(config)
    params = _tree(0)
    state = tx.init(params)
    _, state = tx.update(_tree(1), state, params)  # moments away from zero
    grads = _tree(2)
    grads["a"]["bias"] = grads["a"]["bias"].at[1].set(bad)
    updates, skipped = tx.update(grads, state, params)
    assert all(np.array_equal(u, np.zeros_like(u)) for u in jax.tree.leaves(updates))
    jax.tree.map(np.testing.assert_array_equal, skipped.inner_state, state.inner_state)
    assert (int(skipped.notfinite_count), int(skipped.total_notfinite)) == (1, 1)
    assert not bool(skipped.last_finite)
    _, again = tx.update(grads, skipped, params)
    assert (int(again.notfinite_count), int(again.total_notfinite)) == (2, 2)
    # A finite step after them updates again and resets the consecutive count only.
    updates, after = tx.update(_tree(3), again, params)
    assert any(np.any(u != 0) for u in jax.tree.leaves(updates))
    assert (int(after.notfinite_count), int(after.total_notfinite)) == (0, 2)
    assert bool(after.last_finite)
