"""DoReMi's sections of report.md: the weights beside the baseline's, the rounds, α_t
over the proxy's steps, and whether λ is signal or lag (`diagnostics.py`)."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from doremi_jax import metrics
import doremi_jax.methods.doremi.diagnostics as diagnostics
from doremi_jax.report import weight_trajectories


def weights_table(domains: Sequence[str], baseline: Mapping[str, float], doremi: Mapping[str, float]) -> str:
    lines = ["| domain | baseline | DoReMi | ratio |", "|---|---:|---:|---:|"]
    for dom in domains:
        ratio = doremi[dom] / baseline[dom] if baseline[dom] > 0 else float("inf")
        lines.append(f"| {dom} | {baseline[dom]:.4f} | {doremi[dom]:.4f} | {ratio:.2f}x |")
    return "\n".join(lines)


def _lambda_section(workdir: str, round_: Mapping[str, Any], domains: Sequence[str]) -> list[str]:
    """The report's "is λ signal or lag?" section of one round, with its λ plot."""
    proxy_dir = round_["proxy_workdir"]
    reference_dir = round_.get("reference_workdir") or os.path.join(os.path.dirname(proxy_dir), "reference")
    diag = diagnostics.lambda_diagnostics(proxy_dir, reference_dir, domains)
    if not diag:
        return []
    k = round_["round"]
    steps, lam = diagnostics.lambda_trajectories(proxy_dir, domains)
    metrics.plot_lines(
        os.path.join(workdir, f"lambda_round_{k}.png"), {d: (steps, lam[d]) for d in domains},
        f"λ_t over proxy steps, moving average (round {k})", "proxy step", "excess loss λ_t (nats/token)",
    )
    return [f"## Is λ signal or lag? (round {k})", "", diagnostics.diagnostics_table(diag), "",
            f"![λ_t round {k}](lambda_round_{k}.png)", ""]


def sections(workdir: str, rounds: Sequence[Mapping[str, Any]], evaluation: Mapping[str, Any],
             domains: Sequence[str]) -> list[str]:
    baseline = evaluation["baseline_weights"]
    final = evaluation["doremi_weights"]  # the last round's ᾱ (the searches' mean with several)
    metrics.plot_weights(
        os.path.join(workdir, "weights.png"), domains,
        {"baseline": [baseline[d] for d in domains],
         **{f"DoReMi round {r['round']}": [r["average_domain_weights"][d] for d in domains] for r in rounds}},
        "Domain weights",
    )
    lambda_sections = []
    for r in rounds:
        steps, alphas = weight_trajectories(r["proxy_workdir"], domains)
        metrics.plot_lines(
            os.path.join(workdir, f"alpha_round_{r['round']}.png"),
            {d: (steps, alphas[d]) for d in domains},
            f"α_t over proxy steps (round {r['round']})", "proxy step", "domain weight α_t",
        )
        lambda_sections += _lambda_section(workdir, r, domains)
    return [
        "## Domain weights",
        "",
        weights_table(domains, baseline, final),
        "",
        "![domain weights](weights.png)",
        "",
        "## Rounds",
        "",
        "| round | ‖ᾱ − α_ref‖∞ | proxy steps |",
        "|---:|---:|---:|",
        *[f"| {r['round']} | {r['linf_change']:.4f} | {r['proxy_steps']} ({r['proxy_stopped']}) |" for r in rounds],
        "",
        *[f"![α_t round {r['round']}](alpha_round_{r['round']}.png)" for r in rounds],
        "",
        *lambda_sections,
    ]
