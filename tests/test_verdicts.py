"""Known-answer tests of the verdicts' statistics (doremi_jax/eval/verdicts.py).

Simulated evaluations with a known effect and known noise: per seed a training shift
(the same for every document of the run), per document an effect that varies around the
true one (another sample of documents would give another mean). The noise standard
deviation σ is that of one seed's measured change, training and documents in equal
parts.
"""

import math

import numpy as np
import pytest

from doremi_jax.eval import verdicts

DOCS = 120
SEEDS = 3
SIGMA = 0.02  # one seed's measured change: training and held-out documents together


def _simulate(rng, effect, seeds=SEEDS, docs=DOCS):
    """(method runs, baseline runs) of one domain, as held-out documents."""
    tokens = rng.integers(40, 400, size=docs)
    weights = tokens / tokens.sum()
    # Half the variance from the documents: the token-weighted mean of the per-document
    # effects has sd SIGMA/√2.
    doc_sd = SIGMA / math.sqrt(2) / math.sqrt(float(np.sum(weights**2)))
    level = rng.normal(3.0, 0.5, size=docs)  # how hard each document is (cancels in the pairing)
    per_doc_effect = effect + rng.normal(0.0, doc_sd, size=docs)
    method, baseline = [], []
    for _ in range(seeds):
        shift_m, shift_b = rng.normal(0.0, SIGMA / 2, size=2)  # training noise of each run: sd σ/√2 paired
        baseline.append({"d": ((level + shift_b) * tokens, tokens)})
        method.append({"d": ((level + per_doc_effect + shift_m) * tokens, tokens)})
    return method, baseline


def _experiments(effect, count=2000, resamples=200, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        m, b = _simulate(rng, effect)
        out.append(verdicts.log_perplexity_changes(m, b, ["d"], resamples=resamples, seed=i)["per_domain"]["d"])
    return out


def test_no_true_effect_gives_few_verdicts_and_the_interval_covers_95_percent():
    results = _experiments(0.0)
    called = np.mean([r.verdict() in ("better", "worse") for r in results])
    covered = np.mean([r.low <= 0.0 <= r.high for r in results])
    assert called <= 0.065, called
    assert abs(covered - 0.95) <= 0.02, covered


def test_coverage_with_an_effect():
    results = _experiments(-0.01, seed=1)
    covered = np.mean([r.low <= -0.01 <= r.high for r in results])
    assert abs(covered - 0.95) <= 0.02, covered


def test_three_sigma_effect_with_three_seeds_is_found():
    results = _experiments(-3 * SIGMA, seed=2)
    better = np.mean([r.verdict() == "better" for r in results])
    assert better >= 0.80, better
    assert not any(r.verdict() == "worse" for r in results)


def test_holm_steps_down():
    # Sorted p: 0.001 <= 0.05/4, 0.012 <= 0.05/3, 0.03 > 0.05/2: the first two only.
    assert verdicts.holm([0.03, 0.001, 0.5, 0.012]) == [False, True, False, True]
    assert verdicts.holm([float("nan"), 0.0]) == [False, True]


def test_reach_step_interpolates_between_evaluations():
    assert verdicts.reach_step([50, 100, 150], [3.0, 2.6, 2.2], 2.5) == pytest.approx(112.5)
    assert verdicts.reach_step([50, 100], [2.0, 1.0], 2.5) == 50.0  # already there at the first evaluation
    assert verdicts.reach_step([50, 100], [3.0, 2.9], 2.5) is None
    assert verdicts.reach_step([50, 100], [0.1, 0.3], 0.2, higher_is_better=True) == pytest.approx(75.0)


def test_one_seed_gets_an_interval_from_its_documents_alone():
    rng = np.random.default_rng(5)
    m, b = _simulate(rng, -0.05, seeds=1)
    r = verdicts.log_perplexity_changes(m, b, ["d"], resamples=300)["per_domain"]["d"]
    assert r.seeds == 1 and r.se_training == 0 and r.se_held_out > 0 and math.isinf(r.df)
    assert r.has_interval and r.low < r.mean < r.high
