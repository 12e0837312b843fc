"""Mixture methods, one folder each (`<name>/`): how a method finds its mixture, the
trainer plug-in and step it trains with, its cost and its part of the report, behind
one registry (`registry.py`) that the pipeline, the comparison, the report and `aot`
iterate. Every folder here is imported, and so registered, with this package: a new
method is a new folder and nothing else (see `uniform/`, the smallest, and the README's
"Mixture methods"); a method outside the package registers itself the same way (a gin
file may `import` its module).
"""

import importlib
import pkgutil

from doremi_jax.methods.base import Context, Found, Method
from doremi_jax.methods.registry import get, names, register, register_with_gin, settings_names, stage_kinds
from doremi_jax.methods import doremi  # noqa: E402

BUILT_IN = tuple(importlib.import_module(f"{__name__}.{folder.name}")
                 for folder in pkgutil.iter_modules(__path__) if folder.ispkg)
PRIMARY = doremi.DoReMiSearch.name  # the pipeline's own method: its weights are the workdir's domain_weights.json

__all__ = ["BUILT_IN", "PRIMARY", "Context", "Found", "Method", "get", "names", "register",
           "register_with_gin", "settings_names", "stage_kinds"]
