"""Parameter checkpoints on disk: an orbax PyTree checkpoint plus a small JSON model spec.

Layout of a converted/exported model directory:
  params/      orbax checkpoint of the parameter tree
  model.json   how to rebuild the model: {"kind": "mipha" | "seg_head" | "swin" | "segearth_r2",
               "model": every size and knob (the `to_config` of its config class), ...}
  tokenizer/   tokenizer files (when the source had them)

A model.json of the version that stored preset names instead of sizes is expanded from those
presets (`explicit_model`, `models/legacy.py`) and can be rewritten (`rewrite_model_spec`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from segearth_jax import errors

log = logging.getLogger(__name__)

# Replica-parallel saving (orbax's default on CPU and TPU, off on GPU) splits an array that is
# replicated over data replicas so that each replica writes a part; each part is a jitted slice,
# one compile per array shape at a process's first save, and a dispatch at every save. Under
# this many bytes per part that costs more than the parallel write saves, so such arrays are
# written whole by one replica (the same files either way). Measured on the tiny state over a
# 2 x 4 CPU mesh: first save 20.2 -> 2.3 s, later saves 6.0 -> 2.0 s (experiments/RESULTS.md).
MIN_REPLICA_PARALLEL_BYTES = 1 << 20


def configure_array_saving() -> None:
    """Sets orbax's handler of `jax.Array` leaves (its global registry) to replica-parallel
    writes for parts of at least `MIN_REPLICA_PARALLEL_BYTES` only. Called before every save of
    this package; idempotent."""
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(
            min_slice_bytes_for_replica_parallel=MIN_REPLICA_PARALLEL_BYTES), override=True)


def save_params(directory: str | Path, params: Any) -> None:
    """Writes `params` to `directory/params` (synchronously)."""
    path = Path(directory).absolute() / "params"
    configure_array_saving()
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


def explicit_model(directory: str | Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The "model" entry of `spec` with every size and knob: as stored, or, for a model.json of
    the version that stored preset names (`models.legacy`), expanded from those presets with a
    one-line warning that says how to rewrite the file (`rewrite_model_spec`)."""
    from segearth_jax.models import legacy

    if not legacy.is_legacy(spec):
        return spec["model"]
    log.warning("%s names size presets (a model.json of an older version); built from those "
                "presets. To spell out every size in it: python -c \"from segearth_jax import "
                "checkpoint; checkpoint.rewrite_model_spec('%s')\"", Path(directory) / "model.json",
                directory)
    return legacy.expand(spec)


def rewrite_model_spec(directory: str | Path) -> Path:
    """Rewrites an old `directory/model.json` (preset names) with its explicit "model" entry,
    the old file kept as `model.json.old`; a current model.json stays as it is. Returns the
    model.json's path."""
    from segearth_jax.models import legacy

    path = Path(directory) / "model.json"
    spec = read_model_spec(directory)
    if legacy.is_legacy(spec):
        new = {k: v for k, v in spec.items() if k != "overrides"}  # folded into "model" (mipha)
        new["model"] = legacy.expand(spec)
        path.rename(path.with_name("model.json.old"))
        write_model_spec(directory, new)
    return path


def model_config(directory: str | Path, spec: dict[str, Any], from_config: Any) -> Any:
    """`from_config` of the explicit "model" entry (`explicit_model`), or a `BadValue` naming
    the model.json when that entry is missing or does not rebuild the model."""
    try:
        return from_config(explicit_model(directory, spec))
    except (KeyError, TypeError, ValueError) as e:
        raise errors.BadValue(f"{Path(directory) / 'model.json'}: its \"model\" entry does not "
                              f"rebuild the model ({e}); a model.json of an older version: re-run "
                              "the converter or re-export") from None
