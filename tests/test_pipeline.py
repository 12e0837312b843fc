"""The pipeline end to end on tiny models: outputs, skip on rerun, redo after a change."""

import json
import os

import pytest

from doremi_jax import pipeline

pytestmark = pytest.mark.slow  # subprocess runs: see pytest.ini for the fast tier

STAGES = ["round_1/reference", "round_1/proxy", "round_2/reference", "round_2/proxy", "main_doremi", "main_baseline"]
TINY = ["gin/models/tiny.gin"]
COMMON = ["BATCH_SIZE = 8", "SEQUENCE_LENGTH = 64", "TRAIN_STEPS = 16", "WARMUP_STEPS = 4",
          "TrainConfig.eval_tokens_per_domain = 1024", "TrainConfig.log_every = 100"]


def run(workdir, proxy_bindings=(), **kwargs):
    return pipeline.run_pipeline(
        str(workdir),
        reference_gin=["gin/runs/reference.gin", *TINY],
        proxy_gin=["gin/runs/proxy.gin", *TINY],
        main_gin=["gin/runs/main.gin", *TINY],
        common_bindings=COMMON,
        proxy_bindings=list(proxy_bindings),
        main_bindings=["TrainConfig.eval_every = 8", "DownstreamConfig.tasks = ['cloze']",
                       "DownstreamConfig.max_examples = 8", "DownstreamConfig.batch_size = 8",
                       "DownstreamConfig.prompt_length = 48", "DownstreamConfig.max_new_tokens = 4"],
        max_rounds=2,
        tolerance=1e-9,  # never converged: both rounds run
        **kwargs,
    )


def mtimes(workdir):
    return {s: os.path.getmtime(os.path.join(workdir, s, "summary.json")) for s in STAGES}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pipe")
    evaluation = run(workdir)
    return workdir, evaluation


def test_outputs(finished):
    workdir, evaluation = finished
    weights = json.load(open(workdir / "domain_weights.json"))
    assert set(weights) == {"code", "noise", "prose", "repetitive"}
    assert sum(weights.values()) == pytest.approx(1, abs=1e-5)
    rounds = json.load(open(workdir / "rounds.json"))
    assert [r["round"] for r in rounds] == [1, 2]
    # Round 2's reference weights are round 1's ᾱ; the final weights are round 2's ᾱ.
    assert rounds[1]["reference_weights"] == pytest.approx(rounds[0]["average_domain_weights"], abs=1e-6)
    assert weights == pytest.approx(rounds[1]["average_domain_weights"], abs=1e-6)
    for r in rounds:
        change = max(abs(r["average_domain_weights"][d] - r["reference_weights"][d]) for d in weights)
        assert r["linf_change"] == pytest.approx(change, abs=1e-6)
    ev = json.load(open(workdir / "eval.json"))
    assert ev == json.loads(json.dumps(evaluation))
    for run_name in ("baseline", "doremi"):
        lp = ev[run_name]["log_perplexity"]
        assert set(lp) == set(weights)
        assert ev[run_name]["average"] == pytest.approx(sum(lp.values()) / 4)
        assert ev[run_name]["worst"]["log_perplexity"] == max(lp.values())
    # Verdicts on the demo's test split, validation kept beside them.
    assert ev["split"] == "test"
    for run_name in ("baseline", "doremi"):
        summary = json.load(open(workdir / f"main_{run_name}" / "summary.json"))
        assert ev[run_name] == summary["test"] and ev["validation"][run_name] == summary["eval"]
        assert summary["test"] != summary["eval"]
    verdicts = ev["verdicts"]
    assert verdicts["split"] == "test" and verdicts["held_out_noise"]
    for d, t in verdicts["log_perplexity"].items():
        change = t["change"]
        assert change["mean"] == pytest.approx(ev["doremi"]["log_perplexity"][d] - ev["baseline"]["log_perplexity"][d],
                                               abs=1e-4)
        # One seed: the documents' noise alone, which one document cannot show.
        if verdicts["documents"][d] > 1:
            assert change["se_held_out"] > 0 and change["low"] < change["mean"] < change["high"]
        else:
            assert verdicts["documents"][d] == 1 and change["low"] is None
    # The main runs used the weights they were meant to.
    doremi_sampled = json.load(open(workdir / "main_doremi" / "summary.json"))["sampling_weights"]
    assert doremi_sampled == pytest.approx(weights, abs=1e-6)
    report = open(workdir / "report.md").read()
    assert "## Is λ signal or lag? (round 1)" in report and "## Is λ signal or lag? (round 2)" in report
    assert "Verdicts are on the corpus's test split" in report and "change [95% interval]" in report
    for png in ("weights.png", "alpha_round_1.png", "alpha_round_2.png", "log_perplexity.png", "average_log_perplexity.png",
                "lambda_round_1.png", "lambda_round_2.png"):
        assert f"]({png})" in report
        assert (workdir / png).stat().st_size > 5000
    assert "| **average** |" in report and "| noise |" in report
    # Downstream: cloze accuracy of both main models, per domain, and against steps.
    cloze = ev["downstream"]["cloze"]
    for run_name in ("baseline", "doremi"):
        summary = json.load(open(workdir / f"main_{run_name}" / "summary.json"))
        assert cloze[run_name] == summary["downstream"]["cloze"]["accuracy"]
    assert set(cloze["per_domain"]) == set(weights)
    assert "## Downstream accuracy" in report and "](accuracy_cloze.png)" in report
    assert (workdir / "accuracy_cloze.png").stat().st_size > 5000


