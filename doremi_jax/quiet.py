"""Muting what native libraries print at start-up (TensorFlow, libtpu).

They write through their own logging straight to file descriptor 2, before any Python
setting is read; the noise buries a run's first lines and says nothing about the run.
DOREMI_LOGLEVEL set (to debug start-up) leaves everything as printed.
"""

from __future__ import annotations

import contextlib
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
