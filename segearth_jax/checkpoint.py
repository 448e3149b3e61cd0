"""Parameter checkpoints on disk: an orbax PyTree checkpoint plus a small JSON model spec.

Layout of a converted/exported model directory:
  params/      orbax checkpoint of the parameter tree
  model.json   how to rebuild the model: {"kind": "mipha" | "seg_head" | "swin" | "segearth_r2",
               "model": every size and knob (the `to_config` of its config class), ...}
  tokenizer/   tokenizer files (when the source had them)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from segearth_jax import errors


def save_params(directory: str | Path, params: Any) -> None:
    """Writes `params` to `directory/params` (synchronously)."""
    path = Path(directory).absolute() / "params"
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, params)


def restore_params(directory: str | Path, target: Any | None = None) -> Any:
    """Reads `directory/params`; with `target` (arrays or ShapeDtypeStructs, e.g. from
    `jax.eval_shape`) the tree, dtypes and shardings are checked and cast to it. Without one,
    every array is read whole onto this process's first device, whatever the topology that
    wrote it (a multi-host export's shards are reassembled)."""
    path = Path(directory).absolute() / "params"
    if not path.exists():
        raise errors.MissingFile(f"{directory}: no parameter checkpoint ({path} is missing)")
    with ocp.StandardCheckpointer() as ckptr:
        if target is None:
            one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            target = jax.tree_util.tree_map(
                lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=one),
                ckptr.metadata(path).item_metadata.tree)
            return ckptr.restore(path, target)
        target = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            target)
        return ckptr.restore(path, target)


def write_model_spec(directory: str | Path, spec: dict[str, Any]) -> None:
    (Path(directory) / "model.json").write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")


def read_model_spec(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "model.json"
    if not Path(directory).is_dir():
        raise errors.MissingFile(f"{directory}: no such model directory (a converter's --out or a "
                                 "training export)")
    if not path.exists():
        raise errors.MissingFile(f"{path} is missing: {directory} is not a converted model (a "
                                 "converter's --out) or a training export")
    return json.loads(path.read_text())


def model_config(directory: str | Path, spec: dict[str, Any], from_config: Any) -> Any:
    """`from_config(spec["model"])`, or a `BadValue` naming the model.json when its "model"
    entry is missing or does not hold every size and knob (an older model.json stored a variant
    name)."""
    try:
        return from_config(spec["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise errors.BadValue(f"{Path(directory) / 'model.json'}: its \"model\" entry does not "
                              f"rebuild the model ({e}); a model.json of an older version: re-run "
                              "the converter or re-export") from None
