"""What every `python -m doremi_jax.<entry>` shares: argv -> gin -> call, one-line errors."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Sequence

from doremi_jax import config, configurables, fileio, quiet
from doremi_jax.errors import InputError


def _known_errors() -> tuple[type[BaseException], ...]:
    """The project's own errors (what bad input raises). Anything else is a bug and keeps
    its traceback."""
    from doremi_jax import checkpoints
    from doremi_jax.data import corpus
    from doremi_jax.train import loop

    return (
        config.ConfigError,
        corpus.CorpusError,
        checkpoints.CheckpointError,
        loop.TrainingError,
        InputError,
        FileNotFoundError,
    )


COMMON_FLAGS = """
Flags every entry takes:
  --gin_file=FILE        a gin file (repeatable; later files override earlier ones)
  --gin.NAME=VALUE       a binding after the files, e.g. --gin.TRAIN_STEPS=100 or
                         --gin.OptimizerConfig.name="'adafactor'" (strings in quotes)
  --workdir=DIR          where the run's files go (--model_dir, T5X's name, also works)
  -h, --help             this message

Errors are one line on stderr: exit 2 for bad arguments or gin, 1 for bad input."""


def usage(run: Callable) -> str:
    """The entry's module docstring (its command and what it does) and the common flags."""
    doc = (sys.modules[run.__module__].__doc__ or "").strip()
    return f"{doc}\n{COMMON_FLAGS}"


def require_workdir(rest: Sequence[str]) -> str:
    """The `--workdir=DIR` (or `--model_dir`, T5X's name) of an entry; nothing else may remain."""
    workdir, other = None, []
    args = list(rest)
    while args:
        a = args.pop(0)
        if a.startswith("--workdir=") or a.startswith("--model_dir="):
            workdir = a.split("=", 1)[1]
        elif a in ("--workdir", "--model_dir") and args:
            workdir = args.pop(0)
        else:
            other.append(a)
    if other:
        raise config.ConfigError(f"unknown arguments {other}")
    if not workdir:
        raise config.ConfigError("--workdir=DIR is required")
    return workdir


def _keep_compiled_programs() -> None:
    """jax's persistent compilation cache (MaxText's `jax_cache_dir`): a restarted job,
    the next seed, or the pipeline's next stage of the same shapes loads its compiled
    steps instead of compiling them again. By default under DOREMI_CACHE (beside the
    token cache); JAX_COMPILATION_CACHE_DIR moves it (gs:// too), and
    JAX_ENABLE_COMPILATION_CACHE=false turns it off (both read by jax itself)."""
    import jax

    from doremi_jax.data.corpus import default_cache_dir

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.join(default_cache_dir(), "jax"))


def main(
    run: Callable[[list[str], list[str], list[str]], None],
    argv: Sequence[str] | None = None,
) -> None:
    """Split argv into gin files, bindings and the rest, then call `run`; known errors
    become one line on stderr and exit status 1 (2 for bad arguments)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(usage(run))
        raise SystemExit(0)
    quiet.skip_absent_tpu()
    _keep_compiled_programs()
    if any(fileio.is_remote(a.split("=", 1)[-1].strip("'\"")) for a in argv):
        from doremi_jax.data import tensorflow_runtime  # epath reaches gs:// through tf.io.gfile

        tensorflow_runtime.tensorflow()
    logging.basicConfig(level=os.environ.get("DOREMI_LOGLEVEL", "WARNING"), format="%(levelname)s %(message)s")
    if "DOREMI_LOGLEVEL" not in os.environ:
        from absl import logging as absl_logging  # orbax logs routine events as warnings

        absl_logging.set_verbosity(absl_logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        files, bindings, rest = config.split_argv(argv)
        configurables.register()  # what gin may configure, the mixture methods' included
        run(files, bindings, rest)
    except config.ConfigError as e:
        # gin appends "In call to configurable ..." lines to errors raised under a call.
        config.fail(str(e).splitlines()[0], 2)
    except _known_errors() as e:
        config.fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except OSError as e:  # a full disk, a permission error: one line naming the path
        if e.filename and e.strerror:
            config.fail(f"{e.filename}: {e.strerror}")
        config.fail(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    except RuntimeError as e:  # gin reports unset REQUIRED macros as RuntimeError-like errors
        message = str(e).strip().splitlines()
        if message and ("Required bindings" in message[0] or "gin" in message[0].lower()):
            config.fail(f"gin: {message[0]}", 2)
        raise
