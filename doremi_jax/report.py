"""The pipeline's comparison (eval.json) and its human-readable report (report.md + PNGs):
the frame every method's main models share (one seed's pair against the baseline, the
verdicts over seeds, the tables and plots); a method's own sections come from its
folder (`doremi_jax/methods/<name>/`)."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from doremi_jax import comparison, fileio, metrics
from doremi_jax.eval import verdicts
from doremi_jax.faults import fault_point


def _curve(workdir: str, key: str = "eval/log_perplexity/average") -> tuple[list[int], list[float]]:
    """(steps, values) of one metric from a run's periodic evaluations."""
    steps, values = [], []
    for row in metrics.read_metrics(workdir):
        if key in row:
            steps.append(row["step"])
            values.append(row[key])
    return steps, values


def _average_key(split: str) -> str:
    return f"{metrics.eval_prefix(split)}/log_perplexity/average"


def _judged(summary: Mapping) -> tuple[str, Mapping]:
    """(split, result) a run is judged on: test when it was scored there, else validation."""
    return ("test", summary["test"]) if "test" in summary else ("validation", summary["eval"])


def compare(doremi_dir: str, baseline_dir: str, doremi_summary: Mapping, baseline_summary: Mapping,
            method: str, label: str | None = None) -> dict[str, Any]:
    """One seed's main model trained by `method` (named `label` in words) beside the
    baseline main model: both results on the split verdicts are read from (test when the
    corpus has one), the validation results beside them, and the workdirs (their
    held-out documents and curves feed `judge`)."""
    split, d = _judged(doremi_summary)
    _, b = _judged(baseline_summary)
    domains = [x for x in d["log_perplexity"] if x in b["log_perplexity"]]  # scored in both
    result = {
        "method": method,
        "label": label or method,
        "split": split,
        "domains": domains,
        method: d,
        "baseline": b,
        "validation": {method: doremi_summary["eval"], "baseline": baseline_summary["eval"]},
        "workdirs": {method: doremi_dir, "baseline": baseline_dir},
    }
    if "downstream" in doremi_summary and "downstream" in baseline_summary:
        result["downstream"] = {
            task: {method: r["accuracy"], "baseline": baseline_summary["downstream"][task]["accuracy"],
                   "examples": r["examples"],
                   **({"per_domain": {dom: {method: acc, "baseline": baseline_summary["downstream"][task]
                                            .get("per_domain", {}).get(dom)}
                                      for dom, acc in r["per_domain"].items()}} if "per_domain" in r else {})}
            for task, r in doremi_summary["downstream"].items() if task in baseline_summary["downstream"]
        }
    return result


def judge(pairs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The verdicts of one method against the baseline over its seeds (each pair from
    `compare`, paired by seed): per domain, the average and the worst case, each run's
    mean over seeds and the change's 95% interval (seeds and held-out documents,
    `eval.verdicts`); the domains better or worse (Holm-corrected); the speedup to the
    baseline's final average log-perplexity; downstream accuracy changes."""
    method, split = pairs[0]["method"], pairs[0]["split"]
    domains = pairs[0]["domains"]
    runs, held_out_noise = comparison.held_out_runs({method: pairs, "baseline": pairs}, split, domains)
    changes = verdicts.log_perplexity_changes(runs[method], runs["baseline"], domains)

    def entry(get, change):
        return {method: float(np.mean([get(p[method]) for p in pairs])),
                "baseline": float(np.mean([get(p["baseline"]) for p in pairs])),
                "values": {method: [get(p[method]) for p in pairs], "baseline": [get(p["baseline"]) for p in pairs]},
                "change": change.to_json()}

    out = {
        "method": method,
        "label": pairs[0].get("label", method),
        "split": split,
        "seeds": [p.get("seed") for p in pairs],
        "log_perplexity": {d: entry(lambda r, d=d: r["log_perplexity"][d], changes["per_domain"][d]) for d in domains},
        "average": entry(lambda r: r["average"], changes["average"]),
        "worst": entry(lambda r: r["worst"]["log_perplexity"], changes["worst"]),
        "improved": changes["improved"],
        "worse": changes["worse"],
        "correction": "Holm",
    }
    out["held_out_noise"] = held_out_noise
    out["documents"] = changes["documents"] if held_out_noise else {}
    out["tokens"] = changes["tokens"] if held_out_noise else {}
    key = _average_key(split)
    out["speedup"] = verdicts.speedup([_curve(p["workdirs"][method], key) for p in pairs],
                                      [_curve(p["workdirs"]["baseline"], key) for p in pairs])
    if all("downstream" in p for p in pairs):
        tasks = list(pairs[0]["downstream"])
        out["downstream"] = {task: _accuracy_verdict(pairs, method, [task]) for task in tasks}
        if len(tasks) > 1:
            out["downstream_average"] = dict(_accuracy_verdict(pairs, method, tasks), tasks=tasks)
    return out


