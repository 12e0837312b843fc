"""The pipeline's comparison (eval.json) and its human-readable report (report.md + PNGs)."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from doremi_jax import comparison, diagnostics, fileio, metrics


def _curve(workdir: str, key: str = "eval/log_perplexity/average") -> tuple[list[int], list[float]]:
    """(steps, values) of one metric from a run's periodic evaluations."""
    steps, values = [], []
    for row in metrics.read_metrics(workdir):
        if key in row:
            steps.append(row["step"])
            values.append(row[key])
    return steps, values


def speedup(doremi_curve, baseline_curve, higher_is_better: bool = False) -> dict[str, Any]:
    """Steps the DoReMi run needs to reach the baseline's final value (average
    log-perplexity, or an accuracy with `higher_is_better`), and the ratio baseline
    steps / those steps (the paper's "2.6x faster")."""
    b_steps, b_values = baseline_curve
    d_steps, d_values = doremi_curve
    if not b_steps or not d_steps:
        return {"steps_to_baseline": None, "speedup": None}
    target = b_values[-1]
    for step, value in zip(d_steps, d_values):
        if (value >= target) if higher_is_better else (value <= target):
            return {"steps_to_baseline": step, "speedup": b_steps[-1] / step, "baseline_final": target}
    return {"steps_to_baseline": None, "speedup": None, "baseline_final": target}


def compare_downstream(doremi_dir: str, baseline_dir: str, d: Mapping, b: Mapping, method: str = "doremi") -> dict[str, Any]:
    """Per task: both accuracies, per-domain ones for cloze, and the speedup read from
    the accuracy-against-steps curves."""
    out = {}
    for task in d:
        if task not in b:
            continue
        key = f"downstream/{task}"
        out[task] = {
            method: d[task]["accuracy"],
            "baseline": b[task]["accuracy"],
            "examples": d[task]["examples"],
            **speedup(_curve(doremi_dir, key), _curve(baseline_dir, key), higher_is_better=True),
        }
        if "per_domain" in d[task]:
            out[task]["per_domain"] = {
                dom: {method: acc, "baseline": b[task]["per_domain"].get(dom)}
                for dom, acc in d[task]["per_domain"].items()
            }
    return out


def downstream_average(doremi_dir: str, baseline_dir: str, downstream: Mapping[str, Any],
                       method: str = "doremi") -> dict[str, Any] | None:
    """With two or more tasks: the unweighted mean accuracy over tasks of each model (the
    paper's headline downstream figure), and the speedup read from the mean-over-tasks
    curves (at the steps every task was evaluated)."""
    tasks = list(downstream)
    if len(tasks) < 2:
        return None

    def mean_curve(workdir):
        curves = [dict(zip(*_curve(workdir, f"downstream/{t}"))) for t in tasks]
        common = sorted(set.intersection(*(set(c) for c in curves)))
        return common, [float(np.mean([c[step] for c in curves])) for step in common]

    return {
        "tasks": tasks,
        method: float(np.mean([downstream[t][method] for t in tasks])),
        "baseline": float(np.mean([downstream[t]["baseline"] for t in tasks])),
        **speedup(mean_curve(doremi_dir), mean_curve(baseline_dir), higher_is_better=True),
    }


LABELS = comparison.LABELS  # how the report names a method's main model


def compare(doremi_dir: str, baseline_dir: str, doremi_summary: Mapping, baseline_summary: Mapping,
            method: str = "doremi") -> dict[str, Any]:
    """A main model trained by `method` against the baseline main model."""
    d, b = doremi_summary["eval"], baseline_summary["eval"]
    domains = [x for x in d["log_perplexity"] if x in b["log_perplexity"]]  # scored in both
    improved = [x for x in domains if d["log_perplexity"][x] < b["log_perplexity"][x]]
    result = {
        "method": method,
        "domains": domains,
        method: d,
        "baseline": b,
        "domains_improved": len(improved),
        "improved": improved,
        **speedup(_curve(doremi_dir), _curve(baseline_dir)),
    }
    if "downstream" in doremi_summary and "downstream" in baseline_summary:
        result["downstream"] = compare_downstream(
            doremi_dir, baseline_dir, doremi_summary["downstream"], baseline_summary["downstream"], method
        )
        average = downstream_average(doremi_dir, baseline_dir, result["downstream"], method)
        if average:
            result["downstream_average"] = average
    return result


def _spread(values: Sequence[float]) -> dict[str, Any]:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "values": v.tolist()}


