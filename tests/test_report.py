"""The report's verdicts: known answers from written runs (held-out documents, curves)."""

import numpy as np
import pytest

from doremi_jax import report


def write_run(path, per_domain, curve=(), downstream=None, split="test"):
    """A finished main run's files: held-out documents (per domain, per-document mean
    losses over 50-token documents), its eval summary and its periodic curve."""
    import json

    path.mkdir(parents=True)
    docs = {d: {"loss": [50.0 * x for x in losses], "tokens": [50] * len(losses)} for d, losses in per_domain.items()}
    (path / "held_out_documents.json").write_text(json.dumps({split: docs}))
    lp = {d: float(np.mean(v)) for d, v in per_domain.items()}
    worst = max(lp, key=lp.get)
    result = {"log_perplexity": lp, "average": float(np.mean(list(lp.values()))),
              "worst": {"domain": worst, "log_perplexity": lp[worst]}}
    with open(path / "metrics.jsonl", "w") as f:
        for step, value in curve:
            f.write(json.dumps({"step": step, f"{split}/log_perplexity/average": value,
                                **({"downstream/cloze": downstream[1][step]} if downstream else {})}) + "\n")
    summary = {"eval": result, split: result}
    if downstream:
        summary["downstream"] = {"cloze": {"accuracy": downstream[0], "examples": 256}}
    return summary


def judged_pairs(tmp_path, seeds):
    """seeds: per seed (doremi per-domain doc losses, baseline ..., doremi curve, baseline curve, downstream)."""
    pairs = []
    for i, (dl, bl, dc, bc, dd, bd) in enumerate(seeds):
        d_dir, b_dir = tmp_path / f"d{i}", tmp_path / f"b{i}"
        d, b = write_run(d_dir, dl, dc, dd), write_run(b_dir, bl, bc, bd)
        pairs.append(dict(report.compare(str(d_dir), str(b_dir), d, b, "doremi", "DoReMi"), seed=i))
    return report.judge(pairs)


def test_words_follow_the_intervals(tmp_path):
    rng = np.random.default_rng(0)
    base = {"steady": rng.normal(2.0, 0.3, 40), "noisy": rng.normal(3.0, 0.3, 40)}
    seeds = []
    # "noisy" moves with the seed; "steady" improves 0.09-0.11 on every document.
    for shift, gain in ((0.2, 0.09), (-0.3, 0.1), (0.05, 0.11)):
        d = {"steady": base["steady"] - gain, "noisy": base["noisy"] + shift}
        seeds.append((d, base, [], [], None, None))
    summary = judged_pairs(tmp_path, seeds)
    steady, noisy = summary["log_perplexity"]["steady"]["change"], summary["log_perplexity"]["noisy"]["change"]
    assert steady["mean"] == pytest.approx(-0.1) and steady["high"] < 0
    assert noisy["mean"] == pytest.approx(-0.05 / 3) and noisy["low"] < 0 < noisy["high"]
    assert summary["improved"] == ["steady"] and summary["worse"] == []
    assert summary["documents"] == {"steady": 40, "noisy": 40} and summary["tokens"]["steady"] == 2000
    text = report.verdicts_table(summary)
    assert "Domains better (interval below zero, Holm-corrected over the 2 domains): 1 of 2 (steady)" in text
    average = summary["average"]["change"]
    assert average["low"] < 0 < average["high"]
    assert "average log-perplexity is not distinguishable from the baseline's" in text
    for name, t in [*summary["log_perplexity"].items(), ("average", summary["average"]), ("worst", summary["worst"])]:
        verdict = "better" if t["change"]["high"] < 0 else "worse" if t["change"]["low"] > 0 else "within noise"
        assert f"| {verdict} |" in next(line for line in text.splitlines() if line.startswith(f"| {name}")
                                      or line.startswith(f"| **{name}**"))
    assert "fewer steps" not in text  # no speedup line for a change within noise


def test_speedup_has_an_interval_and_only_beyond_noise(tmp_path):
    """Every seed's DoReMi improves about 0.2 on every document; its curve crosses the
    baseline's final 3.0 between evaluations, at steps 150, 160 and 170 by interpolation."""
    base = {"a": np.full(30, 3.0) + np.linspace(-0.2, 0.2, 30)}
    seeds = []
    for cross, gain in ((150, 0.19), (160, 0.2), (170, 0.21)):
        # Linear from 3.4 at step 100 to 2.8 at step 300 would cross 3.0 at 233; build the
        # two points around `cross` so the interpolation lands on it.
        curve = [(100, 3.5), (cross - 10, 3.1), (cross + 10, 2.9), (300, 2.8)]
        seeds.append(({"a": base["a"] - gain}, base, curve, [(100, 3.6), (200, 3.2), (300, 3.0)], None, None))
    summary = judged_pairs(tmp_path, seeds)
    sp = summary["speedup"]
    assert sp["steps_to_baseline"] == pytest.approx([150, 160, 170])
    assert sp["mean_step"] == pytest.approx(160) and sp["speedup"] == pytest.approx(300 / 160)
    assert sp["step_low"] < 150 and sp["step_high"] > 170 and sp["speedup_low"] == pytest.approx(300 / sp["step_high"])
    assert "1.88x fewer steps" in report.verdicts_table(summary)


