"""Device mesh, logical-axis rules, multi-host start-up and global batch assembly.

The mesh has three axes: `data` (pure data parallel), `fsdp` (data parallel with
parameters and optimizer state split) and `tensor` (model parallel inside a layer).
Models name their axes logically (`embed`, `mlp`, `activation_batch`, ...); a short
rules list maps those names to mesh axes, so one gin file switches strategies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from doremi_jax import hosts
from doremi_jax.errors import InputError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# FSDP + tensor parallel; the other presets live in gin/sharding/*.gin.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("norm", None),
    ("layers", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes within a slice (ICI) and across slices (DCN); -1 fills the rest."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    dcn_data: int = 1  # slices of a multislice TPU job, data parallel over DCN
    rules: tuple = DEFAULT_RULES


def resolve_axis_sizes(sizes: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replace a single -1 by what fills `num_devices`; a clear error when they do not fit."""
    sizes = list(sizes)
    if sizes.count(-1) > 1:
        raise InputError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise InputError(
                f"mesh {dict(zip(MESH_AXES, sizes))} does not divide the {num_devices} devices"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise InputError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"but {num_devices} are available"
        )
    return tuple(sizes)


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Sequence[Any] | None = None) -> Mesh:
    """A `Mesh` over the run's devices (all global devices; this process's alone, inside
    `hosts.alone()`), laid out by mesh_utils to follow the topology."""
    devices = hosts.devices() if devices is None else list(devices)
    if cfg.dcn_data > 1:
        if len(devices) % cfg.dcn_data:
            raise InputError(f"dcn_data={cfg.dcn_data} does not divide {len(devices)} devices")
        per_slice = len(devices) // cfg.dcn_data
        ici = resolve_axis_sizes((cfg.data, cfg.fsdp, cfg.tensor), per_slice)
        grid = mesh_utils.create_hybrid_device_mesh(ici, (cfg.dcn_data, 1, 1), devices)
    else:
        shape = resolve_axis_sizes((cfg.data, cfg.fsdp, cfg.tensor), len(devices))
        try:
            grid = mesh_utils.create_device_mesh(shape, devices)
        except (AssertionError, NotImplementedError, ValueError):
            # CPU and some GPU platforms have no topology to follow.
            grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Sequence):
    """Make `mesh` and the logical rules current, so that the models' activation
    constraints (`nn.with_logical_constraint`) resolve to mesh axes while tracing."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
        yield


def logical_shardings(logical_specs: Any, mesh: Mesh, rules: Sequence) -> Any:
    """Tree of PartitionSpecs in logical names -> tree of NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch dimension split over the data-parallel axes; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def local_batch_rows(mesh: Mesh, global_batch: int) -> np.ndarray:
    """Global row indices of the batch that this process must supply, in order."""
    sharding = batch_sharding(mesh)
    index_map = sharding.addressable_devices_indices_map((global_batch,))
    rows = sorted({r for idx in index_map.values() for r in range(global_batch)[idx[0]]})
    return np.asarray(rows, np.int64)


def make_global_batch(mesh: Mesh, local_batch: dict[str, np.ndarray], global_batch: int):
    """Host-local rows (from `local_batch_rows`) -> globally sharded jax.Arrays."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(
            sharding, value, (global_batch,) + value.shape[1:]
        )
        for name, value in local_batch.items()
    }


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> None:
    """Start multi-host JAX when asked to.

    On TPU pods `jax.distributed.initialize()` finds everything itself (set
    DOREMI_DISTRIBUTED=1 or pass a coordinator). On GPU and CPU the coordinator,
    process count and id come from the arguments or from the environment variables
    DOREMI_COORDINATOR, DOREMI_NUM_PROCESSES and DOREMI_PROCESS_ID. With none of
    these set this is a single-process run and nothing happens.
    """
    coordinator_address = coordinator_address or os.environ.get("DOREMI_COORDINATOR")
    if num_processes is None and "DOREMI_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["DOREMI_NUM_PROCESSES"])
    if process_id is None and "DOREMI_PROCESS_ID" in os.environ:
        process_id = int(os.environ["DOREMI_PROCESS_ID"])
    if coordinator_address is None and os.environ.get("DOREMI_DISTRIBUTED") != "1":
        return
    if getattr(initialize_distributed, "_done", False):
        return
    # Only consulted by the CPU backend; asking for the backend here would start it
    # too early (initialize must come first), so set it unconditionally.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )
    initialize_distributed._done = True
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