def across_seeds(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and spread over the main models' seeds (each seed a DoReMi/baseline pair
    trained with the same seed): per domain, for the average and the worst case, of
    each run and of their paired difference. The spread is the sample standard
    deviation over seeds; a domain counts as improved (or worse) only when its mean
    difference exceeds its spread; the speedup is given with its range."""
    domains = per_seed[0]["domains"]
    method = per_seed[0].get("method", "doremi")

    def triple(get):
        d = [get(e[method]) for e in per_seed]
        b = [get(e["baseline"]) for e in per_seed]
        return {method: _spread(d), "baseline": _spread(b), "change": _spread(np.subtract(d, b))}

    per_domain = {dom: triple(lambda r, dom=dom: r["log_perplexity"][dom]) for dom in domains}
    speedups = [e.get("speedup") for e in per_seed]
    reached = [x for x in speedups if x]
    return {
        "method": method,
        "seeds": [e["seed"] for e in per_seed],
        "log_perplexity": per_domain,
        "average": triple(lambda r: r["average"]),
        "worst": triple(lambda r: r["worst"]["log_perplexity"]),
        "improved": [d for d, t in per_domain.items() if t["change"]["mean"] < -t["change"]["std"]],
        "worse": [d for d, t in per_domain.items() if t["change"]["mean"] > t["change"]["std"]],
        "speedup": {"values": speedups, "min": min(reached) if reached else None, "max": max(reached) if reached else None,
                    "seeds_reaching_baseline": len(reached)},
    }


def _verdict(name: str, change: Mapping[str, Any], label: str = "DoReMi") -> str:
    mean, std = change["mean"], change["std"]
    if mean < -std:
        word = "lower than the baseline's, beyond the spread over seeds"
    elif mean > std:
        word = "higher than the baseline's, beyond the spread over seeds"
    else:
        word = "within the spread over seeds of the baseline's: not distinguishable from noise"
    return f"{label}'s {name} log-perplexity is {word} ({mean:+.4f} ± {std:.4f} nats)."


def seeds_table(summary: Mapping[str, Any]) -> str:
    n = len(summary["seeds"])
    method = summary.get("method", "doremi")
    label = LABELS.get(method, method)
    lines = [f"Mean ± standard deviation over {n} seeds ({', '.join(map(str, summary['seeds']))}); the change is "
             "paired by seed.", "",
             f"| domain | baseline log-ppl | {label} log-ppl | change |", "|---|---:|---:|---:|"]

    def row(name, t):
        b, d, c = t["baseline"], t[method], t["change"]
        return f"| {name} | {b['mean']:.4f} ± {b['std']:.4f} | {d['mean']:.4f} ± {d['std']:.4f} | {c['mean']:+.4f} ± {c['std']:.4f} |"

    lines += [row(dom, t) for dom, t in summary["log_perplexity"].items()]
    lines += [row("**average**", summary["average"]), row("**worst**", summary["worst"]), ""]
    k = len(summary["log_perplexity"])
    lines.append(f"Domains improved beyond the spread: {len(summary['improved'])} of {k}"
                 + (f" ({', '.join(summary['improved'])})" if summary["improved"] else "")
                 + f"; worse beyond the spread: {len(summary['worse'])}"
                 + (f" ({', '.join(summary['worse'])})" if summary["worse"] else "") + ".")
    lines.append(_verdict("average", summary["average"]["change"], label))
    lines.append(_verdict("worst-case", summary["worst"]["change"], label))
    sp = summary["speedup"]
    if sp["seeds_reaching_baseline"]:
        lines.append(f"Speedup to the baseline's final average log-perplexity: {sp['min']:.2f}x to {sp['max']:.2f}x "
                     f"({sp['seeds_reaching_baseline']} of {n} seeds reach it).")
    else:
        lines.append(f"{label} did not reach the baseline's final average log-perplexity with any seed.")
    return "\n".join(lines)


def weights_table(domains: Sequence[str], baseline, doremi: Mapping[str, float]) -> str:
    lines = ["| domain | baseline | DoReMi | ratio |", "|---|---:|---:|---:|"]
    for i, dom in enumerate(domains):
        ratio = doremi[dom] / baseline[i] if baseline[i] > 0 else float("inf")
        lines.append(f"| {dom} | {baseline[i]:.4f} | {doremi[dom]:.4f} | {ratio:.2f}x |")
    return "\n".join(lines)


def eval_table(evaluation: Mapping[str, Any]) -> str:
    method = evaluation.get("method", "doremi")
    label = LABELS.get(method, method)
    d, b = evaluation[method], evaluation["baseline"]
    lines = [
        f"| domain | baseline log-ppl | {label} log-ppl | change |",
        "|---|---:|---:|---:|",
    ]
    for dom in evaluation["domains"]:
        lb, ld = b["log_perplexity"][dom], d["log_perplexity"][dom]
        lines.append(f"| {dom} | {lb:.4f} | {ld:.4f} | {ld - lb:+.4f} |")
    lines.append(f"| **average** | {b['average']:.4f} | {d['average']:.4f} | {d['average'] - b['average']:+.4f} |")
    lines.append(
        f"| **worst** | {b['worst']['log_perplexity']:.4f} ({b['worst']['domain']}) | "
        f"{d['worst']['log_perplexity']:.4f} ({d['worst']['domain']}) | "
        f"{d['worst']['log_perplexity'] - b['worst']['log_perplexity']:+.4f} |"
    )
    lines.append("")
    unscored = sorted(set(d.get("unscored", [])) | set(b.get("unscored", [])))
    if unscored:
        lines.append(f"No held-out tokens, left out of the average and the worst case: {', '.join(unscored)}.")
    lines.append(f"Domains improved: {evaluation['domains_improved']} of {len(evaluation['domains'])}.")
    if evaluation.get("speedup"):
        lines.append(
            f"{label} reaches the baseline's final average log-perplexity at step "
            f"{evaluation['steps_to_baseline']}: {evaluation['speedup']:.2f}x fewer steps."
        )
    else:
        lines.append(f"{label} did not reach the baseline's final average log-perplexity within the run.")
    return "\n".join(lines)


def downstream_table(downstream: Mapping[str, Any], average: Mapping[str, Any] | None = None) -> str:
    lines = ["| task | baseline accuracy | DoReMi accuracy | change | examples |", "|---|---:|---:|---:|---:|"]
    for task, r in downstream.items():
        lines.append(
            f"| {task} | {r['baseline']:.3f} | {r['doremi']:.3f} | {r['doremi'] - r['baseline']:+.3f} | {r['examples']} |"
        )
        for dom, acc in r.get("per_domain", {}).items():
            base = acc["baseline"]
            lines.append(f"| &nbsp;&nbsp;{dom} | {base:.3f} | {acc['doremi']:.3f} | {acc['doremi'] - base:+.3f} | |")
    if average:
        a = average
        lines.append(f"| **average over {len(a['tasks'])} tasks** | {a['baseline']:.3f} | {a['doremi']:.3f} | "
                     f"{a['doremi'] - a['baseline']:+.3f} | |")
    lines.append("")
    if average:
        if average.get("speedup"):
            lines.append(f"Average over tasks: DoReMi reaches the baseline's final mean accuracy "
                         f"({average['baseline_final']:.3f}) at step {average['steps_to_baseline']}: "
                         f"{average['speedup']:.2f}x fewer steps.")
        else:
            lines.append("Average over tasks: DoReMi did not reach the baseline's final mean accuracy within the run.")
    for task, r in downstream.items():
        if r.get("speedup"):
            lines.append(
                f"{task}: DoReMi reaches the baseline's final accuracy ({r['baseline_final']:.3f}) at step "
                f"{r['steps_to_baseline']}: {r['speedup']:.2f}x fewer steps."
            )
        else:
            lines.append(f"{task}: DoReMi did not reach the baseline's final accuracy within the run.")
    return "\n".join(lines)


def _alpha_trajectories(proxy_dir: str, domains: Sequence[str]):
    steps, alphas = [], {d: [] for d in domains}
    for row in metrics.read_metrics(proxy_dir):
        if f"domain_weights/{domains[0]}" in row:
            steps.append(row["step"])
            for d in domains:
                alphas[d].append(row[f"domain_weights/{d}"])
    return steps, alphas


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


def write_report(workdir: str, rounds: list[dict], evaluation: Mapping[str, Any], doremi_dir: str, baseline_dir: str) -> str:
    domains = evaluation["domains"]
    baseline = [evaluation["baseline_weights"][d] for d in domains]
    final = rounds[-1]["average_domain_weights"]
    metrics.plot_weights(
        os.path.join(workdir, "weights.png"), domains,
        {"baseline": baseline, **{f"DoReMi round {r['round']}": [r["average_domain_weights"][d] for d in domains] for r in rounds}},
        "Domain weights",
    )
    lambda_sections = []
    for r in rounds:
        steps, alphas = _alpha_trajectories(r["proxy_workdir"], domains)
        metrics.plot_lines(
            os.path.join(workdir, f"alpha_round_{r['round']}.png"),
            {d: (steps, alphas[d]) for d in domains},
            f"α_t over proxy steps (round {r['round']})", "proxy step", "domain weight α_t",
        )
        lambda_sections += _lambda_section(workdir, r, domains)
    metrics.plot_weights(
        os.path.join(workdir, "log_perplexity.png"), domains,
        {"baseline": [evaluation["baseline"]["log_perplexity"][d] for d in domains],
         "DoReMi": [evaluation["doremi"]["log_perplexity"][d] for d in domains]},
        "Per-domain log-perplexity of the main models (nats/token, lower is better)",
    )
    d_curve, b_curve = _curve(doremi_dir), _curve(baseline_dir)
    metrics.plot_lines(
        os.path.join(workdir, "average_log_perplexity.png"),
        {"baseline": b_curve, "DoReMi": d_curve},
        "Average log-perplexity over training", "step", "average log-perplexity (nats/token)",
        hline=(b_curve[1][-1], "baseline final") if b_curve[1] else None,
    )

    lines = [
        "# DoReMi report",
        "",
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
        "## Main models: DoReMi weights vs baseline weights",
        "",
        eval_table(evaluation),
        "",
        "![per-domain log-perplexity](log_perplexity.png)",
        "",
        "![average log-perplexity over training](average_log_perplexity.png)",
        "",
    ]
    if evaluation.get("across_seeds"):
        lines[lines.index("## Main models: DoReMi weights vs baseline weights")] += f" (seed {evaluation['seed']})"
        lines += ["## Main models over seeds", "", seeds_table(evaluation["across_seeds"]), ""]
    if evaluation.get("comparison"):
        lines += ["## Mixtures compared", "", comparison.table(evaluation["comparison"]), ""]
    if evaluation.get("regmix_search"):
        lines += _regmix_section(evaluation["regmix_search"])
    if evaluation.get("odm"):
        lines += _odm_section(workdir, evaluation["odm"], domains, baseline, final)
    downstream = evaluation.get("downstream") or {}
    if downstream:
        lines += ["## Downstream accuracy (greedy decoding)", "",
                  downstream_table(downstream, evaluation.get("downstream_average")), ""]
    for task in downstream:
        key = f"downstream/{task}"
        d_acc, b_acc = _curve(doremi_dir, key), _curve(baseline_dir, key)
        metrics.plot_lines(
            os.path.join(workdir, f"accuracy_{task}.png"),
            {"baseline": b_acc, "DoReMi": d_acc},
            f"{task} accuracy over training", "step", "accuracy",
            hline=(b_acc[1][-1], "baseline final") if b_acc[1] else None,
        )
        lines += [f"![{task} accuracy over training](accuracy_{task}.png)", ""]
    path = os.path.join(workdir, "report.md")
    fileio.write_text_atomic(path, "\n".join(lines))
    return path


def _odm_section(workdir: str, odm: Mapping[str, Any], domains: Sequence[str], baseline, doremi) -> list[str]:
    """Online Data Mixing's main model against the same baseline: its rates over
    training, their mean beside the DoReMi weights, and the comparison."""
    steps, rates = _alpha_trajectories(odm["workdir"], domains)
    metrics.plot_lines(
        os.path.join(workdir, "odm_rates.png"), {d: (steps, rates[d]) for d in domains},
        "ODM sampling rates over the main model's steps", "step", "sampling rate π_t",
    )
    top = max(domains, key=lambda d: odm["weights"][d])
    lines = [
        "## Main models: Online Data Mixing vs baseline weights",
        "",
        "| domain | baseline | DoReMi | ODM (mean rate) |",
        "|---|---:|---:|---:|",
        *[f"| {d} | {baseline[i]:.4f} | {doremi[d]:.4f} | {odm['weights'][d]:.4f} |" for i, d in enumerate(domains)],
        "",
        "![ODM rates](odm_rates.png)",
        "",
        eval_table(odm),
        "",
        f"ODM's reward is the main model's own training loss, so it samples most from the domains the model "
        f"finds hardest, whether or not they can be learnt (a pure-noise domain included); here its highest "
        f"mean rate went to {top}. DoReMi's excess loss over a reference does not reward what no model learns.",
        "",
    ]
    if odm.get("across_seeds"):
        lines += ["### ODM over seeds", "", seeds_table(odm["across_seeds"]), ""]
    return lines


def _regmix_section(search: Mapping[str, Any]) -> list[str]:
    runs = search["runs"]
    target = ", ".join(search["target_domains"])
    fits = ", ".join(f"{r} {v:+.2f}" for r, v in search["held_out_spearman"].items())
    return [
        "## RegMix's search",
        "",
        f"{len(runs)} small runs on random mixtures; target: the mean validation log-perplexity over {target}. "
        f"Leave-one-out rank correlation (Spearman) of each regressor's predictions with the held-out runs' "
        f"losses: {fits}; used: {search['regressor']}. Predicted target loss of the chosen mixture: "
        f"{search['predicted_target_loss']:.4f} (best small run: {min(r['target_loss'] for r in runs):.4f}). "
        "The search keeps each domain's weight within what the small runs tried and within the main "
        "run's epoch cap: " + ", ".join(f"{d} ≤ {u:.3f}" for d, u in search.get("search_upper_bounds", {}).items()) + ".",
        "",
        "| run | " + " | ".join(runs[0]["mixture"]) + " | target loss |",
        "|---:|" + "---:|" * (len(runs[0]["mixture"]) + 1),
        *[f"| {r['run']} | " + " | ".join(f"{w:.3f}" for w in r["mixture"].values()) + f" | {r['target_loss']:.4f} |"
          for r in runs],
        "",
    ]

