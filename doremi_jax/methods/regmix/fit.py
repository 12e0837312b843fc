"""RegMix (Liu et al., 2024): data mixture as regression.

Train many small models on random mixtures, fit a regression from mixture to the target
validation loss, and take the mixture it predicts best. Here: the mixtures are drawn
from a Dirichlet around the natural rates (`sample_mixtures`); the fit is the paper's
LightGBM or a linear model, whichever predicts held-out runs better by leave-one-out
rank correlation on this corpus (`fit`); the search draws many candidate mixtures from
the same prior, predicts each, and averages the best few (`search`), as the paper does.
The small runs are stages of the one trainer (`__init__.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from doremi_jax.errors import InputError

REGRESSORS = ("auto", "lightgbm", "linear")


def sample_mixtures(natural: Sequence[float], n: int, seed: int, low: float = 0.1, high: float = 5.0) -> np.ndarray:
    """n mixtures, float64[n, k]: Dirichlet(s·k·natural) with the scale s log-uniform in
    [low, high] per mixture, so that the runs span sparse mixtures (small s, most of the
    weight on one or two domains) and mixtures near the natural rates (large s)."""
    natural = np.asarray(natural, np.float64)
    natural = np.maximum(natural / natural.sum(), 1e-6)
    rng = np.random.default_rng(seed)
    scales = np.exp(rng.uniform(np.log(low), np.log(high), n))
    k = natural.size
    mixtures = np.stack([rng.dirichlet(s * k * natural) for s in scales])
    mixtures = np.maximum(mixtures, 0.0)
    return mixtures / mixtures.sum(axis=1, keepdims=True)


def _make(regressor: str, n: int):
    if regressor == "lightgbm":
        return _LightGBM(n)
    if regressor == "linear":
        return _Linear()
    raise InputError(f"regressor={regressor!r}: expected one of {list(REGRESSORS)}")


class _LightGBM:
    """The paper's regressor, through LightGBM's own API (no scikit-learn needed). At our
    run counts (tens, where the paper has hundreds) a leaf must be allowed to hold few
    runs, or no split is ever made."""

    def __init__(self, n: int):
        self.params = {
            "objective": "regression", "learning_rate": 0.05, "num_leaves": 8,
            "min_data_in_leaf": max(2, n // 8), "min_sum_hessian_in_leaf": 0.0, "min_data_in_bin": 1,
            "verbose": -1, "seed": 0, "deterministic": True, "num_threads": 1,
        }

    def fit(self, x, y):
        import lightgbm

        data = lightgbm.Dataset(np.asarray(x, np.float64), np.asarray(y, np.float64), params={"verbose": -1})
        self.booster = lightgbm.train(self.params, data, num_boost_round=400)
        return self

    def predict(self, x):
        return np.asarray(self.booster.predict(np.asarray(x, np.float64)), np.float64)


class _Linear:
    """Least squares on the mixture weights (they sum to 1, so no intercept is needed:
    each weight's coefficient is that domain's pure-mixture loss), lightly ridged."""

    def fit(self, x, y):
        x = np.asarray(x, np.float64)
        ridge = 1e-6 * np.eye(x.shape[1])
        self.coef_ = np.linalg.solve(x.T @ x + ridge, x.T @ np.asarray(y, np.float64))
        return self

    def predict(self, x):
        return np.asarray(x, np.float64) @ self.coef_


def _spearman(a, b) -> float:
    from scipy import stats

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(stats.spearmanr(a, b).statistic)


def held_out_correlation(regressor: str, mixtures: np.ndarray, losses: np.ndarray) -> tuple[float, np.ndarray]:
    """Leave-one-out predictions of each run's loss from the others, and their Spearman
    rank correlation with the real losses (how well the fit ranks mixtures it never saw)."""
    n = len(losses)
    predictions = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        predictions[i] = _make(regressor, n - 1).fit(mixtures[keep], losses[keep]).predict(mixtures[i:i + 1])[0]
    return _spearman(predictions, losses), predictions


@dataclasses.dataclass
class Fit:
    regressor: str  # the one chosen
    held_out_spearman: dict[str, float]  # per regressor tried
    model: object

    def predict(self, mixtures) -> np.ndarray:
        return np.asarray(self.model.predict(np.asarray(mixtures, np.float64)), np.float64)


def fit(mixtures, losses, regressor: str = "auto") -> Fit:
    """Fit mixture -> loss. `auto`: both regressors, keeping the one whose leave-one-out
    predictions rank the held-out runs better (LightGBM on a tie, the paper's)."""
    mixtures, losses = np.asarray(mixtures, np.float64), np.asarray(losses, np.float64)
    if regressor not in REGRESSORS:
        raise InputError(f"regressor={regressor!r}: expected one of {list(REGRESSORS)}")
    if len(losses) < 4:
        raise InputError(f"RegMix needs at least 4 small runs to fit and check a regression, got {len(losses)}")
    tried = ("lightgbm", "linear") if regressor == "auto" else (regressor,)
    scores = {r: held_out_correlation(r, mixtures, losses)[0] for r in tried}
    chosen = max(tried, key=lambda r: (scores[r], r == "lightgbm"))
    return Fit(chosen, scores, _make(chosen, len(losses)).fit(mixtures, losses))


def search(fit_: Fit, natural: Sequence[float], seed: int, candidates: int = 100_000, top: int = 100,
           upper: Sequence[float] | None = None) -> np.ndarray:
    """The mean of the `top` candidate mixtures with the lowest predicted loss, among
    `candidates` drawn from the small runs' prior (the paper averages its top 100).
    `upper` (float[k]) bounds each domain's weight: candidates beyond it are not
    considered (`bounds`)."""
    pool = sample_mixtures(natural, candidates, seed)
    if upper is not None:
        pool = pool[(pool <= np.asarray(upper, np.float64)[None] + 1e-12).all(axis=1)]
        if not len(pool):
            raise InputError("RegMix: no candidate mixture lies within the search bounds; run more small runs")
    best = np.argsort(fit_.predict(pool), kind="stable")[:top]
    mixture = pool[best].mean(axis=0)
    return mixture / mixture.sum()


def bounds(mixtures: np.ndarray, token_counts: Sequence[float] | None = None, token_budget: float = 0.0,
           max_epochs: float = 0.0) -> np.ndarray:
    """Each domain's largest weight the search may choose: no more than the small runs
    tried (a regression says nothing beyond the runs it was fitted on, and a linear one
    would follow its slope to a corner), and, given the main run's `token_budget`, no
    more than `max_epochs` passes over the domain's training tokens."""
    upper = np.asarray(mixtures, np.float64).max(axis=0)
    if token_counts is not None and token_budget and max_epochs:
        upper = np.minimum(upper, max_epochs * np.asarray(token_counts, np.float64) / token_budget)
    return upper
