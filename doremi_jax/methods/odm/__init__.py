"""Online Data Mixing (Albalak et al., 2023): no search before the main model; the main
model's own trainer plug-in (`trainer.OnlineDataMixing`) moves the sampling rates from
the baseline's by an EXP3 bandit (`bandit.py`) as it trains (`step.py`)."""

from __future__ import annotations

import dataclasses
import os

from doremi_jax import metrics, report
from doremi_jax.methods.base import Found, Method
from doremi_jax.methods.odm.trainer import OnlineDataMixing
from doremi_jax.methods.registry import register


@register
@dataclasses.dataclass(frozen=True)
class ODM(Method):
    name = "odm"
    label = "ODM"
    cost = "none beyond the main run (online)"
    trainers = (OnlineDataMixing,)
    main_trainer = OnlineDataMixing.__name__

    def search(self, ctx, search):
        return Found(weights=ctx.baseline_weights, upstream=self.name)

    def report(self, workdir, evaluation, found, domains):
        """The main model's rates over training, their mean, and its verdicts."""
        odm = evaluation[self.name]
        steps, rates = report.weight_trajectories(odm["workdir"], domains)
        metrics.plot_lines(
            os.path.join(workdir, "odm_rates.png"), {d: (steps, rates[d]) for d in domains},
            "ODM sampling rates over the main model's steps", "step", "sampling rate π_t",
        )
        baseline = evaluation["baseline_weights"]
        top = max(domains, key=lambda d: odm["weights"][d])
        return [
            "## Main models: Online Data Mixing vs baseline weights",
            "",
            "| domain | baseline | ODM (mean rate) |",
            "|---|---:|---:|",
            *[f"| {d} | {baseline[d]:.4f} | {odm['weights'][d]:.4f} |" for d in domains],
            "",
            "![ODM rates](odm_rates.png)",
            "",
            report.verdicts_table(odm["verdicts"]),
            "",
            report.eval_table(odm),
            "",
            f"ODM's reward is the main model's own training loss, so it samples most from the domains the model "
            f"finds hardest, whether or not they can be learnt (a pure-noise domain included); here its highest "
            f"mean rate went to {top}. An excess loss over a reference model does not reward what no model learns.",
            "",
        ]
