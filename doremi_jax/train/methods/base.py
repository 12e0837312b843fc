"""The interface a mixture method implements (see `FixedMixture` for the smallest one).

To add a method: subclass `MixtureMethod` as a frozen dataclass whose fields are its
settings, give it a `name`, build its pure step in `train/steps.py` (or reuse `lm_step`),
add it to `METHODS` in `__init__.py` (which registers it with gin under its class
name), and write a gin file in gin/runs/ that sets `train.method = @YourMethod()`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import numpy as np


class MethodError(ValueError):
    """A method's settings are wrong (the loop reports it as a training error)."""


@dataclasses.dataclass(frozen=True)
class MixtureMethod:
    name: ClassVar[str] = ""

    def check(self) -> None:
        """Raise MethodError on settings that cannot work, before anything runs."""

    def identity(self) -> dict:
        """What a resumed run must share with the run in its workdir (run.json)."""
        return {"name": self.name}

    # --- The reference model, for a method that scores against one (DoReMi).
    @property
    def needs_reference(self) -> bool:
        return False

    @property
    def reference_workdir(self) -> str | None:
        return None

    @property
    def reference_model(self):
        """The reference's TransformerConfig; None: the trained model's own."""
        return None

    # --- State and step (traced under jit: jax only).
    def start_weights(self, named_weights: Callable[[str], np.ndarray], sampling: np.ndarray) -> np.ndarray:
        """The weights in the train state at step 0 (`state.domain_weights`), given
        `named_weights` (natural | uniform | a weights.json, for this corpus) and the
        run's fixed sampling weights."""
        return sampling

    def init_state(self, weights) -> Any:
        """The method's own state in the train state (`state.method_state`), from the
        initial weights; a pytree of arrays."""
        return ()

    def step_fn(self, *, model, tx, num_domains: int, microbatches: int, reference_model=None) -> Callable:
        """The pure step: (state, batch) -> (state, metrics), or with a reference
        (state, batch, reference params) -> (state, metrics)."""
        raise NotImplementedError

    # --- What the loop asks between steps (on the host).
    @property
    def live_rates(self) -> bool:
        """True: each batch is sampled by the state's `domain_weights` (set by the last
        step); False: by the run's fixed sampling weights."""
        return False

    def early_stop(self) -> Callable[[int, dict], bool] | None:
        """A fresh predicate (step, that step's metrics) -> stop now?, or None."""
        return None

    def finish(self, workdir: str, domains, state, write: bool) -> dict:
        """At the end of a run that was not preempted: entries for summary.json, and
        with `write` (the primary host) the method's own files in the workdir."""
        return {}
