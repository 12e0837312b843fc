"""DoReMi end to end on a problem with a known answer (reference, then proxy)."""

import json

import numpy as np
import pytest

from doremi_jax.train import loop
from doremi_jax.methods.doremi.trainer import DoReMi

import helpers


@pytest.fixture(scope="module")
def three_domain_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    data = helpers.write_three_domain_corpus(str(root / "data"))
    ref = loop.train(str(root / "reference"), sampling_weights="uniform", **helpers.train_kwargs(data, 300))
    proxy = loop.train(
        str(root / "proxy"), sampling_weights="uniform",
        method=DoReMi(reference_workdir=str(root / "reference")), **helpers.train_kwargs(data, 300),
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
    helpers.assert_mixture_gin(root / "proxy")


def test_metrics_track_distance_and_average_change(three_domain_run):
    root, _, _ = three_domain_run
    rows = [json.loads(line) for line in open(root / "proxy" / "metrics.jsonl") if '"loss"' in line]
    alpha = np.asarray([rows[-1][f"domain_weights/{d}"] for d in ("easy", "learnable", "noise")])
    assert rows[-1]["distance_from_uniform"] == pytest.approx(np.linalg.norm(alpha - 1 / 3), abs=1e-5)
    prev = np.asarray([rows[-2][f"average_domain_weights/{d}"] for d in ("easy", "learnable", "noise")])
    last = np.asarray([rows[-1][f"average_domain_weights/{d}"] for d in ("easy", "learnable", "noise")])
    assert rows[-1]["average_change"] == pytest.approx(np.abs(last - prev).max(), abs=1e-6)


def test_resample_mode_samples_by_the_live_weights(three_domain_run):
    root, _, full = three_domain_run
    data = str(root / "data")
    summary = loop.train(
        str(root / "resample"), sampling_weights="uniform",
        method=DoReMi(reference_workdir=str(root / "reference"), mode="resample"),
        **helpers.train_kwargs(data, 60),
    )
    assert (root / "resample" / "domain_weights.json").exists()
    rows = [json.loads(line) for line in open(root / "resample" / "metrics.jsonl") if '"loss"' in line]
    domains = ("easy", "learnable", "noise")
    # Step t's batch is drawn with α_{t-1}: the tokens follow the weights of the step before.
    expected = np.asarray([[rows[t - 1][f"domain_weights/{d}"] for d in domains] for t in range(1, len(rows))]).sum(0)
    tokens = np.asarray([[rows[t][f"domain_tokens/{d}"] for d in domains] for t in range(1, len(rows))]).sum(0)
    np.testing.assert_allclose(tokens / tokens.sum(), expected / expected.sum(), atol=0.06)
    # Exactly: step t's batch is the sampler's batch of step t drawn with α_{t-1} (as
    # logged), and not the one drawn with α_t.
    from doremi_jax.data import inputs
    from doremi_jax.data.sampler import MixtureSampler

    corpus = inputs.build_corpus(inputs.DataConfig(data_dir=data, corpus_name="synthetic"))
    sampler = MixtureSampler(corpus.streams["train"], 64, (0,))

    def tokens_per_domain(step, weights):
        b = sampler.batch(step, range(16), np.asarray(weights, np.float32))
        return [float(b["decoder_loss_weights"][b["domain_ids"] == i].sum()) for i in range(3)]

    lagged = current = 0
    for t in range(1, len(rows)):  # row t is step t + 1, drawn at batch index t
        logged = [rows[t][f"domain_tokens/{d}"] for d in domains]
        lagged += logged == tokens_per_domain(t, [rows[t - 1][f"domain_weights/{d}"] for d in domains])
        current += logged == tokens_per_domain(t, [rows[t][f"domain_weights/{d}"] for d in domains])
    assert lagged == len(rows) - 1 and current < lagged
    assert summary["average_domain_weights"]["learnable"] > summary["average_domain_weights"]["noise"]


def test_early_stop_saves_steps_close_to_the_full_run(three_domain_run):
    root, _, full = three_domain_run
    early = loop.train(
        str(root / "early"), sampling_weights="uniform",
        method=DoReMi(reference_workdir=str(root / "reference"), early_stop_window=50, early_stop_tolerance=0.12),
        **helpers.train_kwargs(str(root / "data"), 300),
    )
    assert early["stopped"] == "early_stop" and early["steps_saved"] > 0
    distance = max(abs(early["average_domain_weights"][d] - full["average_domain_weights"][d]) for d in full["average_domain_weights"])
    print(f"early stop: {early['steps_saved']} of 300 steps saved, L-inf distance to the full run's weights {distance:.4f}")
    assert early["step"] + early["steps_saved"] == 300
    assert distance < 0.1
    json.dump({"steps_saved": early["steps_saved"], "linf_to_full": distance}, open(root / "early" / "early_stop.json", "w"))


def test_demo_corpus_noise_ends_below_its_natural_weight(tmp_path, demo_dir):
    kwargs = helpers.train_kwargs(demo_dir, 200)
    kwargs["data"] = loop.inputs.DataConfig()  # the demo corpus
    ref = loop.train(str(tmp_path / "ref"), sampling_weights="natural", **kwargs)
    proxy = loop.train(
        str(tmp_path / "proxy"), sampling_weights="uniform",
        method=DoReMi(reference_workdir=str(tmp_path / "ref")), **kwargs,
    )
    natural = ref["sampling_weights"]["noise"]
    assert proxy["average_domain_weights"]["noise"] < natural, (proxy["average_domain_weights"], natural)