def test_rerun_skips_and_a_changed_proxy_redoes_what_follows(finished, capsys):
    workdir, first = finished
    before = mtimes(workdir)
    again = run(workdir)
    assert mtimes(workdir) == before
    assert again["doremi"] == first["doremi"]
    assert capsys.readouterr().out.count("skipped") == len(STAGES)

    old_weights = json.load(open(workdir / "domain_weights.json"))
    run(workdir, proxy_bindings=["DoReMi.smoothing = 0.05"])
    after = mtimes(workdir)
    new_weights = json.load(open(workdir / "domain_weights.json"))
    # Really retrained: with c = 0.05 every weight is at least c/k.
    assert new_weights != old_weights and min(new_weights.values()) >= 0.05 / 4 - 1e-6
    assert after["round_1/reference"] == before["round_1/reference"]
    for stage in STAGES[1:5]:
        assert after[stage] > before[stage], stage
    # The baseline does not depend on DoReMi's weights: still skipped.
    assert after["main_baseline"] == before["main_baseline"]


def test_several_main_and_search_seeds_give_paired_intervals(finished):
    """Two main seeds, each on its own search's weights (search_seed<s>/: the rounds run
    again under TrainConfig.seed = s): the intervals pair them by seed and cover the
    search's variance too."""
    workdir, _ = finished
    evaluation = run(workdir, main_seeds=[0, 1], search_seeds=[0, 1])
    summary = evaluation["verdicts"]
    assert summary["seeds"] == [0, 1] and [e["seed"] for e in evaluation["per_seed"]] == [0, 1]
    for seed in (0, 1):
        for name in ("doremi", "baseline"):
            run_summary = json.load(open(workdir / f"main_{name}_seed{seed}" / "summary.json"))
            assert evaluation["per_seed"][seed][name] == run_summary["test"]
    # The seeds really differ, and the statistics are those of the per-seed results.
    baseline = [e["baseline"]["average"] for e in evaluation["per_seed"]]
    assert baseline[0] != baseline[1]
    assert summary["average"]["baseline"] == pytest.approx(sum(baseline) / 2)
    for dom, t in summary["log_perplexity"].items():
        changes = [e["doremi"]["log_perplexity"][dom] - e["baseline"]["log_perplexity"][dom] for e in evaluation["per_seed"]]
        assert t["change"]["mean"] == pytest.approx(sum(changes) / 2, abs=1e-4)
        assert t["change"]["seeds"] == 2 and t["change"]["se_training"] > 0
        assert (t["change"]["se_held_out"] > 0) == (summary["documents"][dom] > 1)
        if dom in summary["improved"]:
            assert t["change"]["high"] < 0
    report = open(workdir / "report.md").read()
    assert "mean over 2 seed(s) (0, 1)" in report
    assert "DoReMi's average log-perplexity is" in report and "DoReMi's worst-case log-perplexity is" in report
    assert json.load(open(workdir / "eval.json"))["verdicts"] == json.loads(json.dumps(summary))

    # Each search: its own folder, seed and weights; main seed i trained on search i's.
    search = evaluation["search"]
    assert search["seeds"] == [0, 1] and [e["search_seed"] for e in evaluation["per_seed"]] == [0, 1]
    found = {}
    for s in (0, 1):
        assert f"TrainConfig.seed = {s}" in open(workdir / f"search_seed{s}/round_1/proxy/config.gin").read()
        rounds = json.load(open(workdir / f"search_seed{s}" / "rounds.json"))
        found[s] = json.load(open(workdir / f"search_seed{s}" / "domain_weights.json"))
        assert [r["round"] for r in rounds] == [1, 2]
        assert found[s] == pytest.approx(rounds[-1]["average_domain_weights"], abs=1e-6)
        assert search["doremi"]["weights"][str(s)] == pytest.approx(found[s], abs=1e-6)
        main = json.load(open(workdir / f"main_doremi_seed{s}" / "summary.json"))
        assert main["sampling_weights"] == pytest.approx(found[s], abs=1e-6)
    assert found[0] != found[1]  # another seed, another search
    mean = {d: (found[0][d] + found[1][d]) / 2 for d in found[0]}
    assert json.load(open(workdir / "domain_weights.json")) == pytest.approx(mean, abs=1e-6)
    assert search["doremi"]["std"] == pytest.approx({d: abs(found[0][d] - found[1][d]) / 2 ** 0.5 for d in mean}, abs=1e-6)
    assert "## The search's own variance" in report and "| DoReMi: domain | search 0 | search 1 | mean | std |" in report


def test_search_seeds_without_a_main_seed_each_are_refused(tmp_path):
    from doremi_jax import config

    with pytest.raises(config.ConfigError, match=r"search_seeds=\[0, 1\]: each search needs its own main seeds"):
        run(tmp_path / "w", main_seeds=[], search_seeds=[0, 1])
    assert not os.path.exists(tmp_path / "w")
    # The same from the command line, as a user sweeps it: one line, exit 2 (a config error), nothing written.
    from test_command_line import run_entry

    done = run_entry("pipeline", "--gin_file=gin/experiments/demo.gin", "--gin.run_pipeline.search_seeds=[0, 1]",
                     "--gin.run_pipeline.main_seeds=[0]", f"--workdir={tmp_path / 'cli'}")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert "search_seeds=[0, 1]: each search needs its own main seeds" in done.stderr
    assert not os.path.exists(tmp_path / "cli")
