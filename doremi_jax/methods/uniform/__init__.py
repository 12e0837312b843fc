"""Uniform rates over the domains: the smallest method, a static mixture that costs
nothing to choose (`run_pipeline.methods = ['uniform']`)."""

from __future__ import annotations

import dataclasses

from doremi_jax.methods.base import Found, Method
from doremi_jax.methods.registry import register


@register
@dataclasses.dataclass(frozen=True)
class Uniform(Method):
    name = "uniform"
    label = "uniform"

    def search(self, ctx, search):
        return Found(weights="uniform", upstream="uniform")
