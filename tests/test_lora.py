"""LoRA: exact base behaviour at init, equality with the merged weights, regex targeting."""

import re

import jax
import numpy as np
import pytest

from segearth_jax.models.lora import LoRAConfig, lora_module_paths, merge_lora
from segearth_jax.models.mipha import Mipha, MiphaConfig

TOL = 1e-4  # fp32 max abs error.


def _with_lora(base_params, lora: LoRAConfig, seed=0):
    """Base params plus freshly initialized LoRA factors."""
    model = Mipha(MiphaConfig.from_variant("tiny", llm=dict(lora=lora)))
    ids, px = np.zeros((1, 4), np.int32), np.zeros((1, 56, 56, 3), np.float32)
    fresh = model.init(jax.random.key(seed), ids, px)["params"]
    merged = jax.tree_util.tree_map(lambda x: x, fresh)

    def fill(dst, src):
        for k, v in src.items():
            if isinstance(v, dict):
                fill(dst[k], v)
            else:
                dst[k] = v
    fill(merged, base_params)
    return model, merged


def _ids(seed=0):
    return np.random.default_rng(seed).integers(0, 512, (2, 12)).astype(np.int32)


def test_zero_init_b_gives_the_base_model_exactly(tiny_params):
    base = Mipha(MiphaConfig.from_variant("tiny"))
    model, params = _with_lora(tiny_params, LoRAConfig(rank=8))
    want, _ = base.apply({"params": tiny_params}, _ids())
    got, _ = model.apply({"params": params}, _ids())
    np.testing.assert_array_equal(got, want)


def test_lora_output_equals_merged_weights(tiny_params):
    lora = LoRAConfig(rank=4, alpha=16.0, dropout=0.05)
    model, params = _with_lora(tiny_params, lora)
    rng = np.random.default_rng(1)
    for path in lora_module_paths(params):
        node = params
        for k in path.split("/"):
            node = node[k]
        node["lora_b"] = rng.normal(0, 0.5, node["lora_b"].shape).astype(np.float32)
    got, _ = model.apply({"params": params}, _ids(1))
    base = Mipha(MiphaConfig.from_variant("tiny"))
    want, _ = base.apply({"params": merge_lora(params, lora.scaling)}, _ids(1))
    plain, _ = base.apply({"params": tiny_params}, _ids(1))
    assert np.max(np.abs(got - plain)) > 1e-2  # LoRA changed the output...
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)  # ...exactly as the merge does.


@pytest.mark.parametrize("targets", [r".*/(q_proj|v_proj)", r".*/mlp/fc[12]", r".*self_attn/dense"])
def test_target_paths_match_the_regex(targets):
    lora = LoRAConfig(rank=2, targets=targets)
    model = Mipha(MiphaConfig.from_variant("tiny", llm=dict(lora=lora)))
    params = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    with_lora = set(lora_module_paths(params))
    dense_paths = {p for p in _module_paths(params["llm"], "llm") if p.rsplit("/", 1)[-1]
                   in {"q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"}}
    assert with_lora == {p for p in dense_paths if re.fullmatch(targets, p)}
    assert with_lora  # the regex selects something in each case
    for p in with_lora:  # stacked over the scanned layers: [layers, in, r]
        node = params
        for k in p.split("/"):
            node = node[k]
        assert node["lora_a"].shape[0] == 2 and node["lora_a"].shape[-1] == 2


def _module_paths(tree, prefix):
    for k, v in tree.items():
        if isinstance(v, dict):
            if "kernel" in v:
                yield f"{prefix}/{k}"
            yield from _module_paths(v, f"{prefix}/{k}")


def test_lora_dropout_only_in_training(tiny_params):
    model, params = _with_lora(tiny_params, LoRAConfig(rank=4, dropout=0.5))
    for path in lora_module_paths(params):
        node = params
        for k in path.split("/"):
            node = node[k]
        node["lora_b"] = np.ones(node["lora_b"].shape, np.float32)
    eval1, _ = model.apply({"params": params}, _ids())
    eval2, _ = model.apply({"params": params}, _ids())
    train, _ = model.apply({"params": params}, _ids(), deterministic=False,
                           rngs={"dropout": jax.random.key(3)})
    np.testing.assert_array_equal(eval1, eval2)
    assert np.max(np.abs(train - eval1)) > 1e-3
