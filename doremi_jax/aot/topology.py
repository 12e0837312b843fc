"""Compile-only TPU devices on any host, from libtpu (`pip install -e '.[tpu]'`).

`jax.experimental.topologies` describes a TPU slice (chips, hosts, torus links) without
the hardware; a program lowered against a mesh of these devices compiles to the TPU
executable it would run, which is never executed. libtpu, when loaded on a host without
a TPU, prints warnings about the accelerator type and worker hostnames through its own
logging; they say nothing about the compile, so its native stderr is muted while it loads.
"""

from __future__ import annotations

import importlib.util
import os

from doremi_jax import hardware, quiet


class TopologyError(ValueError):
    pass


def devices(topology: str, num_slices: int = 1) -> tuple[list, hardware.Chip]:
    """Compile-only devices of `topology` (`v5p:2x2x2`, `v4:4x4x4`, `v5e:16x16`) times
    `num_slices` (slices joined over DCN), and the chip's datasheet. One device per chip:
    v4 and v5p as megacores, as a TPU VM presents them."""
    try:
        chip = hardware.tpu_chip(topology)
    except ValueError as e:
        raise TopologyError(str(e)) from None
    if importlib.util.find_spec("libtpu") is None:
        raise TopologyError(
            "compiling for a TPU topology needs libtpu: pip install -e '.[tpu]' (or jax[tpu])"
        )
    from jax.experimental import topologies

    # libtpu locks /tmp/libtpu_lockfile for the one process that may own the host's
    # TPU; compile-only devices own nothing, so several compiles may run side by side.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
    if chip.name == "v4":
        kwargs["chip_config_name"] = "megacore"
    try:
        with quiet.native_stderr_muted():
            description = topologies.get_topology_desc(topology, platform="tpu", **kwargs)
    except Exception as e:  # libtpu reports a bad shape as a plain RuntimeError/XlaRuntimeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TopologyError(f"topology {topology!r}: {first}") from None
    return list(description.devices), chip
