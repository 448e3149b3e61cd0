"""The jaxpr FLOP counter (segearth_jax/flops.py) against hand-computed counts.

Counts are exact integers (2 FLOPs per multiply-add of every matmul and convolution), so every
comparison is equality.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segearth_jax.flops import count_flops, scope_of
from segearth_jax.models.phi import PhiConfig, PhiForCausalLM

B, D_IN, H, D_OUT = 4, 8, 16, 32


def _s(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def _mlp(w1, w2, x):
    return jnp.sum(jnp.tanh(x @ w1) @ w2)


def test_dense_forward_and_what_autodiff_keeps():
    args = (_s(D_IN, H), _s(H, D_OUT), _s(B, D_IN))
    fwd = 2 * B * D_IN * H + 2 * B * H * D_OUT
    assert count_flops(_mlp, *args).total == fwd
    # w1 trained, w2 frozen, x data: dh = dy w2^T and dw1 = x^T dh; no dw2, no dx.
    assert count_flops(jax.grad(_mlp), *args).total == fwd + 2 * B * H * D_OUT + 2 * B * D_IN * H
    # Both weights trained: + dw2 = h^T dy.
    both = jax.grad(_mlp, argnums=(0, 1))
    assert count_flops(both, *args).total == fwd + 4 * B * H * D_OUT + 2 * B * D_IN * H

    # A frozen tower in front that no gradient reaches has no backward at all.
    def tower(w0, w1, w2, x):
        return _mlp(w1, w2, jnp.tanh(x @ w0))

    grad = jax.grad(tower, argnums=(1, 2))
    assert count_flops(grad, _s(D_IN, D_IN), *args).total == (
        2 * B * D_IN * D_IN + fwd + 4 * B * H * D_OUT + 2 * B * D_IN * H)


def test_scan_counts_every_iteration_and_remat_recomputes():
    length = 5

    def layer(c, w):
        return jnp.tanh(c @ w), None

    def stack(layer_fn):
        return jax.jit(lambda ws, x: jnp.sum(jax.lax.scan(layer_fn, x, ws)[0]))

    args = (_s(length, D_IN, D_IN), _s(B, D_IN))
    one = 2 * B * D_IN * D_IN
    assert count_flops(stack(layer), *args).total == length * one
    # Backward per layer: dW and dx (the scanned body is the same for every layer).
    assert count_flops(jax.grad(stack(layer)), *args).total == 3 * length * one
    # Rematerialized: the forward again in the backward (hardware, not model, FLOPs).
    assert count_flops(jax.grad(stack(jax.checkpoint(layer))), *args).total == 4 * length * one


def test_convolutions_dense_and_grouped():
    n, hw, cin, cout, k = 2, 10, 6, 12, 3

    def conv(x, w, groups=1):
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", feature_group_count=groups,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    out = n * hw * hw * cout
    got = count_flops(conv, _s(n, hw, hw, cin), _s(k, k, cin, cout))
    assert got.by_primitive == {"conv_general_dilated": 2 * out * k * k * cin}
    # Depthwise-like: 3 groups of 2 input channels.
    got = count_flops(lambda x, w: conv(x, w, 3), _s(n, hw, hw, cin), _s(k, k, cin // 3, cout))
    assert got.total == 2 * out * k * k * (cin // 3)
    # Strided (patch embedding): out positions x window x in-features.
    strided = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert count_flops(strided, _s(n, hw, hw, cin), _s(2, 2, cin, cout)).total == (
        2 * n * 5 * 5 * cout * 2 * 2 * cin)
    # The weight gradient of a conv is a conv too, as costly as the forward.
    dw = jax.value_and_grad(lambda w, x: jnp.sum(conv(x, w)))
    assert count_flops(dw, _s(k, k, cin, cout), _s(n, hw, hw, cin)).total == (
        2 * (2 * out * k * k * cin))


def test_cond_takes_the_costliest_branch_while_counts_its_body_once():
    def f(p, x, w):
        return jax.lax.cond(p, lambda: x @ w @ w.T, lambda: jnp.tanh(x))

    assert count_flops(f, _s(dtype=bool), _s(B, D_IN), _s(D_IN, H)).total == 4 * B * D_IN * H

    def g(x, w):
        return jax.lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] @ w),
                                  (0, x))[1]

    got = count_flops(g, _s(B, D_IN), _s(D_IN, D_IN))
    assert (got.total, got.while_loops) == (2 * B * D_IN * D_IN, 1)


def test_flops_by_module_and_phase():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.Dense(H, use_bias=False, name="encoder")(x)
            return nn.Dense(D_OUT, use_bias=False, name="head")(jnp.tanh(h))

    net = Net()
    params = jax.eval_shape(net.init, jax.random.key(0), _s(B, D_IN))["params"]

    def loss(head, encoder, x):  # the head trained, the encoder frozen
        return net.apply({"params": {"head": head, "encoder": encoder}}, x).sum()

    got = count_flops(jax.value_and_grad(loss), params["head"], params["encoder"], _s(B, D_IN),
                      depth=1)
    # Backward: the head's weight gradient only (no gradient flows on into the encoder).
    assert got.by_scope == {("encoder", "forward"): 2 * B * D_IN * H,
                            ("head", "forward"): 2 * B * H * D_OUT,
                            ("head", "backward"): 2 * B * H * D_OUT}


def test_phi_forward_matches_the_closed_form():
    """Our Phi (tiny, XLA attention) against the textbook count: per token and layer the q, k,
    v, dense, fc1, fc2 matmuls, QK^T and AV over all T keys (causal masking does not skip the
    masked half in XLA's path), and the lm_head."""
    cfg = PhiConfig.from_variant("tiny", attention_impl="xla")
    b, t = 2, 24
    e, n_layers, inter, vocab = cfg.hidden_size, cfg.num_layers, cfg.intermediate_size, \
        cfg.vocab_size
    model = PhiForCausalLM(cfg)
    ids = np.zeros((b, t), np.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), ids)["params"]
    got = count_flops(lambda p, x: model.apply({"params": p}, x), params,
                      _s(b, t, dtype=jnp.int32), depth=1)
    per_token = n_layers * (4 * e * e + 2 * e * inter + 2 * t * e) + e * vocab
    assert got.total == 2 * b * t * per_token
    assert got.by_scope == {("model", "forward"): 2 * b * t * (per_token - e * vocab),
                            ("lm_head", "forward"): 2 * b * t * e * vocab}
    assert got.while_loops == 0


@pytest.mark.parametrize("stack, depth, want", [
    ("transpose(jvp(SegEarthR2))/mllm/llm/model/layers/mlp/fc1", 2, ("mllm/llm", "backward")),
    ("jvp(SegEarthR2)/mllm/mllm.encode_images/vision_tower/layers/fc1", 2,
     ("mllm/vision_tower", "forward")),
    # HLO metadata of a scanned layer: the loop's scopes are not modules.
    ("transpose(jvp(SegEarthR2))/mllm/llm/model/while/body/closed_call/layers/self_attn/vmap()/mul",
     9, ("mllm/llm/model/layers/self_attn", "backward")),
    ("jvp(SegEarthR2)/mllm/llm/model/layers/self_attn/bshd,blhd->bhsl", 9,
     ("mllm/llm/model/layers/self_attn", "forward")),
    ("jvp(jit(_uniform))/add", 2, ("", "forward")),
])
def test_scope_of_name_stacks(stack, depth, want):
    assert scope_of(stack, depth) == want
