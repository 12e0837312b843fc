"""DoReMi (Xie et al., 2023): rounds of a reference model and a proxy trained by Group
DRO against it (`trainer.DoReMi`, `step.py`, the math in `doremi_jax/dro.py`), whose
averaged weights ᾱ the main model trains on. The pipeline's own method: its weights are
the workdir's domain_weights.json and rounds.json.

    round_k/reference  on α_ref,k (round 1: natural or uniform; then ᾱ_{k-1})
    round_k/proxy      Group DRO against round_k/reference  -> ᾱ_k
    ... until ‖ᾱ_k − α_ref,k‖∞ < tolerance or max_rounds

Its settings are the pipeline's (`run_pipeline.initial_reference_weights`,
`max_rounds`, `tolerance`, `reference_gin`, `proxy_gin`, `reference_bindings`,
`proxy_bindings`); the proxy's own are `DoReMi.*` (`--gin.proxy/DoReMi.learning_rate=...`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import numpy as np

from doremi_jax.data import weights as weights_lib
from doremi_jax.methods.base import Found, Method, mean_mixture
from doremi_jax.methods.doremi import report as doremi_report
from doremi_jax.methods.doremi.trainer import DoReMi
from doremi_jax.methods.registry import register
from doremi_jax.stages import file_hash, search_folder, weights_of, write_json

REFERENCE, PROXY = "reference", "proxy"  # its stage kinds


@register
@dataclasses.dataclass(frozen=True)
class DoReMiSearch(Method):
    name = "doremi"
    label = "DoReMi"
    cost = "reference + proxy runs"
    trainers = (DoReMi,)
    stage_kinds = (REFERENCE, PROXY)
    searched = True
    folder: ClassVar[str] = ""  # a variant's stages and files go in a folder of their own

    def reference_bindings(self) -> list[str]:
        """What a variant adds to its reference stages (after the experiment's)."""
        return []

    def proxy_bindings(self) -> list[str]:
        """What a variant adds to its proxy stages (after the experiment's)."""
        return []

    def _reference(self, ctx, k, weights, upstream, search=None):
        o = ctx.options
        return ctx.stages.make(REFERENCE, f"{self.folder}round_{k}/reference",
                               o.get("reference_gin", ("gin/runs/reference.gin",)),
                               [*o.get("reference_bindings", ()), f"REFERENCE_WEIGHTS = {weights!r}",
                                *self.reference_bindings()], upstream, search)

    def _proxy(self, ctx, k, reference_dir, upstream, search=None):
        o = ctx.options
        return ctx.stages.make(PROXY, f"{self.folder}round_{k}/proxy", o.get("proxy_gin", ("gin/runs/proxy.gin",)),
                               [*o.get("proxy_bindings", ()), f"REFERENCE_DIR = {reference_dir!r}",
                                *self.proxy_bindings()], upstream, search)

    def stages(self, ctx):
        rounds = int(ctx.options.get("max_rounds", 1))
        return [(f"{self.folder}{REFERENCE}",
                 self._reference(ctx, 1, ctx.options.get("initial_reference_weights", "natural"), ""), rounds, False),
                (f"{self.folder}{PROXY}", self._proxy(ctx, 1, ctx.workdir, ""), rounds, False)]

    def search(self, ctx, search):
        """One search's rounds of reference and proxy, until ‖ᾱ − α_ref‖∞ < tolerance
        or max_rounds; writes its domain_weights.json and rounds.json."""
        o = ctx.options
        max_rounds, tolerance = int(o.get("max_rounds", 1)), float(o.get("tolerance", 1e-3))
        rounds, reference_weights, upstream, flops = [], o.get("initial_reference_weights", "natural"), "start", 0.0
        for k in range(1, max_rounds + 1):
            ref = self._reference(ctx, k, reference_weights, upstream, search)
            ref_summary, upstream = ref.run()
            flops += ref.flops(ref_summary)
            proxy = self._proxy(ctx, k, ref.workdir, upstream, search)
            proxy_summary, upstream = proxy.run()
            flops += proxy.flops(proxy_summary)
            domains = proxy_summary["domains"]
            alpha_ref = weights_of(ref.workdir, domains)
            average = np.asarray([proxy_summary["average_domain_weights"][d] for d in domains])
            change = float(np.max(np.abs(average - alpha_ref)))
            rounds.append({
                "round": k,
                "reference_weights": dict(zip(domains, alpha_ref.tolist())),
                "average_domain_weights": dict(zip(domains, average.tolist())),
                "linf_change": change,
                "proxy_steps": proxy_summary["step"],
                "proxy_stopped": proxy_summary["stopped"],
                "proxy_workdir": proxy.workdir,
                "reference_workdir": ref.workdir,
            })
            which = "" if search is None else f" (search seed {search})"
            print(f"round {k}{which}: ‖ᾱ − α_ref‖∞ = {change:.4f} (tolerance {tolerance})", flush=True)
            reference_weights = os.path.join(proxy.workdir, "domain_weights.json")
            upstream = file_hash(reference_weights) + upstream
            if change < tolerance:
                break
        final = rounds[-1]["average_domain_weights"]
        folder = os.path.join(ctx.workdir, search_folder(search), self.folder)
        weights_file = os.path.join(folder, "domain_weights.json")
        weights_lib.write_weights(weights_file, list(final), list(final.values()))
        write_json(os.path.join(folder, "rounds.json"), rounds)
        return Found(weights=weights_file, upstream=file_hash(weights_file), mixture=final, flops=flops,
                     record={"rounds": rounds})

    def combine(self, ctx, found, domains):
        """With several searches, the workdir's domain_weights.json is their mean (what
        a user trains on, their spread aside) and its rounds.json the first's."""
        final = mean_mixture(found, domains)
        if len(found) > 1:
            weights_lib.write_weights(os.path.join(ctx.workdir, "domain_weights.json"), domains, list(final.values()))
            write_json(os.path.join(ctx.workdir, "rounds.json"), next(iter(found.values())).record["rounds"])
        return {"doremi_weights": final}

    def report(self, workdir, evaluation, found, domains):
        rounds = next(iter(found.values())).record["rounds"]
        return doremi_report.sections(workdir, rounds, evaluation, domains)
