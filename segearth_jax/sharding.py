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
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def maybe_initialize_distributed(config: Any) -> None:
    """`jax.distributed.initialize()` when `config.distributed.enabled`.

    By default JAX finds the cluster itself (SLURM, TPU pods, Kubernetes/GKE, Open MPI): the
    coordinator, process count and id come from the environment. `coordinator_address`,
    `num_processes` and `process_id` (None: detected) override that, for clusters JAX does not
    detect (and the CPU tests); `cpu_collectives` ("gloo") is the collectives backend of CPU
    processes. Must run before anything initializes a JAX backend.
    """
    d = config.distributed
    if not d.enabled:
        return
    kwargs = {k: d[k] for k in ("coordinator_address", "num_processes", "process_id")
              if d[k] is not None}
    if d.cpu_collectives:  # CPU processes need a collectives backend (e.g. "gloo")
        jax.config.update("jax_cpu_collectives_implementation", d.cpu_collectives)
    jax.distributed.initialize(**kwargs)


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Waits until every process gets here (the coordination service's barrier; nothing on the
    devices). Before the first collective of a new program: CPU (gloo) collectives give a late
    peer only 30 s, and processes can drift further apart while each compiles or loads."""
    if jax.process_count() > 1:
        from jax._src import distributed  # the client orbax's barriers use too

        _BARRIERS[0] += 1  # a fresh id per call (every process calls in the same order)
        distributed.global_state.client.wait_at_barrier(f"{name} #{_BARRIERS[0]}",
                                                        timeout_s * 1000)


_BARRIERS = [0]


def make_mesh(data: int = -1, fsdp: int = 1, devices: Any = None, *, dcn_data: int = 1,
              dcn_fsdp: int = 1) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default: all of them); -1 takes the remaining devices.

    The devices are laid out from the topology (`mesh_utils.create_device_mesh`: TPU ICI
    rings, GPU NVLink order), not by a plain reshape. `dcn_data` x `dcn_fsdp` > 1 builds a
    hybrid mesh (`create_hybrid_device_mesh`) over that many granules (TPU slices, or processes
    elsewhere), each axis spanning `dcn_<axis>` of them: e.g. 2 hosts x 4 devices with data=2,
    fsdp=4, dcn_fsdp=2 puts 2 devices of each host in every fsdp row (the fsdp axis spans both
    hosts); with dcn 1 x 1 (the default) the 4 devices of a host make one fsdp row.
    """
    devices = jax.devices() if devices is None else list(devices)
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("at most one mesh axis may be -1")
    if data == -1:
        data = n // fsdp
    if fsdp == -1:
        fsdp = n // data
    if data * fsdp != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} does not cover the {n} devices")
    if dcn_data * dcn_fsdp == 1:
        grid = mesh_utils.create_device_mesh((data, fsdp), devices, allow_split_physical_axes=True)
    else:
        if data % dcn_data or fsdp % dcn_fsdp:
            raise ValueError(f"mesh data={data} x fsdp={fsdp} does not split into dcn_data="
                             f"{dcn_data} x dcn_fsdp={dcn_fsdp} granules")
        granule = devices[0].platform != "tpu"  # TPU slices, else processes
        grid = mesh_utils.create_hybrid_device_mesh(
            (data // dcn_data, fsdp // dcn_fsdp), (dcn_data, dcn_fsdp), devices,
            process_is_granule=granule, allow_split_physical_axes=True)
    return Mesh(grid, ("data", "fsdp"))


def mesh_from_config(mesh: Any, devices: Any = None) -> Mesh:
    """`make_mesh` from a `config.mesh` (keys data, fsdp, dcn_data, dcn_fsdp)."""
    return make_mesh(mesh.data, mesh.fsdp, devices, dcn_data=mesh.dcn_data,
                     dcn_fsdp=mesh.dcn_fsdp)


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
    fsdp=8: every device computes the 4 rows while the state stays sharded; processes holding
    the same data coordinate read the same rows, `process_rows`). Raises when not even `data`
    divides the rows."""
    if batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0:
        return BATCH_AXES
    if batch_size % mesh.shape["data"]:
        raise ValueError(f"batch {batch_size} does not divide over the mesh's data axis "
                         f"({mesh.shape['data']}) nor data x fsdp ({mesh.size})")
    return ("data",)


def process_rows(mesh: Mesh, batch_size: int, axes: tuple[str, ...] = BATCH_AXES,
                 process: int | None = None) -> np.ndarray:
    """The rows of a global batch [batch_size, ...] split over `axes` that the devices of
    `process` (default: this one) hold, ascending: what that process reads. The input is sharded
    by data replica, not by process index: processes whose devices share a data coordinate read
    the same rows."""
    process = jax.process_index() if process is None else process
    index = batch_sharding(mesh, 1, axes).devices_indices_map((batch_size,))
    rows = set()
    for device, (sl,) in index.items():
        if device.process_index == process:
            rows.update(range(*sl.indices(batch_size)))
    return np.asarray(sorted(rows), np.int64)


def row_owners(mesh: Mesh, batch_size: int, axes: tuple[str, ...] = BATCH_AXES) -> np.ndarray:
    """[batch_size] the one process that scores each row when several hold it (evaluation):
    row r goes to the (r mod k)-th of its k holders, so the work spreads over them."""
    holders: list[set[int]] = [set() for _ in range(batch_size)]
    index = batch_sharding(mesh, 1, axes).devices_indices_map((batch_size,))
    for device, (sl,) in index.items():
        for r in range(*sl.indices(batch_size)):
            holders[r].add(device.process_index)
    return np.asarray([sorted(h)[r % len(h)] for r, h in enumerate(holders)], np.int32)


def batch_sharding(mesh: Mesh, ndim: int, axes: tuple[str, ...] = BATCH_AXES
                   ) -> NamedSharding:
    """Leading (batch) axis over `axes` (default data x fsdp), the rest replicated."""
    return NamedSharding(mesh, P(axes, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(mesh: Mesh, local: dict[str, np.ndarray], batch_size: int,
                 axes: tuple[str, ...] = BATCH_AXES) -> dict[str, jax.Array]:
    """This process's rows of a `batch_size`-row batch (`process_rows`, in order) -> global
    arrays sharded on the batch `axes`."""
    return {k: jax.make_array_from_process_local_data(
        batch_sharding(mesh, v.ndim, axes), v, (batch_size, *v.shape[1:]))
        for k, v in local.items()}