def test_a_small_cloze_change_gets_no_speedup_line(tmp_path):
    """The old report's "2.00x fewer steps" for +0.004 on 256 examples: now within noise."""
    base = {"a": np.full(30, 3.0)}
    seeds = []
    for i in range(3):
        d_acc = {100: 0.20, 150: 0.25, 300: 0.250}
        b_acc = {100: 0.20, 150: 0.22, 300: 0.246}
        seeds.append(({"a": base["a"]}, base, [(100, 3.0), (150, 3.0), (300, 3.0)], [(100, 3.0), (150, 3.0), (300, 3.0)],
                      (0.250 + 0.001 * i, d_acc), (0.246 + 0.001 * i, b_acc)))
    summary = judged_pairs(tmp_path, seeds)
    cloze = summary["downstream"]["cloze"]
    assert cloze["change"]["mean"] == pytest.approx(0.004) and cloze["change"]["low"] < 0 < cloze["change"]["high"]
    assert cloze["speedup"]["reached"] == 3  # the curves do reach it; the change is still noise
    text = report.verdicts_table(summary)
    assert "cloze accuracy" in text and "not distinguishable" in text
    assert "fewer steps" not in text and "speedup" not in text.lower()


def test_lambda_diagnostics_split_the_gap_into_same_step_and_lag(tmp_path):
    """A reference whose loss falls 5 -> 3 over 100 steps and a proxy a fixed δ_d above
    it at every step: over the last 10 steps the gap to the final reference is
    δ_d + (the reference's remaining progress), and the table says which dominates."""
    import json

    from doremi_jax.methods.doremi import diagnostics

    domains = ["a", "b"]
    delta = {"a": 0.5, "b": 0.05}
    ref_dir, proxy_dir = tmp_path / "reference", tmp_path / "proxy"
    ref_dir.mkdir()
    proxy_dir.mkdir()

    def ref_loss(s):
        return 5.0 - 2.0 * s / 100

    with open(ref_dir / "metrics.jsonl", "w") as f:
        for s in range(1, 101):
            f.write(json.dumps({"step": s, **{f"domain_loss/{d}": ref_loss(s) for d in domains},
                                **{f"domain_tokens/{d}": 64.0 for d in domains}}) + "\n")
    with open(proxy_dir / "metrics.jsonl", "w") as f:
        for s in range(1, 101):
            tokens = {"a": 64.0, "b": 0.0 if s % 4 == 0 else 64.0}  # b absent from a quarter
            proxy = {d: ref_loss(s) + delta[d] if tokens[d] else 0.0 for d in domains}
            f.write(json.dumps({
                "step": s,
                **{f"domain_loss/{d}": proxy[d] for d in domains},
                **{f"reference_domain_loss/{d}": 3.0 if tokens[d] else 0.0 for d in domains},
                **{f"excess_loss/{d}": max(proxy[d] - 3.0, 0.0) if tokens[d] else 0.0 for d in domains},
                **{f"domain_tokens/{d}": tokens[d] for d in domains},
            }) + "\n")
    diag = diagnostics.lambda_diagnostics(str(proxy_dir), str(ref_dir), domains)
    assert diag["window_steps"] == [91, 100] and diag["reference_steps"] == 100
    a, b = diag["domains"]["a"], diag["domains"]["b"]
    lag_a = np.mean([ref_loss(s) - 3.0 for s in range(91, 101)])
    lag_b = np.mean([ref_loss(s) - 3.0 for s in range(91, 101) if s % 4])
    assert a["proxy_minus_reference_same_step"] == pytest.approx(0.5)
    assert b["proxy_minus_reference_same_step"] == pytest.approx(0.05)
    assert a["reference_progress_after"] == pytest.approx(lag_a)
    assert b["reference_progress_after"] == pytest.approx(lag_b)
    assert a["lambda"] == pytest.approx(0.5 + lag_a) and b["lambda"] == pytest.approx(0.05 + lag_b)
    assert a["absent_share"] == 0 and b["absent_share"] == pytest.approx(0.25)
    table = diagnostics.diagnostics_table(diag)
    assert "| b |" in table and "25%" in table and "stratified=True" in table
    assert "mostly the proxy against the reference" in table  # lag 0.11 against gaps 0.61 and 0.16


def test_domains_without_held_out_tokens_are_left_out_of_the_averages():
    from doremi_jax.eval.perplexity import PerplexityResult

    def result(nats):
        return PerplexityResult(["a", "b", "c"], np.asarray(nats), np.asarray(nats) / 2, np.asarray([100, 0, 50]))

    r = result([2.0, 0.0, 4.0])
    assert r.average == pytest.approx(3.0) and r.worst == ("c", 4.0)
    j = r.to_json()
    assert j["unscored"] == ["b"] and set(j["log_perplexity"]) == {"a", "c"} and j["tokens"]["b"] == 0
    assert "log_perplexity/b" not in r.scalars()
    evaluation = report.compare("/nonexistent/d", "/nonexistent/b", {"eval": j}, {"eval": result([2.5, 0.0, 3.0]).to_json()}, "doremi")
    assert evaluation["domains"] == ["a", "c"] and evaluation["split"] == "validation"
    assert "No held-out tokens, left out of the average and the worst case: b." in report.eval_table(evaluation)
    # One seed and no held-out documents written: no interval, so no verdict.
    judged = report.judge([evaluation])
    assert judged["improved"] == [] and judged["average"]["change"]["low"] is None
    assert "without an interval (one seed" in report.verdicts_table(judged)
