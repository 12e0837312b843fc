"""RegMix: the sampler, the fit and the search on known answers; then the comparison
experiment from the command line on a corpus whose best mixture for a target is known."""

import json
import os

import numpy as np
import pytest

from doremi_jax.methods.regmix import fit as regmix

from helpers import write_three_domain_corpus
from test_command_line import SHRINK, run_entry

NATURAL = np.asarray([0.5, 0.3, 0.2])


def test_mixtures_lie_on_the_simplex_and_span_corners_and_the_natural_rates():
    m = regmix.sample_mixtures(NATURAL, 2000, seed=0)
    assert m.shape == (2000, 3) and (m >= 0).all()
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    np.testing.assert_allclose(m.mean(axis=0), NATURAL, atol=0.03)  # centred on the natural rates
    assert (m.max(axis=1) > 0.95).mean() > 0.05  # sparse mixtures near a corner
    assert (np.abs(m - NATURAL).max(axis=1) < 0.1).mean() > 0.05  # and mixtures near the natural rates
    np.testing.assert_array_equal(m, regmix.sample_mixtures(NATURAL, 2000, seed=0))  # deterministic


def test_a_linear_truth_is_fitted_ranked_and_its_best_corner_found():
    # loss = Σ_i c_i·w_i: the best mixture is the corner of the smallest c.
    mixtures = regmix.sample_mixtures(NATURAL, 24, seed=1)
    c = np.asarray([3.0, 2.0, 4.0])
    losses = mixtures @ c + np.random.default_rng(0).normal(0, 0.01, 24)
    fit = regmix.fit(mixtures, losses)
    assert set(fit.held_out_spearman) == {"lightgbm", "linear"}
    assert fit.regressor == "linear" and fit.held_out_spearman["linear"] > 0.95
    best = regmix.search(fit, NATURAL, seed=2, candidates=20_000, top=20)
    assert best.argmax() == 1 and best[1] > 0.9
    assert np.argmin(fit.predict(np.eye(3))) == 1


def test_an_interior_optimum_is_found_by_lightgbm():
    # A bowl around (0.2, 0.6, 0.2): no corner is best, and the loss is not linear.
    mixtures = regmix.sample_mixtures(NATURAL, 64, seed=3)
    target = np.asarray([0.2, 0.6, 0.2])
    losses = ((mixtures - target) ** 2).sum(axis=1)
    fit = regmix.fit(mixtures, losses, regressor="lightgbm")
    assert fit.held_out_spearman["lightgbm"] > 0.7
    best = regmix.search(fit, NATURAL, seed=4, candidates=20_000, top=50)
    assert np.abs(best - target).max() < 0.15, best


def test_too_few_runs_or_an_unknown_regressor_is_refused():
    m = regmix.sample_mixtures(NATURAL, 3, seed=0)
    with pytest.raises(ValueError, match="at least 4 small runs"):
        regmix.fit(m, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="regressor='ridge'"):
        regmix.fit(regmix.sample_mixtures(NATURAL, 8, seed=0), np.arange(8.0), regressor="ridge")


