"""Accelerator datasheets: what a chip can do at best, for MFU and roofline figures.

Figures from the vendors' public pages (Cloud TPU system architecture pages for v4,
v5e, v5p and v6e; NVIDIA's for the GPUs): dense bf16 FLOP/s, HBM bytes and bytes/s,
and the chip's bidirectional inter-chip interconnect (ICI) bytes/s. v4's ICI figure is
not on its page: 6 links of 50 GB/s each way, from the TPU v4 paper (Jouppi et al., 2023).
"""

from __future__ import annotations

import dataclasses

from doremi_jax.errors import InputError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # the topology prefix: v4, v5e, v5p, v6e
    device_kinds: tuple[str, ...]  # what jax's device_kind starts with
    bf16_flops_per_s: float
    hbm_bytes: float
    hbm_bytes_per_s: float
    ici_bytes_per_s: float  # bidirectional, all links of one chip


TPU_CHIPS = {
    chip.name: chip
    for chip in (
        Chip("v4", ("TPU v4",), 275e12, 32 * GiB, 1200e9, 600e9),
        Chip("v5e", ("TPU v5 lite", "TPU v5e"), 197e12, 16 * GiB, 819e9, 400e9),
        Chip("v5p", ("TPU v5p", "TPU v5"), 459e12, 95 * GiB, 2765e9, 1200e9),
        Chip("v6e", ("TPU v6 lite", "TPU v6e"), 918e12, 32 * GiB, 1638e9, 800e9),
    )
}

# Dense bf16 peak per chip of the GPUs the benchmark has run on, FLOP/s.
GPU_PEAK = {"NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12}


def tpu_chip(topology: str) -> Chip:
    """The chip of a topology name such as `v5p:2x2x2` (a clear error for another)."""
    name = topology.split(":", 1)[0].strip().lower()
    if name not in TPU_CHIPS:
        raise InputError(f"topology {topology!r}: unknown TPU {name!r}; expected one of {sorted(TPU_CHIPS)}")
    return TPU_CHIPS[name]


def datasheet_peak(device_kind: str) -> float | None:
    """Dense bf16 FLOP/s of one device of this kind, or None when not listed."""
    # Longest prefix first: "TPU v5 lite" (v5e) before "TPU v5" (v5p).
    kinds = [(k, c.bf16_flops_per_s) for c in TPU_CHIPS.values() for k in c.device_kinds]
    kinds += list(GPU_PEAK.items())
    for kind, peak in sorted(kinds, key=lambda kv: -len(kv[0])):
        if device_kind.startswith(kind):
            return peak
    return None
