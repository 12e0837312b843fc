"""DoReMi with a step-matched reference. The reference keeps its parameters every
`reference_every` steps, and the proxy's excess loss at step t is taken against the
reference saved nearest t instead of the finished reference.

DoReMi's λ_t compares the proxy at step t with the *finished* reference, so part of it is
how much the reference itself still learned after t (the report's "Is λ signal or lag?"
finds that at the demo's scale this lag is most of λ). Against the reference at the same
step, λ_t compares the two at equal training, and the lag term is gone.

    run_pipeline.methods = ['doremi_matched']
    DoReMiStepMatched.reference_every = 25

Everything else is DoReMi's: its rounds, settings (`run_pipeline.*`, `DoReMi.*` for the
proxy), stage kinds (`--gin.proxy/...` reaches both) and report; its stages and files are
in doremi_matched/.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from doremi_jax import config
from doremi_jax.methods.doremi import DoReMiSearch
from doremi_jax.methods.doremi.report import weights_table
from doremi_jax.methods.doremi.trainer import DoReMi
from doremi_jax.methods.registry import register


@dataclasses.dataclass(frozen=True)
class StepMatchedDoReMi(DoReMi):
    """DoReMi's proxy scoring each step against the reference checkpoint nearest it."""

    name = "doremi_matched"

    def reference_checkpoint(self, step: int, saved: Sequence[int]) -> int | None:
        # The reference after s steps is the one to compare with the proxy before its step
        # s + 1 (both have taken s steps); ties go to the earlier checkpoint.
        return min(saved, key=lambda s: (abs(s - step), s)) if saved else None


def step_matched_doremi(proxy: DoReMi = DoReMi()) -> StepMatchedDoReMi:
    """The proxy's plug-in: DoReMi as `proxy` configures it (`DoReMi.*`), step-matched."""
    return StepMatchedDoReMi(**{f.name: getattr(proxy, f.name) for f in dataclasses.fields(proxy)})


@register
@dataclasses.dataclass(frozen=True)
class DoReMiStepMatched(DoReMiSearch):
    name = "doremi_matched"
    label = "DoReMi (step-matched)"
    cost = "reference + proxy runs"
    trainers = (step_matched_doremi,)
    folder = "doremi_matched/"

    reference_every: int = 25  # the reference's steps between the checkpoints it keeps

    def check(self, ctx):
        if self.reference_every < 1:
            raise config.ConfigError(f"DoReMiStepMatched.reference_every={self.reference_every}: expected >= 1")

    def reference_bindings(self):
        # Every checkpoint kept: a proxy step may score against any of them.
        return [f"TrainConfig.checkpoint_every = {self.reference_every}", "TrainConfig.keep_checkpoints = 1000000"]

    def proxy_bindings(self):
        return ["train.method = @step_matched_doremi()", "step_matched_doremi.proxy = @DoReMi()"]

    def combine(self, ctx, found, domains):
        return {}  # the workdir's domain_weights.json and rounds.json stay DoReMi's

    def report(self, workdir, evaluation, found, domains):
        rounds = next(iter(found.values())).record["rounds"]
        last = rounds[-1]
        return [
            f"## {self.label}",
            "",
            f"The proxy's excess loss at step t is taken against the reference checkpoint nearest t (one every "
            f"{self.reference_every} reference steps), not against the finished reference: the reference's own "
            f"later progress (the lag in \"Is λ signal or lag?\") is left out of λ. {len(rounds)} round(s); "
            f"‖ᾱ − α_ref‖∞ = {last['linf_change']:.4f}.",
            "",
            weights_table(domains, evaluation["baseline_weights"], last["average_domain_weights"]).replace(
                "| DoReMi |", f"| {self.label} |"),
            "",
        ]
