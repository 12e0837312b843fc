"""The comparison over seeds: known answers from synthetic per-seed results."""

import numpy as np
import pytest

from doremi_jax import report


def pair(seed, doremi, baseline):
    def result(lp):
        worst = max(lp, key=lp.get)
        return {"log_perplexity": lp, "average": sum(lp.values()) / len(lp),
                "worst": {"domain": worst, "log_perplexity": lp[worst]}}
    return {"seed": seed, "domains": list(doremi), "doremi": result(doremi), "baseline": result(baseline),
            "speedup": 1.5 if seed else None}


def test_a_domain_counts_as_improved_only_beyond_its_spread():
    per_seed = [
        # "steady" improves by 0.1 with every seed; "noisy" by +0.2 / -0.3 / +0.05 (mean -0.017).
        pair(0, {"steady": 2.0, "noisy": 3.2}, {"steady": 2.1, "noisy": 3.0}),
        pair(1, {"steady": 2.05, "noisy": 2.7}, {"steady": 2.15, "noisy": 3.0}),
        pair(2, {"steady": 1.95, "noisy": 3.05}, {"steady": 2.05, "noisy": 3.0}),
    ]
    summary = report.across_seeds(per_seed)
    assert summary["improved"] == ["steady"] and summary["worse"] == []
    assert summary["log_perplexity"]["steady"]["change"]["mean"] == pytest.approx(-0.1)
    assert summary["log_perplexity"]["steady"]["change"]["std"] == pytest.approx(0.0, abs=1e-12)
    assert summary["log_perplexity"]["noisy"]["change"]["mean"] == pytest.approx(-0.05 / 3)
    assert summary["speedup"] == {"values": [None, 1.5, 1.5], "min": 1.5, "max": 1.5, "seeds_reaching_baseline": 2}
    text = report.seeds_table(summary)
    assert "Domains improved beyond the spread: 1 of 2 (steady)" in text
    assert "worst-case log-perplexity is within the spread" in text
    assert "1.50x to 1.50x (2 of 3 seeds reach it)" in text


def test_lambda_diagnostics_split_the_gap_into_same_step_and_lag(tmp_path):
    """A reference whose loss falls 5 -> 3 over 100 steps and a proxy a fixed δ_d above
    it at every step: over the last 10 steps the gap to the final reference is
    δ_d + (the reference's remaining progress), and the table says which dominates."""
    import json

    from doremi_jax import diagnostics

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


def test_downstream_average_over_tasks_and_its_speedup(tmp_path):
    """Two tasks: the mean accuracy of each model, and the speedup read off the
    mean-over-tasks curves (DoReMi's mean reaches the baseline's final mean at step 20)."""
    import json

    curves = {
        "doremi": {"cloze": [0.2, 0.5, 0.6], "trivia_qa": [0.1, 0.3, 0.4]},
        "baseline": {"cloze": [0.1, 0.3, 0.5], "trivia_qa": [0.1, 0.2, 0.3]},
    }
    dirs = {}
    for run, tasks in curves.items():
        dirs[run] = tmp_path / run
        dirs[run].mkdir()
        with open(dirs[run] / "metrics.jsonl", "w") as f:
            for i, step in enumerate((10, 20, 30)):
                f.write(json.dumps({"step": step, **{f"downstream/{t}": v[i] for t, v in tasks.items()}}) + "\n")
    downstream = {t: {"doremi": curves["doremi"][t][-1], "baseline": curves["baseline"][t][-1], "examples": 8}
                  for t in ("cloze", "trivia_qa")}
    average = report.downstream_average(str(dirs["doremi"]), str(dirs["baseline"]), downstream)
    assert average["doremi"] == pytest.approx(0.5) and average["baseline"] == pytest.approx(0.4)
    # Baseline's final mean 0.4; DoReMi's means 0.15, 0.4, 0.5: reached at step 20 of 30.
    assert average["steps_to_baseline"] == 20 and average["speedup"] == pytest.approx(1.5)
    table = report.downstream_table(downstream, average)
    assert "| **average over 2 tasks** | 0.400 | 0.500 | +0.100 | |" in table and "1.50x fewer steps" in table
    assert report.downstream_average(str(dirs["doremi"]), str(dirs["baseline"]), {"cloze": downstream["cloze"]}) is None


def test_domains_without_held_out_tokens_are_left_out_of_the_averages():
    from doremi_jax.eval.perplexity import PerplexityResult

    def result(nats):
        return PerplexityResult(["a", "b", "c"], np.asarray(nats), np.asarray(nats) / 2, np.asarray([100, 0, 50]))

    r = result([2.0, 0.0, 4.0])
    assert r.average == pytest.approx(3.0) and r.worst == ("c", 4.0)
    j = r.to_json()
    assert j["unscored"] == ["b"] and set(j["log_perplexity"]) == {"a", "c"} and j["tokens"]["b"] == 0
    assert "log_perplexity/b" not in r.scalars()
    evaluation = report.compare("/nonexistent/d", "/nonexistent/b", {"eval": j}, {"eval": result([2.5, 0.0, 3.0]).to_json()})
    assert evaluation["domains"] == ["a", "c"] and evaluation["improved"] == ["a"]
    assert "No held-out tokens, left out of the average and the worst case: b." in report.eval_table(evaluation)
