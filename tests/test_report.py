"""The comparison over seeds: known answers from synthetic per-seed results."""

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
