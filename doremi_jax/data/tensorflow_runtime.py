"""TensorFlow as a guest in a JAX process: imported quietly, kept off the accelerators.

clu's TensorBoard writer, gs:// file access and the seqio tasks bring tensorflow in.
On a CPU host its C++ start-up prints oneDNN and CUDA notices (and a cuInit error)
through absl before `TF_CPP_MIN_LOG_LEVEL` is read, burying the run's first lines; on
an accelerator host it would reserve GPU memory that JAX needs. The entries call
`import_quietly()` once at start: the native stderr is muted only for the import and
the device listing, and TensorFlow sees no GPU (the habit of big_vision and T5X).
"""

from __future__ import annotations

import importlib.util
import os
import sys

from doremi_jax import quiet


def import_quietly() -> None:
    """Import tensorflow (where installed) without its start-up noise, GPUs hidden from it.

    DOREMI_LOGLEVEL set (to debug start-up) leaves everything as TensorFlow prints it.
    """
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with quiet.native_stderr_muted():
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
