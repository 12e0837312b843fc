"""Muting what native libraries print at start-up (TensorFlow, libtpu).

They write through their own logging straight to file descriptor 2, before any Python
setting is read; the noise buries a run's first lines and says nothing about the run.
DOREMI_LOGLEVEL set (to debug start-up) leaves everything as printed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys


@contextlib.contextmanager
def native_stderr_muted():
    """File descriptor 2 to /dev/null for the block (sys.stderr is left alone)."""
    if os.environ.get("DOREMI_LOGLEVEL"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def skip_absent_tpu() -> None:
    """With libtpu installed (the `tpu` extra) on a host without a TPU, jax tries the TPU
    backend first and libtpu prints a dozen lines of probe warnings before jax falls back.
    Where jax's own check of the PCI bus finds no TPU chip and JAX_PLATFORMS is not set,
    jax is told to skip it; a TPU VM (chips on its bus) is left alone."""
    if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
        return
    try:
        from jax._src import hardware_utils

        chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
        gpu = hardware_utils.has_visible_nvidia_gpu()
    except Exception:  # noqa: BLE001 - a private module: if it moves, jax probes as before
        return
    if chips:
        return
    import jax

    jax.config.update("jax_platforms", "cuda,cpu" if gpu else "cpu")

