"""What decides the data mixture while the one loop trains: the trainer's plug-in.

A plug-in is a frozen dataclass chosen by gin (`train.method = @DoReMi()`); the loop
asks it for its state, its step, the rates of the next batch, whether to stop early and
what to write at the end, and never branches on which one it runs. `FixedMixture` (the
plain LM run of reference and main models) is the smallest; the others live in their
method's folder (`doremi_jax/methods/<name>/`), which registers them with gin.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from doremi_jax import fileio
from doremi_jax.data import weights as weights_lib
from doremi_jax.train import steps


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

    # --- The step's cost, for the FLOPs count and `aot`: a step that runs a reference
    # model's forward as well costs `models.model_flops_per_step(...)["doremi_step"]`.
    @property
    def step_name(self) -> str:
        """The step's name in `model_flops_per_step` and in `aot`'s reports."""
        return "lm_step"

    @property
    def forward_before_accumulating(self) -> bool:
        """With microbatches, the step runs one more forward over the whole batch first."""
        return False

    # --- The reference model, for a method that scores against one.
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

    def reference_checkpoint(self, step: int, saved: Sequence[int]) -> int | None:
        """Which of the reference run's saved checkpoints (`saved`, their steps) the step
        at `step` scores against; None: the latest (the finished reference)."""
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


@dataclasses.dataclass(frozen=True)
class FixedMixture(MixtureMethod):
    """Train on the mean token loss of batches sampled by `train.sampling_weights`."""

    name = "lm"

    def step_fn(self, *, model, tx, num_domains, microbatches, reference_model=None):
        return functools.partial(steps.lm_step, model=model, tx=tx, num_domains=num_domains, microbatches=microbatches)


FIXED_MIXTURE = FixedMixture()  # the plain LM run, the trainer's default


def write_mixture(workdir: str, domains: Sequence[str], weights, what: str) -> None:
    """A method's learnt mixture in the workdir: domain_weights.json, and a gin file
    (main_mixture.gin) that points a main run's mixture at it."""
    weights_lib.write_weights(os.path.join(workdir, "domain_weights.json"), domains, weights)
    path = os.path.join(fileio.absolute(workdir), "domain_weights.json")
    fileio.write_text_atomic(
        os.path.join(workdir, "main_mixture.gin"),
        f"# Train a main model on {what} of {workdir}.\ntrain.sampling_weights = {path!r}\n",
    )
