"""Mixture methods side by side: the main model trained on each method's mixture, with
the same steps, batch and seeds, against the natural (baseline) one; and what each
method spent to choose its mixture, as a fraction of one main run's training FLOPs.

Built from the pipeline's per-seed comparisons (`report.compare`, one per method and
seed, each against the baseline of the same seed) and their verdicts (`report.judge`);
rendered into report.md. Validation chooses the candidate for best; the verdict split
(test where the corpus has one) judges it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from doremi_jax.eval import verdicts
from doremi_jax.train.workdir import read_documents

BASELINE = {"label": "natural (baseline)", "cost": "none"}


def _row(pairs: Sequence[Mapping[str, Any]], key: str, domains: Sequence[str]) -> dict[str, Any]:
    """Mean over seeds of one method's main models (`key` in each seed's pair): on the
    split verdicts are read from, and the validation average that chooses."""
    runs = [p[key] for p in pairs]
    return {
        "average": float(np.mean([r["average"] for r in runs])),
        "worst": float(np.mean([r["worst"]["log_perplexity"] for r in runs])),
        "log_perplexity": {d: float(np.mean([r["log_perplexity"][d] for r in runs])) for d in domains},
        "validation_average": float(np.mean([p["validation"][key]["average"] for p in pairs])),
    }


def held_out_runs(pairs_by_key: Mapping[str, Sequence[Mapping[str, Any]]], split: str,
                  domains: Sequence[str]) -> tuple[dict[str, list], bool]:
    """Per key (a method or "baseline"), each seed's held-out documents on `split`, read
    from the key's workdir in each pair (`report.compare`). When any run did not write
    them (a run from before they were kept), every run becomes one one-token "document"
    carrying its figure, so the runs stay paired and the intervals have no held-out
    part. Returns (runs, whether the documents were read)."""
    docs = {key: [read_documents(p["workdirs"][key], split, domains) for p in pairs]
            for key, pairs in pairs_by_key.items()}
    if all(run is not None for runs in docs.values() for run in runs):
        return docs, True
    return {key: [{d: (np.asarray([p[key]["log_perplexity"][d]]), np.asarray([1])) for d in domains} for p in pairs]
            for key, pairs in pairs_by_key.items()}, False


def build(pairs: Mapping[str, Sequence[Mapping[str, Any]]], judged: Mapping[str, Mapping[str, Any]],
          weights: Mapping[str, Mapping[str, float]], search_flops: Mapping[str, float],
          main_flops: float, costs: Mapping[str, str] | None = None) -> dict[str, Any]:
    """eval.json's "comparison". `pairs`: per method, its per-seed pairs against the
    baseline (`report.compare`, seeds in the same order for every method, each naming
    its method's label); `judged`: per method, `report.judge` of those pairs; `costs`:
    per method, where the FLOPs of choosing its mixture go, in words.

    Per mixture (the baseline's included): the log-perplexities' mean over seeds on the
    verdict split, the validation average, the change against the baseline with its 95%
    interval, the cloze accuracy when evaluated, its weights and its search cost. The
    best: the mixture with the lowest validation average is the candidate (validation
    chooses); it is named best only when, on the verdict split, its average against
    every other mixture's has a 95% interval below zero (all must hold, so no
    correction is needed); the others whose interval includes zero are tied with it."""
    methods = list(pairs)
    first = pairs[methods[0]]
    domains, split = first[0]["domains"], first[0]["split"]
    rows = {"baseline": dict(_row(first, "baseline", domains), **BASELINE)}
    runs, _ = held_out_runs({"baseline": first, **pairs}, split, domains)
    for m in methods:
        rows[m] = dict(_row(pairs[m], m, domains), label=pairs[m][0].get("label", m), cost=(costs or {}).get(m, ""))
        rows[m]["change"] = judged[m]["average"]["change"]
        cloze = judged[m].get("downstream", {}).get("cloze")
        if cloze:
            rows[m]["cloze_accuracy"] = cloze[m]
            rows[m]["cloze_change"] = cloze["change"]
            rows.setdefault("baseline", {})["cloze_accuracy"] = cloze["baseline"]
    for m in rows:
        rows[m]["weights"] = dict(weights[m])
        rows[m]["search_flops"] = float(search_flops.get(m, 0.0))
        rows[m]["search_fraction_of_main_run"] = rows[m]["search_flops"] / main_flops if main_flops else None
    candidate = min(rows, key=lambda m: rows[m]["validation_average"])
    against = {
        m: verdicts.log_perplexity_changes(runs[candidate], runs[m], domains)["average"]
        for m in rows if m != candidate
    }
    return {
        "domains": list(domains),
        "split": split,
        "seeds": [p.get("seed") for p in first],
        "main_run_flops": main_flops,
        "methods": rows,
        "candidate": candidate,
        "candidate_against": {m: i.to_json() for m, i in against.items()},
        "best_average": candidate if all(i.verdict() == "better" for i in against.values()) else None,
        "tied_with_best": [m for m, i in against.items() if i.verdict() != "better"],
    }


def table(comparison: Mapping[str, Any]) -> str:
    """The comparison as markdown: log-perplexity on the verdict split (mean over seeds),
    the change against the baseline with its 95% interval, accuracy, the cost of
    choosing the mixture, then who is best and the weights side by side."""
    methods, domains = comparison["methods"], comparison["domains"]
    n = len(comparison["seeds"])
    split = comparison["split"]

    def change(r, key="change", digits=4):
        return verdicts.Interval.from_json(r[key]).text(digits) if key in r else "-"

    has_cloze = any("cloze_accuracy" in r for r in methods.values())
    head = ["mixture", "validation average", f"{split} average", "change [95% interval]", f"{split} worst",
            *(["cloze accuracy", "cloze change [95% interval]"] if has_cloze else []),
            "cost of choosing (x one main run)"]
    lines = [f"Main models on each mixture; mean over {n} seed(s); log-perplexity in nats per token, lower is "
             f"better; changes against the baseline, paired by seed, on the {split} split.",
             "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for m, r in methods.items():
        frac = r["search_fraction_of_main_run"]
        cost = f"{frac:.2f} ({r['cost']})" if frac else f"0 ({r['cost']})"
        cloze = ([f"{r['cloze_accuracy']:.3f}" if "cloze_accuracy" in r else "-", change(r, "cloze_change", 3)]
                 if has_cloze else [])
        lines.append(f"| {r['label']} | {r['validation_average']:.4f} | {r['average']:.4f} | {change(r)} | "
                     f"{r['worst']:.4f} | " + " | ".join([*cloze, cost]) + " |")
    label = {m: r["label"] for m, r in methods.items()}
    candidate = label[comparison["candidate"]]
    against = ", ".join(f"{label[m]} {verdicts.Interval.from_json(i).text()}"
                        for m, i in comparison["candidate_against"].items())
    if comparison["best_average"]:
        verdict = (f"Best average: {candidate}, chosen on validation and lower on {split} than every other mixture, "
                   f"each 95% interval below zero ({candidate} minus: {against}).")
    else:
        tied = ", ".join(label[m] for m in comparison["tied_with_best"])
        verdict = (f"No mixture is best beyond noise: {candidate} has the lowest validation average, and on {split} "
                   f"its difference from {tied} has a 95% interval that does not exclude zero or favours the other "
                   f"({candidate} minus: {against}).")
    lines += ["", verdict]
    lines += ["", "| domain | " + " | ".join(label[m] for m in methods) + " |",
              "|---|" + "---:|" * len(methods)]
    for d in domains:
        lines.append(f"| {d} log-ppl | " + " | ".join(f"{methods[m]['log_perplexity'][d]:.4f}" for m in methods) + " |")
    for d in domains:
        lines.append(f"| {d} weight | " + " | ".join(f"{methods[m]['weights'][d]:.4f}" for m in methods) + " |")
    return "\n".join(lines)