def _accuracy_verdict(pairs, method: str, tasks: Sequence[str]) -> dict[str, Any]:
    """Accuracy (the mean over `tasks`) of both models over seeds, its change's interval
    and the speedup read off the accuracy-against-steps curves."""
    accuracy = {k: [float(np.mean([p["downstream"][t][k] for t in tasks])) for p in pairs] for k in (method, "baseline")}
    # The mean of T tasks' accuracies has about the binomial variance of T x n examples.
    examples = min(p["downstream"][t]["examples"] for p in pairs for t in tasks) * len(tasks)

    def curve(workdir):
        curves = [dict(zip(*_curve(workdir, f"downstream/{t}"))) for t in tasks]
        common = sorted(set.intersection(*(set(c) for c in curves)))
        return common, [float(np.mean([c[step] for c in curves])) for step in common]

    return {
        method: float(np.mean(accuracy[method])), "baseline": float(np.mean(accuracy["baseline"])),
        "examples": examples,
        "change": verdicts.accuracy_change(accuracy[method], accuracy["baseline"], examples).to_json(),
        "speedup": verdicts.speedup([curve(p["workdirs"][method]) for p in pairs],
                                    [curve(p["workdirs"]["baseline"]) for p in pairs], higher_is_better=True),
    }


_WORDS = {
    "better": "better than the baseline's: its 95% interval is below zero",
    "worse": "worse than the baseline's: its 95% interval is above zero",
    "within noise": "not distinguishable from the baseline's: its 95% interval includes zero",
    "no interval": "without an interval (one seed, and fewer than two held-out documents to bootstrap): no verdict",
}


def _sentence(name: str, change: Mapping[str, Any], label: str, unit: str = "nats",
              lower_is_better: bool = True) -> str:
    interval = verdicts.Interval.from_json(change)
    word = _WORDS[interval.verdict(lower_is_better)]
    return f"{label}'s {name} is {word} ({interval.text()} {unit})."


def _speedup_line(sp: Mapping[str, Any], change: Mapping[str, Any], label: str, what: str,
                  lower_is_better: bool = True) -> str | None:
    """A speedup only for a change beyond noise, and only with its interval."""
    if verdicts.Interval.from_json(change).verdict(lower_is_better) != "better":
        return None
    if sp.get("speedup") is None:
        return (f"{label} reaches the baseline's final {what} with {sp['reached']} of {sp['seeds']} seeds: "
                "no speedup figure (one needs every seed to reach it, and two or more seeds).")
    high = "∞" if sp.get("speedup_high") is None else f"{sp['speedup_high']:.2f}x"
    return (f"{label} reaches the baseline's final {what} at step {sp['mean_step']:.0f} "
            f"[{sp['step_low']:.0f}, {sp['step_high']:.0f}] of {sp['baseline_steps']:.0f}: "
            f"{sp['speedup']:.2f}x fewer steps [{sp['speedup_low']:.2f}x, {high}] (95% over seeds, "
            "steps interpolated between evaluations).")


