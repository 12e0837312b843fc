"""TensorFlow as a guest in a JAX process: imported quietly, kept off the accelerators.

clu's TensorBoard writer, TFRecord shards, gs:// file access and the seqio Tasks bring
it in, and nothing else needs it. It is imported where one of those is first used
(`tensorflow()`), not at every start: a run without them starts about ten seconds
sooner, which every restart of a preempted job and every stage's process pays.
"""

from __future__ import annotations

import os
import sys

from doremi_jax import quiet


def tensorflow():
    """The tensorflow module, imported the first time without its start-up noise (oneDNN
    and CUDA notices, a cuInit error) and with no GPU visible to it, so that it never
    reserves accelerator memory that JAX needs (the habit of big_vision and T5X)."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with quiet.native_stderr_muted():
            import tensorflow as tf

            tf.config.set_visible_devices([], "GPU")
    return sys.modules["tensorflow"]
