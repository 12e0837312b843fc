"""Fault injection at named points, for the tests that kill a run and resume it.

DOREMI_FAULT="<point>[@<n>][:<action>]" (several separated by commas) acts when the
process reaches `fault_point("<point>")`: at every visit, or at the n-th only with @n.
Actions: `kill` (the default; SIGKILL, as a preempted VM or the OOM killer would) and
`ioerror` (an OSError EIO, as a storage blip would). Unset, a point costs one dict lookup.
"""

from __future__ import annotations

import errno
import os
import signal

from doremi_jax.errors import InputError

_visits: dict[str, int] = {}


def _parse(spec: str) -> list[tuple[str, int | None, str]]:
    faults = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        where, _, action = item.partition(":")
        point, _, nth = where.partition("@")
        faults.append((point, int(nth) if nth else None, action or "kill"))
    return faults


def fault_point(point: str) -> None:
    spec = os.environ.get("DOREMI_FAULT")
    if not spec:
        return
    _visits[point] = visit = _visits.get(point, 0) + 1
    for name, nth, action in _parse(spec):
        if name != point or (nth is not None and nth != visit):
            continue
        if action == "ioerror":
            raise OSError(errno.EIO, f"injected I/O error at {point} (DOREMI_FAULT)")
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise InputError(f"DOREMI_FAULT={spec!r}: unknown action {action!r} (kill or ioerror)")
