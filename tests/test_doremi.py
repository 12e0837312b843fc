"""DoReMi end to end on a problem with a known answer (reference, then proxy)."""

import json
import os

import numpy as np
import pytest

from doremi_jax.train import loop

import helpers


@pytest.fixture(scope="module")
def three_domain_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    data = helpers.write_three_domain_corpus(str(root / "data"))
    ref = loop.train(str(root / "reference"), run="lm", sampling_weights="uniform", **helpers.train_kwargs(data, 300))
    proxy = loop.train(
        str(root / "proxy"), run="doremi", sampling_weights="uniform",
        doremi=loop.DroConfig(reference_workdir=str(root / "reference")), **helpers.train_kwargs(data, 300),
    )
    return root, ref, proxy


def test_known_answer_learnable_over_easy_over_noise(three_domain_run):
    root, _, proxy = three_domain_run
    w = json.load(open(root / "proxy" / "domain_weights.json"))
    assert w == pytest.approx(proxy["average_domain_weights"])
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-5)
    assert w["learnable"] > w["easy"] > w["noise"], w
    assert w["noise"] < 0.05, w


def test_proxy_logs_every_step(three_domain_run):
    root, _, _ = three_domain_run
    rows = [json.loads(line) for line in open(root / "proxy" / "metrics.jsonl")]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 301))
    for name in ("domain_weights", "average_domain_weights", "excess_loss", "domain_loss", "reference_domain_loss"):
        assert {f"{name}/{d}" for d in ("easy", "learnable", "noise")} <= set(steps[-1]), name
    # ᾱ in the log is the running mean of the logged α_t.
    alphas = np.asarray([[r[f"domain_weights/{d}"] for d in ("easy", "learnable", "noise")] for r in steps])
    last = [steps[-1][f"average_domain_weights/{d}"] for d in ("easy", "learnable", "noise")]
    np.testing.assert_allclose(alphas.mean(0), last, atol=1e-5)
    assert (root / "proxy" / "main_mixture.gin").exists()
