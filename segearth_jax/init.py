"""Initial parameters the way big_vision makes them: abstract first, then each leaf once, in place.

1. `jax.eval_shape` of the model's init gives every parameter's shape (nothing allocated); the
   caller gives each leaf its dtype (trainable: param dtype, frozen: the compute dtype) and its
   sharding.
2. The converted checkpoints of `config.init` (`checkpoint`: a whole SegEarth-R2, `mllm`: under
   `mllm/`, `seg_head`: under `seg_head/`) are checked against the model: first the structure
   their `model.json` records against `config.model` (`check_structure`: FPN style, lm_head
   bias, vocabulary rows, every size; one error naming each `--config.model.*` flag to set),
   then their tree against the model's from their metadata alone (one error lists every
   unexpected, missing and mis-shaped key), then restored by orbax
   straight into their sharded targets, cast to the target dtype while reading: frozen weights
   never exist in float32, and no process holds a whole copy on the host.
3. What no checkpoint provides (LoRA factors, the `[SEG]` projector; everything for a model
   trained from scratch) comes from `jax.jit`s of the model's init whose outputs are only
   those leaves, with `out_shardings`: XLA drops the initializers of every other leaf (and the
   forward pass that `init` traces), and each device computes just its shard. The leaves are
   split into groups of at most 2 GiB (one jit each): the init makes a scanned stack in float32
   before the cast, and 2.7B float32 values at once would be 10.8 GB. The values are those of
   the full random init with the same key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import traverse_util

from segearth_jax import checkpoint, errors
from segearth_jax.models.mipha import MiphaConfig
from segearth_jax.models.seg_head import SegHeadConfig
from segearth_jax.models.segearth_r2 import SegEarthR2Config

# (config.init key, parameter prefix, leaves under the prefix a checkpoint may lack).
SOURCES = (
    ("checkpoint", "", r".*/lora_[ab]"),  # a whole model: LoRA factors start fresh
    ("mllm", "mllm", r".*/lora_[ab]"),  # convert.mipha output: no LoRA factors
    ("seg_head", "seg_head", r"$^"),  # convert.mask2former output: everything
)


# Model-config fields a training run chooses freely, whatever its checkpoint was made with:
# precision, kernels, rematerialization, dropout, LoRA (fresh factors), the attention probe.
# Every other field of `SegEarthR2Config` (sizes, vocabulary rows, lm_head bias, FPN style, norm
# epsilons, ...) is the checkpoint's structure and must agree (`check_structure`).
RUN_FIELDS = frozenset({"dtype", "param_dtype", "attention_impl", "scan", "remat_policy", "lora",
                        "resid_pdrop", "embd_pdrop", "seg_probe_heads"})


def checkpoint_structure(spec: dict[str, Any], key: str, source: str) -> Any | None:
    """The model config a `model.json` records for the `config.init.<key>` route: the whole
    `SegEarthR2Config` (kind segearth_r2: convert.segearth_r2 or a training export), a
    `MiphaConfig` (kind mipha, convert.mipha) or a `SegHeadConfig` (kind seg_head,
    convert.mask2former); None for another kind (the key check alone applies). A model.json
    that does not rebuild its model (an older version's) is one `BadValue` naming it."""
    kinds = {"checkpoint": ("segearth_r2", SegEarthR2Config), "mllm": ("mipha", MiphaConfig),
             "seg_head": ("seg_head", SegHeadConfig)}
    kind, cls = kinds[key]
    if spec["kind"] != kind:
        return None
    return checkpoint.model_config(source, spec, cls.from_config)


def _fields(cfg: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Leaf fields of nested config dataclasses, `RUN_FIELDS` left out: path -> value."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in RUN_FIELDS:
            continue
        if dataclasses.is_dataclass(value):
            out.update(_fields(value, (*path, f.name)))
        else:
            out[(*path, f.name)] = value
    return out


def _config_key(model_config: Any, path: tuple[str, ...]) -> str | None:
    """The `config.model` key that sets the field at `path` (e.g. ("mllm", "llm", "vocab_size")
    -> "model.mllm.llm.vocab_size"); None for a field derived from others (the pixel decoder's
    `in_channels`, the decoder's widths: `SegHeadConfig.from_config`)."""
    node = model_config
    for part in path:
        if not (hasattr(node, "keys") and part in node.keys()):
            return None
        node = node[part]
    return "model." + ".".join(path)


def check_structure(spec: dict[str, Any], config: Any, key: str, source: str) -> None:
    """Raises one `errors.BadValue` listing every structural field (all but `RUN_FIELDS`) where the
    checkpoint's `model.json` (`spec`) and `config.model` build different models for the
    `config.init.<key>` route, each with the flag that makes the config follow the checkpoint.
    Checked, not taken over: the config stays the one description of the model trained."""
    found = checkpoint_structure(spec, key, source)
    if found is None:
        return
    prefix = () if key == "checkpoint" else (key,)
    model = SegEarthR2Config.from_config(config.model)
    want = model if key == "checkpoint" else getattr(model, key)
    have, built = _fields(found, prefix), _fields(want, prefix)
    problems = []
    for path in sorted(have.keys() & built.keys()):
        if have[path] == built[path]:
            continue
        name = _config_key(config.model, path)
        fix = (f"set --config.{name}={have[path]!r}" if name else
               "derived from other fields: set those")
        problems.append(f"{'.'.join(path)}: the checkpoint has {have[path]!r}, the config "
                        f"builds {built[path]!r}: {fix}")
    if problems:
        raise errors.BadValue(f"{source} (config.init.{key}) holds another model than config.model "
                              f"builds ({len(problems)} fields of its model.json; make the config "
                              f"follow the checkpoint, or convert one for the config):\n  "
                              + "\n  ".join(problems))


def _flat(tree: Any) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep="/")


def checkpoint_shapes(directory: str | Path) -> dict[str, jax.ShapeDtypeStruct]:
    """'/'-path -> shape and dtype of every array of a parameter checkpoint (`directory/params`),
    read from its metadata (no array is loaded)."""
    path = Path(directory).absolute() / "params"
    if not path.exists():
        raise errors.MissingFile(f"{directory} (a config.init.* checkpoint): no parameter "
                                 f"checkpoint ({path} is missing)")
    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.metadata(path).item_metadata.tree
    return {k: jax.ShapeDtypeStruct(tuple(v.shape), v.dtype) for k, v in _flat(tree).items()}


def check_checkpoint(found: dict[str, jax.ShapeDtypeStruct], target: dict[str, Any],
                     prefix: str, missing_ok: str, source: str) -> None:
    """Raises one ValueError listing every key of `found` (relative to `prefix`) that the model
    lacks or shapes differently, and every model key under `prefix` it lacks (unless it matches
    `missing_ok`)."""
    full = lambda k: f"{prefix}/{k}" if prefix else k
    problems = []
    for k, v in found.items():
        if full(k) not in target:
            problems.append(f"unexpected {full(k)}")
        elif tuple(target[full(k)].shape) != tuple(v.shape):
            problems.append(f"{full(k)}: shape {tuple(v.shape)}, model expects "
                            f"{tuple(target[full(k)].shape)}")
    have = {full(k) for k in found}
    under = (lambda k: k.startswith(prefix + "/")) if prefix else (lambda k: True)
    problems += [f"missing {k}" for k in target
                 if under(k) and k not in have and not re.fullmatch(missing_ok, k)]
    if problems:
        raise errors.BadValue(f"{source} does not fit the model ({len(problems)} problems):\n  "
                              + "\n  ".join(problems))


def restore_into(directory: str | Path, keys: list[str], target: dict[str, Any], prefix: str
                 ) -> dict[str, jax.Array]:
    """Restores the checkpoint's `keys` (relative to `prefix`) into the dtype and sharding of
    their `target` leaves -> '/'-path (absolute) -> array."""
    full = lambda k: f"{prefix}/{k}" if prefix else k
    abstract = traverse_util.unflatten_dict({k: target[full(k)] for k in keys}, sep="/")
    restored = _flat(checkpoint.restore_params(directory, target=abstract))
    return {full(k): v for k, v in restored.items()}


def init_params(config: Any, random_init: Callable[[jax.Array], Any], rng: jax.Array,
                target: Any, group_bytes: int = 2**31) -> Any:
    """The model's initial parameters, each leaf with the dtype and sharding of `target`.

    random_init: rng -> the model's random params (traced only); target: the params' tree of
    `jax.ShapeDtypeStruct`s with `sharding`; config: reads `config.init` (see `SOURCES`).
    group_bytes: the random leaves are made by one jit per group of at most this many bytes
    (`_groups`), so that the init's float32 values are never all alive at once.
    """
    flat_target = _flat(target)
    leaves: dict[str, jax.Array] = {}
    for key, prefix, missing_ok in SOURCES:
        directory = config.init[key]
        if not directory:
            continue
        if (Path(directory) / "model.json").exists():
            check_structure(checkpoint.read_model_spec(directory), config, key, str(directory))
        found = checkpoint_shapes(directory)
        check_checkpoint(found, flat_target, prefix, missing_ok, str(directory))
        loaded = restore_into(directory, sorted(found), flat_target, prefix)
        overlap = leaves.keys() & loaded.keys()
        if overlap:
            raise errors.BadValue(f"{directory} provides parameters another init.* checkpoint "
                                  f"already gave: {sorted(overlap)[:5]}")
        leaves.update(loaded)

    missing = [k for k in flat_target if k not in leaves]
    abstract = _flat(jax.eval_shape(random_init, rng))
    for group in _groups(missing, {k: abstract[k] for k in missing}, group_bytes):
        def fresh(rng, group=group):
            flat = _flat(random_init(rng))
            return {k: flat[k].astype(flat_target[k].dtype) for k in group}

        shardings = {k: flat_target[k].sharding for k in group}
        leaves.update(jax.jit(fresh, out_shardings=shardings)(rng))
    return traverse_util.unflatten_dict({k: leaves[k] for k in flat_target}, sep="/")


def _groups(keys: list[str], shapes: dict[str, Any], limit: int) -> list[list[str]]:
    """`keys` packed into groups of at most `limit` bytes as the init makes them (a larger leaf
    alone), largest first: one jit per group bounds what its init holds at once (the init's
    own dtype, e.g. a scanned stack's float32 before the cast to bfloat16)."""
    size = lambda k: shapes[k].size * shapes[k].dtype.itemsize
    groups, current, total = [], [], 0
    for k in sorted(keys, key=size, reverse=True):
        if current and total + size(k) > limit:
            groups.append(current)
            current, total = [], 0
        current.append(k)
        total += size(k)
    return groups + ([current] if current else [])

