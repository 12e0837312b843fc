"""Which processes a run spans: every process (the default), or this one alone.

Every host runs the same program. A run normally spans them all: its mesh holds every
device, process 0 writes the run's files and the hosts meet at barriers. Runs that are
independent of each other (RegMix's small runs) can instead go one per host at a time:
inside `alone()` a run's mesh is this process's own devices, this process writes its
files, no barrier waits for the other hosts, and it keeps no checkpoint
(`checkpoints.Checkpointer`).
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

_ALONE = contextvars.ContextVar("doremi_jax_alone", default=False)


@contextlib.contextmanager
def alone():
    """Runs started inside span this process only."""
    token = _ALONE.set(True)
    try:
        yield
    finally:
        _ALONE.reset(token)


def is_alone() -> bool:
    return _ALONE.get()


def primary() -> bool:
    """Whether this process writes the current run's files."""
    return _ALONE.get() or jax.process_index() == 0


def devices() -> list:
    """The devices a run's mesh is made of."""
    return list(jax.local_devices() if _ALONE.get() else jax.devices())


def sync(name: str) -> None:
    """A barrier across the run's processes (none on one host, or alone)."""
    if not _ALONE.get() and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