def verdicts_table(summary: Mapping[str, Any]) -> str:
    """`judge`'s verdicts as markdown: every change with its interval, words only where
    the interval says so."""
    n = len(summary["seeds"])
    method = summary["method"]
    label = summary.get("label", method)
    seeds = ", ".join(str(s) for s in summary["seeds"] if s is not None)
    noise = ("the spread over seeds and a bootstrap over the held-out documents"
             if summary.get("held_out_noise") else "the spread over seeds only (the runs wrote no held-out documents)")
    lines = [f"On the {summary['split']} split; mean over {n} seed(s){f' ({seeds})' if seeds else ''}; "
             f"the change is paired by seed, with its 95% interval from {noise}.", "",
             f"| domain | baseline log-ppl | {label} log-ppl | change [95% interval] | verdict (uncorrected) | documents | tokens |",
             "|---|---:|---:|---:|---|---:|---:|"]

    def row(name, t, docs="", tokens=""):
        change = verdicts.Interval.from_json(t["change"])
        return (f"| {name} | {t['baseline']:.4f} | {t[method]:.4f} | {change.text()} | {change.verdict()} | "
                f"{docs} | {tokens} |")

    lines += [row(d, t, summary["documents"].get(d, ""), summary["tokens"].get(d, ""))
              for d, t in summary["log_perplexity"].items()]
    lines += [row("**average**", summary["average"]), row("**worst**", summary["worst"]), ""]
    k = len(summary["log_perplexity"])
    lines.append(f"Domains better (interval below zero, Holm-corrected over the {k} domains): "
                 f"{len(summary['improved'])} of {k}"
                 + (f" ({', '.join(summary['improved'])})" if summary["improved"] else "")
                 + f"; worse: {len(summary['worse'])}"
                 + (f" ({', '.join(summary['worse'])})" if summary["worse"] else "") + ".")
    lines.append(_sentence("average log-perplexity", summary["average"]["change"], label))
    lines.append(_sentence("worst-case log-perplexity", summary["worst"]["change"], label))
    line = _speedup_line(summary["speedup"], summary["average"]["change"], label, "average log-perplexity")
    if line:
        lines.append(line)
    downstream = dict(summary.get("downstream", {}))
    if summary.get("downstream_average"):
        downstream[f"mean over {len(summary['downstream_average']['tasks'])} tasks"] = summary["downstream_average"]
    for task, r in downstream.items():
        lines.append(_sentence(f"{task} accuracy ({r['baseline']:.3f} -> {r[method]:.3f}, {r['examples']} examples "
                               "a run)", r["change"], label, unit="", lower_is_better=False).replace(" )", ")"))
        line = _speedup_line(r["speedup"], r["change"], label, f"{task} accuracy", lower_is_better=False)
        if line:
            lines.append(line)
    return "\n".join(lines)


def split_note(split: str) -> str:
    """The report's first words on where its verdicts come from."""
    if split == "test":
        return ("Verdicts are on the corpus's test split; everything that chooses (RegMix's target, the "
                "comparison's candidate for best) reads the validation split.")
    return ("**This corpus has no test split: the verdicts below are on the validation split, the same split "
            "used to choose (RegMix's target, the comparison's candidate for best), and so flatter the "
            "chosen mixtures.** Give every domain a test split to judge on unseen documents.")


