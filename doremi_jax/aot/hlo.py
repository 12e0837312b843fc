"""Collectives of a compiled XLA program, read from its HLO text, per step.

XLA's own cost analysis counts the body of a `while` loop once, and a compiled TPU
program has loops even when the model is not scanned (the SPMD partitioner's windowed
einsums). So each computation's collectives are multiplied by how often it runs: a
loop body by its trip count, read from the loop condition (`counter < N`, the form
`lax.scan` and the partitioner emit), anything else once per call.
"""

from __future__ import annotations

import collections
import dataclasses
import re

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$")
_CALLEES = re.compile(r"\b(body|calls|branch_computations|async_execution_thread_computations)=\{?(%[\w.\-]+(?:,\s*%[\w.\-]+)*)\}?")
_CONDITION = re.compile(r"\bcondition=%([\w.\-]+)")
_CONSTANT = re.compile(r"constant\((-?\d+)\)")


@dataclasses.dataclass
class Collective:
    count: int = 0
    bytes: float = 0.0  # the results' bytes (per chip), summed over executions
    traffic: float = 0.0  # bytes each chip sends, by a ring over its group (see _traffic)


def _traffic(kind: str, result_bytes: int, group: int) -> float:
    """Bytes one chip sends in a ring collective over `group` chips, from its result."""
    if group <= 1:
        return 0.0 if kind != "collective-permute" else float(result_bytes)
    share = (group - 1) / group
    return {
        "all-gather": result_bytes * share,
        "reduce-scatter": result_bytes * (group - 1),  # the operand is group x the result
        "all-reduce": 2 * result_bytes * share,
        "all-to-all": result_bytes * share,
        "collective-permute": float(result_bytes),
    }[kind]


_GROUPS_LIST = re.compile(r"replica_groups=\{\{([0-9,]*)\}")
_GROUPS_IOTA = re.compile(r"replica_groups=\[([0-9,]+)\]<=")
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")


def group_size(line: str) -> int:
    """Chips per replica group of a collective instruction (1 when it names none)."""
    m = _GROUPS_LIST.search(line)
    if m:
        return len([x for x in m.group(1).split(",") if x])
    m = _GROUPS_IOTA.search(line)
    if m:
        return int(m.group(1).split(",")[-1])
    m = _GROUPS_MESH.search(line)
    if m:
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
        n = 1
        for axis in re.findall(r"'([^']+)'", m.group(2)):
            n *= int(sizes.get(axis, 1))
        return n
    return 1


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string (`bf16[4,256]{...}` or a tuple of them)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype not in _DTYPE_BYTES:
            continue
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _DTYPE_BYTES[dtype]
    return total


def _split_shape(rest: str) -> tuple[str, str]:
    """`<shape> <opcode>(...)...` -> (shape, the rest from the opcode on)."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[: i + 1], rest[i + 1:].lstrip()
    shape, _, tail = rest.partition(" ")
    return shape, tail


def _parse(text: str):
    """Computations -> their instruction lines, and the name of the entry computation."""
    computations: dict[str, list[str]] = {}
    entry, current = None, None
    for line in text.splitlines():
        if current is None:
            m = _COMPUTATION.match(line)
            if m and "=" not in line.split("(")[0]:
                current = m.group(2)
                computations[current] = []
                if m.group(1):
                    entry = current
        elif line.rstrip() == "}":  # not "}}, metadata=...": a Mosaic kernel's config spans lines
            current = None
        else:
            computations[current].append(line)
    return computations, entry


def _trip_count(condition: list[str]) -> int | None:
    """N of a loop condition `i < N` with N a constant of the condition, else None."""
    root = next((line for line in condition if line.lstrip().startswith("ROOT")), "")
    constants = [int(c) for line in condition for c in _CONSTANT.findall(line)]
    if "direction=LT" in root and len(constants) == 1 and constants[0] > 0:
        return constants[0]
    return None


def _runs(text: str) -> tuple[dict[str, list[str]], dict[str, int], int]:
    """The program's computations, how often one execution runs each, and the number of
    loops whose trip count could not be read (counted once)."""
    computations, entry = _parse(text)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    runs: dict[str, int] = collections.Counter()
    unknown_loops = 0

    def visit(name: str, times: int, depth: int = 0):
        nonlocal unknown_loops
        if name not in computations or depth > 64:
            return
        runs[name] += times
        for line in computations[name]:
            trips = 1
            cond = _CONDITION.search(line)
            if cond and " while(" in line:
                trips = _trip_count(computations.get(cond.group(1), []))
                if trips is None:
                    unknown_loops += 1
                    trips = 1
            for kind, callees in _CALLEES.findall(line):
                for callee in re.findall(r"%([\w.\-]+)", callees):
                    visit(callee, times * (trips if kind == "body" else 1), depth + 1)

    visit(entry, 1)
    return computations, runs, unknown_loops


def collectives(text: str) -> tuple[dict[str, Collective], int]:
    """Per kind, the collectives one execution of the program runs and the bytes of their
    results; and the number of loops whose trip count could not be read (counted once)."""
    computations, runs, unknown_loops = _runs(text)
    found = {kind: Collective() for kind in COLLECTIVES}
    for name, times in runs.items():
        for line in computations[name]:
            m = _INSTRUCTION.match(line)
            if not m:
                continue
            shape, tail = _split_shape(m.group(2))
            opcode = tail.split("(", 1)[0]
            kind = opcode[: -len("-start")] if opcode.endswith("-start") else opcode
            if kind not in found:
                continue
            nbytes = shape_bytes(shape)
            if opcode.endswith("-start") and shape.startswith("("):
                # An async start returns (operands, results[, context]): count the results.
                nbytes = _async_result_bytes(shape)
            found[kind].count += times
            found[kind].bytes += times * nbytes
            found[kind].traffic += times * _traffic(kind, nbytes, group_size(tail))
    return found, unknown_loops


def _async_result_bytes(shape: str) -> int:
    arrays = _ARRAY.findall(shape)
    data = [a for a in arrays if a[1]]  # scalars are the async context words
    half = len(data) // 2
    return shape_bytes(" ".join(f"{d}[{s}]" for d, s in data[half:])) if half else shape_bytes(shape)


@dataclasses.dataclass(frozen=True)
class CustomCall:
    name: str  # the instruction's name (a Pallas kernel's carries the kernel's)
    shape: str  # its result shape
    times: int  # executions per program execution


def custom_calls(text: str, target: str = "tpu_custom_call") -> list[CustomCall]:
    """The custom calls to `target` (Mosaic, Pallas' TPU kernels) one execution of the
    program runs, loops counted by their trip counts."""
    computations, runs, _ = _runs(text)
    found = []
    for name, times in runs.items():
        for line in computations[name]:
            m = _INSTRUCTION.match(line)
            if not m or f'custom_call_target="{target}"' not in line:
                continue
            shape, _ = _split_shape(m.group(2))
            found.append(CustomCall(m.group(1), shape, times))
    return found


def arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    """(dtype, dims) of each array in an HLO shape string."""
    return [(dtype, tuple(int(d) for d in dims.split(",") if d)) for dtype, dims in _ARRAY.findall(shape)]


def dtype_bytes(dtype: str) -> int:
    return _DTYPE_BYTES[dtype]
