"""The plain LM run: a fixed mixture (reference and main models)."""

from __future__ import annotations

import dataclasses
import functools

from doremi_jax.train import steps
from doremi_jax.train.methods.base import MixtureMethod


@dataclasses.dataclass(frozen=True)
class FixedMixture(MixtureMethod):
    """Train on the mean token loss of batches sampled by `train.sampling_weights`."""

    name = "lm"

    def step_fn(self, *, model, tx, num_domains, microbatches, reference_model=None):
        return functools.partial(steps.lm_step, model=model, tx=tx, num_domains=num_domains, microbatches=microbatches)
