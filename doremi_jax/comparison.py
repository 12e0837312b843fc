"""Mixture methods side by side: the main model trained on each method's mixture, with
the same steps, batch and seeds, against the natural (baseline) one; and what each
method spent to choose its mixture, as a fraction of one main run's training FLOPs.

Built from the pipeline's per-seed comparisons (`report.compare`, one per method and
seed, each against the baseline of the same seed); rendered into report.md.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

LABELS = {"baseline": "natural (baseline)", "doremi": "DoReMi", "uniform": "uniform", "odm": "ODM", "regmix": "RegMix"}
# Where the FLOPs of choosing come from, for the table's last column.
SEARCH = {
    "baseline": "none",
    "uniform": "none",
    "doremi": "reference + proxy runs",
    "odm": "none beyond the main run (online)",
    "regmix": "the small runs",
}


def _stats(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "values": v.tolist()}


def _row(runs: Sequence[Mapping[str, Any]], domains: Sequence[str]) -> dict[str, Any]:
    """Mean and spread over seeds of one method's main models (each seed's eval result)."""
    row = {
        "average": _stats([r["average"] for r in runs]),
        "worst": _stats([r["worst"]["log_perplexity"] for r in runs]),
        "log_perplexity": {d: _stats([r["log_perplexity"][d] for r in runs]) for d in domains},
    }
    return row


def build(evaluation: Mapping[str, Any], doremi_pairs: Sequence[Mapping[str, Any]],
          extra: Mapping[str, Sequence[Mapping[str, Any]]], search_flops: Mapping[str, float],
          main_flops: float) -> dict[str, Any]:
    """eval.json's "comparison": per method (the baseline, DoReMi and `extra`'s), the
    log-perplexities' mean and spread over seeds, the cloze accuracy when evaluated, its
    weights and its search cost."""
    domains = doremi_pairs[0]["domains"]
    per_method = {"baseline": [p["baseline"] for p in doremi_pairs], "doremi": [p["doremi"] for p in doremi_pairs]}
    accuracy = {"baseline": [_cloze(p, "baseline") for p in doremi_pairs], "doremi": [_cloze(p, "doremi") for p in doremi_pairs]}
    weights = {"baseline": evaluation["baseline_weights"], "doremi": evaluation["doremi_weights"]}
    for m, pairs in extra.items():
        per_method[m] = [p[m] for p in pairs]
        accuracy[m] = [_cloze(p, m) for p in pairs]
        weights[m] = pairs[0]["weights"]
    rows = {}
    for m, runs in per_method.items():
        row = _row(runs, domains)
        scored = [a for a in accuracy[m] if a is not None]
        if scored:
            row["cloze_accuracy"] = _stats(scored)
        row["weights"] = dict(weights[m])
        row["search_flops"] = float(search_flops.get(m, 0.0))
        row["search_fraction_of_main_run"] = row["search_flops"] / main_flops if main_flops else None
        rows[m] = row
    best = min(rows, key=lambda m: rows[m]["average"]["mean"])
    return {
        "domains": list(domains),
        "seeds": [p["seed"] for p in doremi_pairs],
        "main_run_flops": main_flops,
        "methods": rows,
        "best_average": best,
        # Methods whose mean average log-perplexity is within the best's spread over seeds
        # (sample std; 0 with one seed): not distinguishable from the best by these seeds.
        "tied_with_best": [m for m in rows if m != best and rows[m]["average"]["mean"]
                           - rows[best]["average"]["mean"] <= max(rows[best]["average"]["std"], rows[m]["average"]["std"])],
    }


def _cloze(pair: Mapping[str, Any], key: str) -> float | None:
    task = (pair.get("downstream") or {}).get("cloze")
    return None if task is None else task.get(key)


def table(comparison: Mapping[str, Any]) -> str:
    """The comparison as markdown: log-perplexity and accuracy (mean ± std over seeds),
    the cost of choosing the mixture, then the weights side by side."""
    methods, domains = comparison["methods"], comparison["domains"]
    n = len(comparison["seeds"])

    def cell(s):
        return f"{s['mean']:.4f} ± {s['std']:.4f}" if n > 1 else f"{s['mean']:.4f}"

    has_cloze = any("cloze_accuracy" in r for r in methods.values())
    head = ["mixture", "average log-ppl", "worst log-ppl", *(["cloze accuracy"] if has_cloze else []),
            "cost of choosing (x one main run)"]
    lines = [f"Main models on each mixture; mean ± standard deviation over {n} seed(s); lower log-perplexity is better.",
             "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for m, r in methods.items():
        frac = r["search_fraction_of_main_run"]
        cost = f"{frac:.2f} ({SEARCH.get(m, '')})" if frac else f"0 ({SEARCH.get(m, '')})"
        cloze = [cell(r["cloze_accuracy"]) if "cloze_accuracy" in r else "-"] if has_cloze else []
        lines.append(f"| {LABELS.get(m, m)} | {cell(r['average'])} | {cell(r['worst'])} | " + " | ".join([*cloze, cost]) + " |")
    best = LABELS.get(comparison["best_average"], comparison["best_average"])
    tied = [LABELS.get(m, m) for m in comparison["tied_with_best"]]
    lines += ["", f"Lowest mean average log-perplexity: {best}"
              + (f"; within its spread over seeds: {', '.join(tied)} (not distinguishable by these seeds)." if tied else ".")]
    lines += ["", "| domain | " + " | ".join(LABELS.get(m, m) for m in methods) + " |",
              "|---|" + "---:|" * len(methods)]
    for d in domains:
        lines.append(f"| {d} log-ppl | " + " | ".join(cell(methods[m]["log_perplexity"][d]) for m in methods) + " |")
    for d in domains:
        lines.append(f"| {d} weight | " + " | ".join(f"{methods[m]['weights'][d]:.4f}" for m in methods) + " |")
    return "\n".join(lines)
