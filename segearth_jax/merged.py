"""The merged inference model of a training state: every LoRA pair folded into its kernel
(`kernel + lora_a @ lora_b * alpha / rank`), written as a model directory (`checkpoint.py`
layout, kind `segearth_r2`, the model built with LoRA rank 0) with `model.json` and the tokenizer.

Multi-host: the parameters stay global arrays on the mesh from start to end. Each LoRA kernel is
merged by its own jit whose output keeps the kernel's sharding (one leaf at a time: no process
ever holds a second copy of the model, nor any array it does not own), and orbax writes the tree
with every process writing its own shards, so the directory must be on storage every process
sees. Nothing calls `jax.device_get` on a parameter: under fsdp across hosts no process can
address a whole one. Called by training (`workdir/export`, `workdir/best`), the
`segearth_jax.export` program and `segearth_jax.testing`.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections

from segearth_jax import checkpoint, optim, sharding
from segearth_jax.input.settings import Settings
from segearth_jax.models.lora import merge_lora


def merged_params(config: ml_collections.ConfigDict, params: dict) -> dict:
    """The full parameter tree (global arrays) with every LoRA pair folded into its kernel, one
    kernel at a time, each merged kernel in the kernel's sharding; other leaves are the inputs
    themselves (no copy)."""
    lora = config.model.mllm.llm.lora
    if not lora.rank:
        return params
    scaling = lora.alpha / lora.rank

    def walk(tree: Mapping[str, Any]) -> dict:
        out = {}
        for k, v in tree.items():
            if isinstance(v, Mapping):
                v = walk(v)
                if "lora_a" in v:
                    a, b = v.pop("lora_a"), v.pop("lora_b")
                    merge = jax.jit(lambda kern, a, b: merge_lora(
                        {"m": {"kernel": kern, "lora_a": a, "lora_b": b}}, scaling)["m"]["kernel"],
                        out_shardings=v["kernel"].sharding)
                    v["kernel"] = merge(v["kernel"], a, b)
            out[k] = v
        return out

    return walk(params)


def write_model(directory: Path, config: ml_collections.ConfigDict, trainable: dict,
                frozen: dict, tokenizer_dir: Path) -> Path:
    """Writes the merged model of `trainable` + `frozen` (global arrays, any sharding) to
    `directory` (replaced if it exists). Every process must call it: each writes its shards."""
    merged = merged_params(config, optim.merge_params(trainable, frozen))
    if jax.process_index() == 0 and directory.exists():
        shutil.rmtree(directory)
    sharding.barrier(f"export {directory}: cleared")
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint.save_params(directory, merged)
    model = config.model.to_dict()
    model["mllm"]["llm"]["lora"] = {**model["mllm"]["llm"]["lora"], "rank": 0, "dropout": 0.0}
    if jax.process_index() == 0:
        checkpoint.write_model_spec(directory, {
            "kind": "segearth_r2", "model": model,
            "input": Settings.from_config(config.data).to_spec()})
        shutil.copytree(tokenizer_dir, directory / "tokenizer")
    sharding.barrier(f"export {directory}: written")
    return directory
