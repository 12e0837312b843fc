"""Muting what native libraries print at start-up (TensorFlow, libtpu).

They write through their own logging straight to file descriptor 2, before any Python
setting is read; the noise buries a run's first lines and says nothing about the run.
DOREMI_LOGLEVEL set (to debug start-up) leaves everything as printed.

TensorFlow is a guest in a JAX process: clu's TensorBoard writer, TFRecord shards,
gs:// file access and the seqio Tasks bring it in, and nothing else needs it. It is
imported where one of those is first used (`tensorflow()`), not at every start: a run
without them starts about ten seconds sooner, which every restart of a preempted job
and every stage's process pays.
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


def tensorflow():
    """The tensorflow module, imported the first time without its start-up noise (oneDNN
    and CUDA notices, a cuInit error) and with no GPU visible to it, so that it never
    reserves accelerator memory that JAX needs (the habit of big_vision and T5X)."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with native_stderr_muted():
            import tensorflow as tf

            tf.config.set_visible_devices([], "GPU")
    return sys.modules["tensorflow"]
