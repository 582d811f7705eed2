"""Data parallelism, and optionally FSDP, on JAX's own `jax.sharding`: no home-made distribution.

A run trains on a `Mesh` of devices with axes ("data", "fsdp"), shaped by `RunConfig.mesh_shape`
(default (-1, 1): every local device on "data"). Batches are split along their rows over both
axes; parameters, optimizer state and weight averages are replicated, or with fsdp > 1 each
array is split along its largest dimension that the fsdp axis divides (small ones stay
replicated). XLA inserts the gradient all-reduce (or reduce-scatter / all-gather) itself.

The layout is a function of shapes only, so a checkpoint restores onto any mesh: `place` the
targets on the new one and Orbax reads each array into that sharding (4 devices -> 1 and back).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from framework.errors import ConfigError

AXES = ("data", "fsdp")


def make_mesh(shape: tuple[int, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default: all devices); -1 on data takes every device fsdp leaves."""
    devices = list(jax.devices() if devices is None else devices)
    data, fsdp = shape
    if data == -1:
        data = len(devices) // fsdp
    if data < 1 or data * fsdp > len(devices):
        raise ConfigError("mesh_shape", f"{tuple(shape)} needs {max(data, 1) * fsdp} devices; "
                                        f"{len(devices)} are available ({devices[0].platform})")
    return Mesh(np.array(devices[:data * fsdp]).reshape(data, fsdp), AXES)


def check_batch(mesh: Mesh, batch_size: int) -> None:
    """The batch is split evenly over every device of the mesh (checked before anything compiles)."""
    n = mesh.size
    if batch_size % n:
        raise ConfigError("batch_size", f"{batch_size} does not split over the {n} devices of mesh_shape "
                                        f"{tuple(mesh.devices.shape)}; use a multiple of {n}")


def spec(shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    """Replicated, or the largest dimension that `fsdp` divides split over "fsdp"."""
    if fsdp > 1:
        dims = sorted((d for d, n in enumerate(shape) if n % fsdp == 0 and n >= fsdp), key=lambda d: -shape[d])
        if dims:
            parts: list[str | None] = [None] * len(shape)
            parts[dims[0]] = "fsdp"
            return PartitionSpec(*parts)
    return PartitionSpec()


def shardings(tree, mesh: Mesh):
    """The NamedSharding of every leaf of a parameter-shaped tree (params, Adam moments, averages)."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, spec(np.shape(x), fsdp)), tree)


def place(tree, mesh: Mesh):
    """Put a tree of arrays on the mesh in its layout (a no-op for arrays already there)."""
    return jax.device_put(tree, shardings(tree, mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(AXES))


def put_batch(batch, mesh: Mesh):
    """A host batch (every process builds the same global one) -> global arrays split by rows.
    With several processes each contributes only its own rows, as `jax.distributed` expects."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    p, n = jax.process_index(), jax.process_count()

    def local(x):
        rows = x.shape[0] // n
        return jax.make_array_from_process_local_data(sharding, np.asarray(x[p * rows:(p + 1) * rows]), x.shape)

    return jax.tree.map(local, batch)


def on_one_device(abstract_tree, device: jax.Device | None = None):
    """Restore targets on a single device: what evaluation, ensembling and serving read a
    checkpoint into, whatever mesh wrote it."""
    s = SingleDeviceSharding(device or jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_tree)


def host_local(tree):
    """A replicated global tree as arrays this process holds in full (its first local replica)."""
    if jax.process_count() == 1:
        return tree
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


# == several processes (hosts) ==================================================================

ENV = ("RECOUP_COORDINATOR", "RECOUP_NUM_PROCESSES", "RECOUP_PROCESS_ID")


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """`jax.distributed.initialize` from the arguments or RECOUP_COORDINATOR / RECOUP_NUM_PROCESSES /
    RECOUP_PROCESS_ID; nothing when neither names a coordinator. Call it before any other JAX work.
    Every process then builds the same global batch and feeds only its own rows (`put_batch`)."""
    coordinator = coordinator or os.environ.get(ENV[0])
    if not coordinator:
        return False
    try:
        num_processes = int(num_processes if num_processes is not None else os.environ[ENV[1]])
        process_id = int(process_id if process_id is not None else os.environ[ENV[2]])
    except (KeyError, ValueError):
        raise ConfigError("num_processes", f"a coordinator ({coordinator}) needs the process count and this "
                                           f"process's id: --num-processes/--process-id or {ENV[1]}/{ENV[2]}") from None
    if not 0 <= process_id < num_processes:
        raise ConfigError("process_id", f"{process_id} must be in [0, {num_processes})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over gloo
    jax.distributed.initialize(coordinator, num_processes, process_id)
    return True


def is_primary() -> bool:
    """The process that writes run files (config.json, metrics.jsonl) and prints progress."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather_rows(x):
    """A row-split global array as one host array holding every process's rows."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(x, tiled=True)
