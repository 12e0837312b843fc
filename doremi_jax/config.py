"""gin, bound from outside: library modules never import gin (the T5X habit).

`add_configurable()` makes a class or function configurable under a short name
(`configurables.register()`, at the entry layer, adds the library's: `TransformerConfig.embed_dim`,
`train.method`, `DoReMi.learning_rate`, ...); `parse()` reads `--gin_file`s then
`--gin.NAME=VALUE` bindings, with the repository's own folder on gin's search path so
that `gin/models/tiny.gin` resolves from anywhere. Nothing here imports the library
above it: the trainer is reached through what was registered.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn, Sequence

import gin

from doremi_jax import fileio

REPO_ROOT = fileio.REPO_ROOT
_CONFIGURABLE: dict = {}


def configurable(name: str):
    """The gin-wrapped callable registered as `name` (bindings apply when it is called)."""
    if name not in _CONFIGURABLE:
        raise ConfigError(f"{name!r} is not configurable: call doremi_jax.configurables.register() first")
    return _CONFIGURABLE[name]


def add_configurable(name: str, fn):
    """Make `fn` configurable as `name` (once; later calls return the first)."""
    if name not in _CONFIGURABLE:
        _CONFIGURABLE[name] = gin.external_configurable(fn, name)
    return _CONFIGURABLE[name]


def is_configurable(name: str) -> bool:
    return name in _CONFIGURABLE


class ConfigError(ValueError):
    pass


def parse(
    gin_files: Sequence[str],
    bindings: Sequence[str],
    user_files: Sequence[str] = (),
    user_bindings: Sequence[str] = (),
    check_macros: bool = True,
    model_dir: str | None = None,
    fill_required: str | None = None,
) -> list[str]:
    """Parse a run's own gin files and bindings, then the user's (the command line's,
    which have the last word). Unknown names, files or unset required macros become
    ConfigError, and so does a user binding of a macro that no file declares and
    nothing uses (`--gin.TRAIN_STEP=5`), unless `check_macros` is off: then the unknown
    macro names are returned for the caller to judge (the pipeline checks a binding
    against every stage). `model_dir` (the entry's --workdir) is bound as MODEL_DIR last.
    `fill_required` binds every still-required macro to that value instead of failing
    (the ahead-of-time compile reads no data, reference or vocabulary file)."""
    gin.clear_config()
    gin.add_config_file_search_path(REPO_ROOT)
    gin.add_config_file_search_path(os.getcwd())
    for path in [*gin_files, *user_files]:
        if not os.path.exists(path) and not os.path.exists(os.path.join(REPO_ROOT, path)):
            raise ConfigError(f"gin file {path!r} not found")
    try:
        gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=False)
        gin.parse_config_files_and_bindings(list(user_files), [], finalize_config=False)
        declared = set(macros())
        gin.parse_config_files_and_bindings([], list(user_bindings), finalize_config=False)
        if model_dir is not None:
            gin.bind_parameter("MODEL_DIR/gin.macro.value", model_dir)
    except (ValueError, KeyError, SyntaxError, IOError) as e:
        raise ConfigError(f"gin: {_first_line(e)}") from None
    known = declared | referenced_macros()
    unknown = [name for name in bound_macros(user_bindings) if name not in known]
    if unknown and check_macros:
        raise ConfigError(unknown_macros_message(unknown, known))
    unset = sorted(name for name in macros() if _is_required(gin.query_parameter(f"%{name}")))
    if fill_required is not None:
        for name in unset:
            gin.bind_parameter(f"{name}/gin.macro.value", fill_required)
        unset = []
    if unset:
        raise ConfigError(
            "gin: required macro(s) not set: "
            + ", ".join(f"{n} (--gin.{n}=...)" for n in unset)
        )
    return unknown


def bound_macros(bindings: Sequence[str]) -> list[str]:
    """The macro names that `NAME = value` bindings set (a gin binding without a dot)."""
    names = []
    for binding in bindings:
        key = binding.split("=", 1)[0].strip()
        if key and "." not in key and "/" not in key:
            names.append(key)
    return names


def referenced_macros() -> set[str]:
    """Macros the parsed config uses (`%NAME` anywhere in a bound value)."""
    found: set[str] = set()

    def walk(value):
        if isinstance(value, gin.config.ConfigurableReference):
            scope, selector = value.config_key
            if selector == "gin.macro":
                found.add(scope)
        elif isinstance(value, (list, tuple, set)):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)

    for params in gin.config._CONFIG.values():
        walk(params)
    return found


def unknown_macros_message(unknown: Sequence[str], known: set[str]) -> str:
    import difflib

    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
        parts.append(name + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return (
        "gin: no gin file declares or uses the macro(s) "
        + ", ".join(parts)
        + f"; known macros: {', '.join(sorted(n for n in known if n.isupper()))}"
    )


def fingerprint(exclude_selectors: Sequence[str] = ("run_pipeline",), exclude_macros: Sequence[str] = ("MODEL_DIR",)) -> str:
    """A stable hash of the parsed gin config, less the bindings that do not change what
    a run computes (its own folder; the pipeline's own knobs)."""
    import hashlib

    items = []
    for (scope, selector), params in sorted(gin.config._CONFIG.items()):
        if selector.split(".")[-1] in exclude_selectors:
            continue
        if selector == "gin.macro" and scope in exclude_macros:
            continue
        items.append(f"{scope}/{selector}: {sorted((k, repr(v)) for k, v in params.items())}")
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def call_arguments(function: str, names: Sequence[str]) -> dict:
    """What the parsed config passes `function` for each of `names` (only those bound),
    with `@Config()` references and `%MACROS` evaluated, without calling `function`."""
    import copy

    out = {}
    for name in names:
        try:
            value = gin.query_parameter(f"{function}.{name}")
        except ValueError:
            continue
        out[name] = copy.deepcopy(value)  # gin's references evaluate when deep-copied
    return out


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


def train_with_gin(
    workdir: str,
    gin_files: Sequence[str],
    bindings: Sequence[str],
    user_files: Sequence[str] = (),
    user_bindings: Sequence[str] = (),
    **overrides,
):
    """Parse a run's gin (its own files and bindings, then the user's), train, record the
    config in workdir/config.gin; returns the run summary.

    What `python -m doremi_jax.train` does, callable from the pipeline. The trainer
    writes config.gin (this parsed config) only once the workdir's checks have passed,
    so a refused or failed start leaves another run's record as it was; it is replaced
    by the operative config (what the run actually used, as T5X writes it) at the end.
    """
    parse(gin_files, bindings, user_files, user_bindings, model_dir=workdir)
    summary = configurable("train")(workdir, config_text=config_str(), **overrides)
    write_file(os.path.join(workdir, "config.gin"), operative_config())
    return summary


def write_file(path: str, text: str) -> None:
    """Atomic, by the run's primary process only (every host runs the same code)."""
    from doremi_jax import hosts

    if not hosts.primary():
        return
    fileio.write_text_atomic(path, text)


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)
