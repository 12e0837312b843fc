"""The registry of mixture methods: what the pipeline, the comparison, the report and
`aot` iterate. A method registers its class (`register(MyMethod)`, usable as a
decorator); its settings are then configurable by gin under the class's name, and so
are the trainer plug-ins it brings."""

from __future__ import annotations

from doremi_jax import config
from doremi_jax.methods.base import Method

_METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if not cls.name or not cls.label:
        raise ValueError(f"{cls.__name__}: a method needs a name and a label")
    if _METHODS.get(cls.name, cls) is not cls:
        raise ValueError(f"{cls.__name__}: a method named {cls.name!r} is already registered "
                         f"({_METHODS[cls.name].__name__})")
    _METHODS[cls.name] = cls
    _with_gin(cls)
    return cls


def _with_gin(cls: type[Method]) -> None:
    config.add_configurable(cls.__name__, cls)
    for trainer in cls.trainers:
        config.add_configurable(trainer.__name__, trainer)


def register_with_gin() -> None:
    for cls in _METHODS.values():
        _with_gin(cls)


def names() -> list[str]:
    return list(_METHODS)


def get(name: str) -> Method:
    """The method `name` with its settings as gin binds them now."""
    if name not in _METHODS:
        raise config.ConfigError(f"mixture method {name!r} is not registered; registered: {names()}")
    return config.configurable(_METHODS[name].__name__)()


def stage_kinds() -> tuple[str, ...]:
    """Every registered method's own stage kinds (the command line's stage scopes)."""
    return tuple(dict.fromkeys(kind for cls in _METHODS.values() for kind in cls.stage_kinds))


def settings_names() -> tuple[str, ...]:
    """The gin names of the methods' settings: the pipeline's knobs, not a stage's."""
    return tuple(cls.__name__ for cls in _METHODS.values())
