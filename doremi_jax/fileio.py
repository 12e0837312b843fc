"""Files of workdirs and corpora through `etils.epath`: local paths and gs:// alike.

epath reads and writes gs:// (and s3://) through tf.io.gfile where tensorflow is
installed and fsspec otherwise; orbax checkpoints go through the same library. The
few operations that differ on an object store are here: absolute paths (a URI is
already absolute) and atomic writes (a rename on GCS is a copy, still all-or-nothing
for a reader).
"""

from __future__ import annotations

import os

from etils import epath

URI_PREFIXES = ("gs://", "s3://", "az://")
# The checkout the package runs from: gin/ and weights/ live here.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_remote(path: str | os.PathLike) -> bool:
    return os.fspath(path).startswith(URI_PREFIXES)


def absolute(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(path)


def shipped(path: str) -> str:
    """`path`, or the file of that relative path in the repository (`weights/pile/...`)
    when it does not exist from the working directory."""
    if is_remote(path) or os.path.isabs(path) or exists(path):
        return path
    candidate = os.path.join(REPO_ROOT, path)
    return candidate if os.path.exists(candidate) else path


def exists(path: str | os.PathLike) -> bool:
    return epath.Path(path).exists()


def isdir(path: str | os.PathLike) -> bool:
    return epath.Path(path).is_dir()


def makedirs(path: str | os.PathLike) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def size_and_mtime(path: str | os.PathLike) -> tuple[int, int]:
    """(bytes, modification time): nanoseconds on a local disk, whole seconds on a
    bucket (epath's resolution), so a rewritten local file is never taken for the old."""
    if is_remote(path):
        st = epath.Path(path).stat()
        return int(st.length), int(st.mtime) * 10**9
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def open_file(path: str | os.PathLike, mode: str = "r"):
    return epath.Path(path).open(mode)


def read_text(path: str | os.PathLike) -> str:
    return epath.Path(path).read_text()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f"{path.name}.tmp-{os.getpid()}"
    tmp.write_text(text)
    tmp.replace(path)


def remove(path: str | os.PathLike) -> None:
    """A file or a whole folder; nothing when it does not exist."""
    path = epath.Path(path)
    if path.is_dir():
        path.rmtree()
    elif path.exists():
        path.unlink()


def rename(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move a file or folder (a rename where the store has one; gs:// copies)."""
    epath.Path(source).rename(target)