def eval_table(evaluation: Mapping[str, Any]) -> str:
    """One seed's figures side by side (the verdicts, with intervals, are `verdicts_table`)."""
    method = evaluation["method"]
    label = evaluation.get("label", method)
    d, b = evaluation[method], evaluation["baseline"]
    seed = evaluation.get("seed")
    lines = [
        f"{evaluation['split'].capitalize()} split" + ("" if seed is None else f", seed {seed}") + ":",
        "",
        f"| domain | baseline log-ppl | {label} log-ppl | difference |",
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
    unscored = sorted(set(d.get("unscored", [])) | set(b.get("unscored", [])))
    if unscored:
        lines += ["", f"No held-out tokens, left out of the average and the worst case: {', '.join(unscored)}."]
    return "\n".join(lines)


def downstream_table(downstream: Mapping[str, Any], method: str, label: str) -> str:
    """One seed's accuracies (the verdicts, with intervals, are `verdicts_table`)."""
    lines = [f"| task | baseline accuracy | {label} accuracy | difference | examples |", "|---|---:|---:|---:|---:|"]
    for task, r in downstream.items():
        lines.append(
            f"| {task} | {r['baseline']:.3f} | {r[method]:.3f} | {r[method] - r['baseline']:+.3f} | {r['examples']} |"
        )
    return "\n".join(lines)


def weight_trajectories(workdir: str, domains: Sequence[str]) -> tuple[list[int], dict[str, list[float]]]:
    """(steps, per domain the rates) a run logged as `domain_weights/<d>`."""
    steps, alphas = [], {d: [] for d in domains}
    for row in metrics.read_metrics(workdir):
        if f"domain_weights/{domains[0]}" in row:
            steps.append(row["step"])
            for d in domains:
                alphas[d].append(row[f"domain_weights/{d}"])
    return steps, alphas


def write_report(workdir: str, evaluation: Mapping[str, Any], method_sections: Sequence[str] = (),
                 other_sections: Sequence[str] = ()) -> str:
    """report.md: where the verdicts come from, the pipeline's method's own sections
    (`method_sections`), the spread over search seeds, its main models against the
    baseline's, the mixtures compared, the other methods' sections (`other_sections`)
    and downstream accuracy."""
    domains = evaluation["domains"]
    method, label = evaluation["method"], evaluation["label"]
    method_dir, baseline_dir = evaluation["workdirs"][method], evaluation["workdirs"]["baseline"]
    metrics.plot_weights(
        os.path.join(workdir, "log_perplexity.png"), domains,
        {"baseline": [evaluation["baseline"]["log_perplexity"][d] for d in domains],
         label: [evaluation[method]["log_perplexity"][d] for d in domains]},
        "Per-domain log-perplexity of the main models (nats/token, lower is better)",
    )
    split = evaluation["split"]
    d_curve, b_curve = _curve(method_dir, _average_key(split)), _curve(baseline_dir, _average_key(split))
    metrics.plot_lines(
        os.path.join(workdir, "average_log_perplexity.png"),
        {"baseline": b_curve, label: d_curve},
        f"Average {split} log-perplexity over training", "step", "average log-perplexity (nats/token)",
        hline=(b_curve[1][-1], "baseline final") if b_curve[1] else None,
    )

    lines = [
        f"# {label} report",
        "",
        split_note(split),
        "",
        *method_sections,
        *(_search_section(evaluation["search"], domains) if evaluation.get("search") else []),
        f"## Main models: {label} weights vs baseline weights",
        "",
        verdicts_table(evaluation["verdicts"]),
        "",
        eval_table(evaluation),
        "",
        "![per-domain log-perplexity](log_perplexity.png)",
        "",
        "![average log-perplexity over training](average_log_perplexity.png)",
        "",
    ]
    if evaluation.get("comparison"):
        lines += ["## Mixtures compared", "", comparison.table(evaluation["comparison"]), ""]
    lines += other_sections
    downstream = evaluation.get("downstream") or {}
    if downstream:
        lines += ["## Downstream accuracy (greedy decoding)", "",
                  f"Seed {evaluation.get('seed')} (the verdicts with their intervals are above):" if
                  evaluation.get("seed") is not None else "", "", downstream_table(downstream, method, label), ""]
    for task in downstream:
        key = f"downstream/{task}"
        d_acc, b_acc = _curve(method_dir, key), _curve(baseline_dir, key)
        metrics.plot_lines(
            os.path.join(workdir, f"accuracy_{task}.png"),
            {"baseline": b_acc, label: d_acc},
            f"{task} accuracy over training", "step", "accuracy",
            hline=(b_acc[1][-1], "baseline final") if b_acc[1] else None,
        )
        lines += [f"![{task} accuracy over training](accuracy_{task}.png)", ""]
    path = os.path.join(workdir, "report.md")
    fault_point("report")  # its plots written, report.md not yet
    fileio.write_text_atomic(path, "\n".join(lines))
    return path


def _search_section(search: Mapping[str, Any], domains: Sequence[str]) -> list[str]:
    """Each search seed's mixture, per method, with the mean and the spread over searches."""
    seeds = search["seeds"]
    lines = [
        "## The search's own variance",
        "",
        f"The search was run {len(seeds)} times (search seeds {', '.join(map(str, seeds))}); main seed i trains "
        f"on search i mod {len(seeds)}'s mixture, so the intervals above cover the search as well as the main "
        "runs. The weights above are the searches' mean.",
        "",
    ]
    for method, table in search.items():
        if method == "seeds":
            continue
        lines += [
            f"| {table.get('label', method)}: domain | " + " | ".join(f"search {s}" for s in seeds) + " | mean | std |",
            "|---|" + "---:|" * (len(seeds) + 2),
            *[f"| {d} | " + " | ".join(f"{table['weights'][str(s)][d]:.3f}" for s in seeds)
              + f" | {table['mean'][d]:.3f} | {table['std'][d]:.3f} |" for d in domains],
            "",
        ]
    return lines
