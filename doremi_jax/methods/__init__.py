"""Mixture methods, one folder each (`<name>/`): how a method finds its mixture, the
trainer plug-in and step it trains with, its cost and its part of the report, behind
one registry (`registry.py`) that the pipeline, the comparison, the report and `aot`
iterate. To add a method, see `uniform/` (a static mixture, the smallest) and the
README's "Mixture methods"; a method outside the package registers itself the same way
(a gin file may `import` its module).
"""

from doremi_jax.methods.base import Context, Found, Method
from doremi_jax.methods.registry import get, label, names, register, register_with_gin, settings_names, stage_kinds
from doremi_jax.methods import doremi, doremi_matched, odm, regmix, temperature, uniform  # noqa: E402

BUILT_IN = (doremi, doremi_matched, odm, regmix, temperature, uniform)  # their folders register them when imported

PRIMARY = doremi.DoReMiSearch.name  # the pipeline's own method: its weights are the workdir's domain_weights.json

__all__ = ["BUILT_IN", "PRIMARY", "Context", "Found", "Method", "get", "label", "names", "register", "register_with_gin",
           "settings_names", "stage_kinds"]
