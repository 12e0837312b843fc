"""FLOPs and HBM bytes of the Pallas attention kernels, counted from their shapes.

XLA's cost analysis sees a Pallas TPU kernel as an opaque custom call: no FLOPs, and
each operand and result read or written once. Splash attention (`models.transformer.
pallas_attention`) runs three kinds of kernel: the forward, and in the backward one for
dq and one for dk and dv. Each visits the (query block, key block) pairs on or below
the diagonal (the causal mask at block granularity; the document mask is applied inside
a block and skips nothing), runs its matmuls on each pair, and re-reads one side's
blocks for every block of the other side. Counted here:

  forward  2 matmuls per pair (q kᵀ, p v)                     k, v re-read per query block
  dq       3 (q kᵀ recomputed, dO vᵀ, dS k)                    k, v re-read per query block
  dkv      4 (q kᵀ recomputed, dO vᵀ, pᵀ dO, dSᵀ q)            q, dO re-read per key block

each matmul 2·block²·head_dim FLOPs per pair. Left out: the softmax's element-wise work
and the small per-row statistics (log-sum-exp, dO·O) the backward kernels read.
"""

from __future__ import annotations

import dataclasses
import re

from doremi_jax.aot import hlo

_KINDS = {"fwd": 2, "dq": 3, "dkv": 4}  # matmuls per visited block pair
_SPLASH = re.compile(r"splash_mha_(fwd|dq|dkv)")


@dataclasses.dataclass(frozen=True)
class KernelCost:
    flops: float = 0.0
    extra_bytes: float = 0.0  # beyond what XLA counts (each operand once)
    calls: int = 0


def causal_block_pairs(length: int, block: int) -> int:
    """(query block, key block) pairs with at least one key at or before a query."""
    n = length // block
    return n * (n + 1) // 2


def attention_kernels(text: str, block_size: int) -> KernelCost:
    """The splash-attention kernels one execution of the compiled program `text` runs
    (block size `block_size`, capped at the sequence), counted from their shapes."""
    flops = extra = 0.0
    calls = 0
    for call in hlo.custom_calls(text):
        m = _SPLASH.search(call.name)
        if not m:
            continue
        four_d = [(dtype, dims) for dtype, dims in hlo.arrays(call.shape) if len(dims) == 4]
        if not four_d:
            continue
        dtype, (batch, heads, length, head_dim) = four_d[0]  # the output, or dq / dk
        block = min(block_size, length)
        pairs = causal_block_pairs(length, block)
        per_head = batch * heads
        flops += call.times * per_head * _KINDS[m.group(1)] * 2 * block * block * head_dim * pairs
        # Two operands re-read once per visited pair, of which XLA counted one read.
        extra += call.times * per_head * 2 * (pairs * block - length) * head_dim * hlo.dtype_bytes(dtype)
        calls += call.times
    return KernelCost(flops, extra, calls)
