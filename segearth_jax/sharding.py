"""Device mesh and sharding rules (docs/architecture.md section 4).

One 2-D mesh with axes `data` and `fsdp`. The batch is split over both axes (FSDP is data
parallel too); a parameter (and its optimizer state) is split over `fsdp` along its largest
dimension that divides evenly, when it is big enough to be worth it; everything else is
replicated. The same code runs on 1 CPU, 8 simulated CPU devices, a GPU node or a TPU slice.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def maybe_initialize_distributed(config: Any) -> None:
    """`jax.distributed.initialize()` when the config asks for several processes.

    `config.distributed`: `enabled` (bool; on TPU pods/SLURM the arguments are discovered),
    optional `coordinator_address`, `num_processes`, `process_id`, and `cpu_collectives`
    (CPU-only runs: "gloo"). Must run before anything initializes a JAX backend.
    """
    d = config.distributed
    if not d.enabled:
        return
    kwargs = {k: d[k] for k in ("coordinator_address", "num_processes", "process_id")
              if d[k] is not None}
    if d.cpu_collectives:  # CPU processes need a collectives backend (e.g. "gloo")
        jax.config.update("jax_cpu_collectives_implementation", d.cpu_collectives)
    jax.distributed.initialize(**kwargs)


def make_mesh(data: int = -1, fsdp: int = 1, devices: Any = None) -> Mesh:
    """A (data, fsdp) mesh over all devices; -1 takes the remaining devices."""
    devices = jax.devices() if devices is None else devices
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("at most one mesh axis may be -1")
    if data == -1:
        data = n // fsdp
    if fsdp == -1:
        fsdp = n // data
    if data * fsdp != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} does not cover the {n} devices")
    return Mesh(np.asarray(devices).reshape(data, fsdp), ("data", "fsdp"))


def param_spec(shape: tuple[int, ...], fsdp: int, min_size: int = 2**14) -> P:
    """Shard the largest evenly divisible dimension over `fsdp` (replicate small arrays)."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda i: -shape[i]):
        if shape[dim] % fsdp == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def param_shardings(mesh: Mesh, tree: Any) -> Any:
    """NamedShardings for a tree of arrays or ShapeDtypeStructs."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree_util.tree_map(
        lambda x: NamedSharding(mesh, param_spec(tuple(x.shape), fsdp)), tree)


def batch_axes(mesh: Mesh, batch_size: int) -> tuple[str, ...]:
    """The mesh axes a batch of `batch_size` rows splits over: data x fsdp when the rows divide
    evenly over them; else `data` alone, the batch then replicated over `fsdp` (e.g. batch 4 on
    fsdp=8: every device computes the 4 rows while the state stays sharded). Raises when not even
    `data` divides the rows, or when replicating over fsdp would need the same rows from several
    processes (each process reads its own rows)."""
    if batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0:
        return BATCH_AXES
    if batch_size % mesh.shape["data"]:
        raise ValueError(f"batch {batch_size} does not divide over the mesh's data axis "
                         f"({mesh.shape['data']}) nor data x fsdp ({mesh.size})")
    if jax.process_count() > 1:
        raise ValueError(f"batch {batch_size} must be a multiple of the {mesh.size} devices "
                         "when several processes train (each reads its own rows)")
    return ("data",)


def batch_sharding(mesh: Mesh, ndim: int, axes: tuple[str, ...] = BATCH_AXES
                   ) -> NamedSharding:
    """Leading (batch) axis over `axes` (default data x fsdp), the rest replicated."""
    return NamedSharding(mesh, P(axes, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(mesh: Mesh, local: dict[str, np.ndarray],
                 axes: tuple[str, ...] = BATCH_AXES) -> dict[str, jax.Array]:
    """This process's slice of the batch -> global arrays sharded on the batch `axes`."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim, axes), v)
            for k, v in local.items()}