@pytest.mark.slow
def test_the_comparison_experiment_on_a_corpus_with_a_known_best_mixture(tmp_path):
    """All seven mixtures at tiny sizes (two seeds), from the command line. RegMix's target
    is the learnable domain: the more of it in the mix, the lower its loss, so its corner
    must rank first among the corners and get the largest weight."""
    data = write_three_domain_corpus(str(tmp_path / "corpus"))
    workdir = str(tmp_path / "w")
    args = ["--gin_file=gin/experiments/compare_demo.gin", *SHRINK, f"--gin.DATA_DIR='{data}'",
            "--gin.TRAIN_STEPS=6", "--gin.regmix/TRAIN_STEPS=40", "--gin.RegMixConfig.runs=8",
            "--gin.RegMixConfig.target_domains=['learnable']", "--gin.run_pipeline.main_seeds=[0, 1]",
            "--gin.main/DownstreamConfig.prompt_length=48", "--gin.main/DownstreamConfig.max_examples=8",
            "--gin.TrainConfig.tensorboard=False",  # tensorflow's import: ~10 s a process
            f"--workdir={workdir}"]
    done = run_entry("pipeline", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    evaluation = json.load(open(os.path.join(workdir, "eval.json")))

    search = evaluation["regmix_search"]
    assert len(search["runs"]) == 8 and search["target_domains"] == ["learnable"]
    assert set(search["held_out_spearman"]) == {"lightgbm", "linear"}
    corners = search["predicted_corner_loss"]
    assert min(corners, key=corners.get) == "learnable", corners
    assert max(search["weights"], key=search["weights"].get) == "learnable", search["weights"]
    assert json.load(open(os.path.join(workdir, "regmix", "runs.json")))["runs"] == search["runs"]
    for i, run in enumerate(search["runs"]):  # each small run trained on its own mixture
        summary = json.load(open(os.path.join(workdir, "regmix", f"run_{i:03d}", "summary.json")))
        assert summary["step"] == 40
        assert summary["sampling_weights"] == pytest.approx(run["mixture"], abs=1e-6)

    comparison = evaluation["comparison"]
    assert list(comparison["methods"]) == ["baseline", "doremi", "uniform", "temperature", "doremi_matched", "odm", "regmix"]
    assert comparison["seeds"] == [0, 1]
    # This corpus has no test split: the verdicts are on validation, and the report says so.
    assert comparison["split"] == "validation"
    for name, row in comparison["methods"].items():
        assert "cloze_accuracy" in row, name
        folder = "main_baseline" if name == "baseline" else f"main_{name}"
        runs = [json.load(open(os.path.join(workdir, f"{folder}_seed{s}", "summary.json"))) for s in (0, 1)]
        assert "test" not in runs[0]
        assert row["average"] == pytest.approx(np.mean([r["eval"]["average"] for r in runs]))
        assert row["validation_average"] == pytest.approx(row["average"])
        if name != "baseline":
            change = row["change"]
            assert change["seeds"] == 2 and change["low"] < change["mean"] < change["high"]
    # The candidate is chosen on validation; it is named best only beyond noise.
    candidate = comparison["candidate"]
    assert candidate == min(comparison["methods"], key=lambda m: comparison["methods"][m]["validation_average"])
    against = comparison["candidate_against"]
    assert set(against) == set(comparison["methods"]) - {candidate}
    named = all(a["high"] < 0 for a in against.values())
    assert (comparison["best_average"] == candidate) if named else comparison["best_average"] is None
    assert comparison["tied_with_best"] == [m for m, a in against.items() if not a["high"] < 0]
    methods = comparison["methods"]
    assert methods["regmix"]["weights"] == pytest.approx(search["weights"], abs=1e-6)
    assert methods["uniform"]["weights"] == pytest.approx({d: 1 / 3 for d in search["weights"]})
    assert methods["doremi"]["search_fraction_of_main_run"] > 0 and methods["regmix"]["search_fraction_of_main_run"] > 0
    assert all(methods[m]["search_flops"] == 0 for m in ("baseline", "uniform", "temperature", "odm"))
    # The search cost: the reference and proxy (6 steps each) and 8 runs of 40 steps, of the
    # same tiny model as the 6-step main run.
    assert methods["doremi"]["search_fraction_of_main_run"] == pytest.approx(
        (6 + 6 * 4 / 3) / 6, rel=1e-6)
    assert methods["regmix"]["search_fraction_of_main_run"] == pytest.approx(8 * 40 / 6, rel=1e-6)

    report = open(os.path.join(workdir, "report.md")).read()
    for section in ("This corpus has no test split", "## Mixtures compared", "## RegMix's search",
                    "## Main models: Online Data Mixing vs baseline weights", "change [95% interval]",
                    "ODM's average log-perplexity is", "| learnable weight |",
                    "Best average:" if named else "No mixture is best beyond noise"):
        assert section in report, section
    assert report.startswith("# DoReMi report\n\n**This corpus has no test split")
    # A rerun skips every finished stage, the small runs included.
    again = run_entry("pipeline", *args)
    assert again.returncode == 0 and "retraining" not in again.stdout
    assert again.stdout.count("skipped") >= 2 + 2 + 8 + 7 * 2


def test_the_search_stays_within_the_runs_and_the_epoch_cap():
    mixtures = regmix.sample_mixtures(NATURAL, 24, seed=1)
    upper = regmix.bounds(mixtures, token_counts=[1e6, 1e5, 1e6], token_budget=1e6, max_epochs=4)
    np.testing.assert_allclose(upper, np.minimum(mixtures.max(axis=0), [4.0, 0.4, 4.0]))
    losses = mixtures @ np.asarray([3.0, 2.0, 4.0])  # the unbounded best is domain 1's corner
    best = regmix.search(regmix.fit(mixtures, losses), NATURAL, seed=2, candidates=20_000, top=20, upper=upper)
    assert (best <= upper + 1e-9).all() and best[1] > 0.3  # as far towards it as the bounds allow
    with pytest.raises(ValueError, match="no candidate mixture lies within the search bounds"):
        regmix.search(regmix.fit(mixtures, losses), NATURAL, seed=2, candidates=100, top=5, upper=[0.1, 0.1, 0.1])
