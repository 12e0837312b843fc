"""gin, bound from outside: library modules never import gin (the T5X habit).

`register()` makes the library's config classes and entry functions configurable
under short names (`TransformerConfig.embed_dim`, `train.run`, ...); `parse()` reads
`--gin_file`s then `--gin.NAME=VALUE` bindings, with the repository's own folder on
gin's search path so that `gin/models/tiny.gin` resolves from anywhere.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn, Sequence

import gin

from doremi_jax import fileio, sharding
from doremi_jax.data import inputs
from doremi_jax.eval.downstream import DownstreamConfig
from doremi_jax.models import TransformerConfig
from doremi_jax.train import loop, state

REPO_ROOT = fileio.REPO_ROOT
_CONFIGURABLE: dict = {}


def register() -> None:
    if _CONFIGURABLE:
        return
    for cls in (
        TransformerConfig,
        inputs.DataConfig,
        sharding.MeshConfig,
        state.OptimizerConfig,
        loop.TrainConfig,
        loop.DroConfig,
        DownstreamConfig,
    ):
        _CONFIGURABLE[cls.__name__] = gin.external_configurable(cls)
    _CONFIGURABLE["train"] = gin.external_configurable(loop.train, "train")


def configurable(name: str):
    """The gin-wrapped callable registered as `name` (bindings apply when it is called)."""
    register()
    return _CONFIGURABLE[name]


def add_configurable(name: str, fn):
    if name not in _CONFIGURABLE:
        _CONFIGURABLE[name] = gin.external_configurable(fn, name)
    return _CONFIGURABLE[name]


class ConfigError(ValueError):
    pass


def parse(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
    """Parse gin files then bindings; unknown names, files or macros become ConfigError."""
    register()
    gin.clear_config()
    gin.add_config_file_search_path(REPO_ROOT)
    gin.add_config_file_search_path(os.getcwd())
    for path in gin_files:
        if not os.path.exists(path) and not os.path.exists(os.path.join(REPO_ROOT, path)):
            raise ConfigError(f"gin file {path!r} not found")
    try:
        gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=False)
    except (ValueError, KeyError, SyntaxError, IOError) as e:
        raise ConfigError(f"gin: {_first_line(e)}") from None
    unset = sorted(name for name in macros() if _is_required(gin.query_parameter(f"%{name}")))
    if unset:
        raise ConfigError(
            "gin: required macro(s) not set: "
            + ", ".join(f"{n} (--gin.{n}=...)" for n in unset)
        )


def query(name: str, default=None):
    """The value bound to `name` (`Class.param`) by the parsed config, or `default`."""
    try:
        return gin.query_parameter(name)
    except ValueError:
        return default


def macros() -> list[str]:
    """Names of the gin macros bound so far (gin keeps them as `gin.macro` bindings)."""
    return [scope for scope, selector in gin.config._CONFIG if selector == "gin.macro"]


def _is_required(value) -> bool:
    # `X = %gin.REQUIRED` stores a reference to gin's REQUIRED marker.
    return repr(value) == "%gin.REQUIRED"


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """Split `--gin_file=F` and `--gin.NAME=VALUE` (T5X style) from the other arguments."""
    files, bindings, rest = [], [], []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("--gin_file"):
            if "=" in a:
                files.append(a.split("=", 1)[1])
            else:
                i += 1
                files.append(args[i])
        elif a.startswith("--gin."):
            name, _, value = a[len("--gin."):].partition("=")
            if not _:
                raise ConfigError(f"{a!r}: expected --gin.NAME=VALUE")
            bindings.append(f"{name} = {value}")
        else:
            rest.append(a)
        i += 1
    return files, bindings, rest


def operative_config() -> str:
    return gin.operative_config_str()


def config_str() -> str:
    return gin.config_str()


def train_with_gin(workdir: str, gin_files: Sequence[str], bindings: Sequence[str], **overrides):
    """Parse a run's gin, record it in workdir/config.gin, train; returns the run summary.

    What `python -m doremi_jax.train` does, callable from the pipeline. config.gin is
    written up front only where there is none (another run's record is never
    overwritten before the workdir checks pass), and replaced by the operative config
    (what the run actually used, as T5X writes it) when the run returns.
    """
    loop.check_writable(workdir)
    parse(gin_files, [f"MODEL_DIR = '{workdir}'", *bindings])
    config_path = os.path.join(workdir, "config.gin")
    if not fileio.exists(config_path):
        write_file(config_path, config_str())
    summary = configurable("train")(workdir, **overrides)
    write_file(config_path, operative_config())
    return summary


def write_file(path: str, text: str) -> None:
    """Atomic, by process 0 only (every host runs the same code)."""
    import jax

    if jax.process_index() != 0:
        return
    fileio.write_text_atomic(path, text)


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)
