"""Temperature sampling, the multilingual standard (mBERT, XLM-R, mT5): domain i is
sampled at p_i ∝ n_i^(1/τ), n_i its training tokens. τ = 1 is the natural mixture, a
large τ approaches uniform; 1/τ = 0.3 is mT5's. A static mixture with no cost to choose.

    run_pipeline.methods = ['temperature']
    TemperatureSampling.temperature = 3.33
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from doremi_jax import config
from doremi_jax.data import weights as weights_lib
from doremi_jax.methods.base import Found, Method
from doremi_jax.methods.registry import register
from doremi_jax.stages import file_hash


def temperature_rates(tokens, temperature: float) -> np.ndarray:
    """p ∝ n^(1/τ), computed in log space (a large corpus's counts to a power stay finite)."""
    tokens = np.asarray(tokens, np.float64)
    logits = np.where(tokens > 0, np.log(np.where(tokens > 0, tokens, 1.0)) / temperature, -np.inf)
    rates = np.exp(logits - logits.max())
    return rates / rates.sum()


@register
@dataclasses.dataclass(frozen=True)
class TemperatureSampling(Method):
    name = "temperature"
    label = "temperature"

    temperature: float = 1 / 0.3  # τ; mT5's exponent 1/τ = 0.3

    @property
    def cost(self):  # the table's words name τ
        return f"none (τ = {self.temperature:g})"

    def check(self, ctx):
        if not self.temperature > 0:
            raise config.ConfigError(f"TemperatureSampling.temperature={self.temperature}: expected > 0")

    def search(self, ctx, search):
        domains, tokens = ctx.training_tokens
        rates = temperature_rates(tokens, self.temperature)
        path = os.path.join(ctx.workdir, "temperature", "domain_weights.json")  # no seed in it
        weights_lib.write_weights(path, domains, rates)
        return Found(weights=path, upstream=file_hash(path), mixture=dict(zip(domains, rates.tolist())),
                     record={"temperature": self.temperature})
