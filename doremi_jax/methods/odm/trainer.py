"""Online Data Mixing as the trainer's plug-in (Albalak et al., 2023): an EXP3 bandit over domains, rewarded by
the main model's own per-domain training loss, sets the sampling rates as training goes.
No reference or proxy model. Its reward is the loss itself, so it favours the domains
the model finds hardest, a pure-noise domain included (DoReMi's excess loss does not)."""

from __future__ import annotations

import dataclasses
import functools
import jax
import numpy as np

import doremi_jax.methods.odm.bandit as bandit
import doremi_jax.methods.odm.step as step
from doremi_jax.train.mixture import MethodError, MixtureMethod, write_mixture


@dataclasses.dataclass(frozen=True)
class OnlineDataMixing(MixtureMethod):
    """EXP3 with learning rate ε_{t−1} and exploration floor ε_t = min{1/K, √(ln K/(K·t))}
    (the paper's), the reward smoothed by `smoothing` (α; 0.9, the authors' code's
    default). The rates start from `train.sampling_weights` and stay there for
    `warmup_steps`. Writes the mean of the rates over the run to domain_weights.json."""

    name = "odm"

    smoothing: float = 0.9
    warmup_steps: int = 0
    # "paper": Algorithm 1 (importance-weighted reward L/π, softmax); "authors": their
    # released code's update for the paper's results (smoothed exp(L), proportional
    # rates, ε by the global step; `bandit.py`).
    variant: str = "paper"

    def check(self):
        if self.variant not in bandit.VARIANTS:
            raise MethodError(f"OnlineDataMixing.variant={self.variant!r}: expected one of {list(bandit.VARIANTS)}")
        if not 0.0 <= self.smoothing < 1.0:
            raise MethodError(f"OnlineDataMixing.smoothing={self.smoothing}: expected 0 <= smoothing < 1")
        if self.warmup_steps < 0:
            raise MethodError(f"OnlineDataMixing.warmup_steps={self.warmup_steps}: expected >= 0")

    def init_state(self, weights):
        return bandit.init(weights)

    def step_fn(self, *, model, tx, num_domains, microbatches, reference_model=None):
        return functools.partial(
            step.odm_step, model=model, tx=tx, num_domains=num_domains, microbatches=microbatches,
            smoothing=self.smoothing, warmup_steps=self.warmup_steps, variant=self.variant,
        )

    def identity(self):  # the reward's scale differs: a resume must not switch variants
        return {"name": self.name, **({"variant": self.variant} if self.variant != "paper" else {})}

    @property
    def live_rates(self):
        return True

    def finish(self, workdir, domains, state, write):
        average = np.asarray(jax.device_get(state.method_state.average), np.float64)
        final = np.asarray(jax.device_get(state.domain_weights), np.float64)
        if write:
            write_mixture(workdir, domains, average, "the mean ODM rates")
        return {
            "average_domain_weights": dict(zip(domains, average.tolist())),
            "final_domain_weights": dict(zip(domains, final.tolist())),
        }
