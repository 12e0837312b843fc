"""DoReMi's proxy as the trainer's plug-in (Xie et al., 2023): Group DRO against a
trained reference model."""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from doremi_jax import dro
import doremi_jax.methods.doremi.step as step
from doremi_jax.models import TransformerConfig
from doremi_jax.train.mixture import MethodError, MixtureMethod, write_mixture


@dataclasses.dataclass(frozen=True)
class DoReMi(MixtureMethod):
    """The proxy's knobs (paper defaults: η = 1, c = 1e-3, uniform α_0). Writes ᾱ to
    domain_weights.json and a main_mixture.gin that points a main run at it."""

    name = "doremi"

    mode: str = "reweight"  # or "resample": sampling rates follow α_t, plain loss
    learning_rate: float = 1.0  # η
    smoothing: float = 1e-3  # c
    initial_weights: str = "uniform"  # α_0: natural | uniform | weights.json
    reference_workdir: str | None = None
    reference_model: TransformerConfig | None = None  # None: same as the proxy
    accumulation: str = "exact"  # with microbatches > 1: exact | fast
    early_stop_tolerance: float = 0.0  # stop when ‖mean of the last window's α_t − ᾱ_t‖∞ < tolerance
    early_stop_window: int = 0

    def check(self):
        if self.mode not in ("reweight", "resample"):
            raise MethodError(f"DoReMi.mode={self.mode!r}: expected 'reweight' or 'resample'")
        if self.accumulation not in ("exact", "fast"):
            raise MethodError(f"DoReMi.accumulation={self.accumulation!r}: expected 'exact' or 'fast'")

    @property
    def needs_reference(self):
        return True

    @property
    def step_name(self):
        return "doremi_step"

    @property
    def forward_before_accumulating(self):
        return self.accumulation == "exact"  # λ_t and α_t from the whole batch first

    def identity(self):
        return {"name": self.name, "mode": self.mode}

    def weight_transform(self):
        return dro.multiplicative_weights(self.learning_rate, self.smoothing)

    def start_weights(self, named_weights, sampling):
        return named_weights(self.initial_weights)

    def init_state(self, weights):
        return dro.init_proxy_state(weights, self.weight_transform())

    def step_fn(self, *, model, tx, num_domains, microbatches, reference_model=None):
        return functools.partial(
            step.doremi_step, model=model, reference_model=reference_model, tx=tx,
            weight_tx=self.weight_transform(), num_domains=num_domains, mode=self.mode,
            microbatches=microbatches, accumulation=self.accumulation,
        )

    @property
    def live_rates(self):
        return self.mode == "resample"

    def early_stop(self):
        if not self.early_stop_window:
            return None
        history: list[np.ndarray] = []  # α_t of the window

        def reached(step, metrics):
            history.append(np.asarray(metrics["domain_weights"]))
            del history[:-self.early_stop_window]
            return len(history) == self.early_stop_window and dro.early_stop_reached(
                history, metrics["average_domain_weights"], self.early_stop_tolerance, step
            )

        return reached

    def finish(self, workdir, domains, state, write):
        average = np.asarray(jax.device_get(state.method_state.weights.average), np.float64)
        if write:
            write_mixture(workdir, domains, average, "the DoReMi weights")
        return {"average_domain_weights": dict(zip(domains, average.tolist()))}

