"""Verdicts with 95% intervals: is a mixture's main model better than the baseline's?

A change (method − baseline, paired by seed: the same seed, steps and held-out tokens)
has two sources of noise, and its interval covers both:

- **training**: another seed gives another model. Estimated by the spread of the per-seed
  changes, Student t with n − 1 degrees of freedom (none with one seed);
- **the held-out sample**: another draw of test documents gives another figure. Estimated
  by a bootstrap over documents (resampled within each domain, the same resample for
  every run, so the pairing is kept); it is there with one seed too.

The two variances add (the documents are common to the seeds, so their noise does not
shrink with more seeds), and the degrees of freedom come from Welch–Satterthwaite with
the bootstrap's part counted as known. A change is "better" or "worse" only when its
interval excludes zero; counts over domains use Holm's step-down correction.

Downstream accuracy: the same, with the examples' noise from the binomial variance of
both accuracies, taken as common to the seeds and unpaired (both conservative).

Pure numpy and scipy: evaluation results in, intervals out (`report` and `comparison`
render them).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 1000  # bootstrap resamples of the held-out documents


@dataclasses.dataclass(frozen=True)
class Interval:
    """A paired change's mean over seeds and its two-sided interval."""

    mean: float
    low: float
    high: float
    seeds: int
    se_training: float  # standard error from the spread over seeds (0 with one seed)
    se_held_out: float  # standard error from the held-out sample (documents or examples)
    df: float
    p_value: float

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.low) and self.high > self.low

    def excludes_zero(self) -> bool:
        return self.has_interval and (self.low > 0 or self.high < 0)

    def verdict(self, lower_is_better: bool = True) -> str:
        """'better', 'worse' or 'within noise' (or 'no interval' when neither source of
        noise could be estimated: one seed and no held-out sample)."""
        if not self.has_interval:
            return "no interval"
        if not self.excludes_zero():
            return "within noise"
        return "better" if (self.high < 0) == lower_is_better else "worse"

    def text(self, digits: int = 4) -> str:
        if not self.has_interval:
            return f"{self.mean:+.{digits}f}"
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"

    def to_json(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, d: Mapping) -> "Interval":
        return cls(**{k: (math.nan if d.get(k) is None else d[k]) for k in
                      (f.name for f in dataclasses.fields(cls))})


def combine(per_seed: Sequence[float], se_held_out: float, level: float = LEVEL) -> Interval:
    """The interval of the mean of `per_seed` changes, with the held-out sample's
    standard error of that mean added (see the module docstring)."""
    d = np.asarray(per_seed, np.float64)
    n = len(d)
    mean = float(d.mean())
    var_training = float(d.var(ddof=1)) / n if n > 1 else 0.0
    var_held_out = float(se_held_out) ** 2
    var = var_training + var_held_out
    if var <= 0.0 or (n < 2 and var_held_out == 0.0):
        return Interval(mean, math.nan, math.nan, n, math.sqrt(var_training), float(se_held_out), math.nan, math.nan)
    # Welch–Satterthwaite: the seeds' part has n − 1 degrees of freedom, the bootstrap's
    # (hundreds of documents) is taken as known.
    df = math.inf if var_training == 0.0 else var**2 / (var_training**2 / (n - 1))
    se = math.sqrt(var)
    crit = float(stats.t.ppf(0.5 + level / 2, df))
    p = float(2 * stats.t.sf(abs(mean) / se, df))
    return Interval(mean, mean - crit * se, mean + crit * se, n, math.sqrt(var_training),
                    float(se_held_out), float(df), p)


def holm(p_values: Sequence[float], alpha: float = 1 - LEVEL) -> list[bool]:
    """Holm's step-down rejections at family-wise level `alpha` (NaN: never rejected)."""
    p = np.asarray([1.0 if not math.isfinite(x) else x for x in p_values], np.float64)
    order = np.argsort(p)
    reject = [False] * len(p)
    for rank, i in enumerate(order):
        if p[i] > alpha / (len(p) - rank):
            break
        reject[i] = True
    return reject


# --- Log-perplexity from held-out documents.

Documents = Mapping[str, tuple[np.ndarray, np.ndarray]]  # domain -> (loss sums, tokens) per document


def _check_paired(runs: Sequence[Documents], domains: Sequence[str]) -> None:
    for d in domains:
        first = runs[0][d][1]
        for r in runs[1:]:
            if not np.array_equal(r[d][1], first):
                raise ValueError(f"domain {d!r}: the runs were not scored on the same held-out documents "
                                 "(another sequence length or eval_tokens_per_domain)")


def log_perplexity_changes(
    method_runs: Sequence[Documents],
    baseline_runs: Sequence[Documents],
    domains: Sequence[str],
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict:
    """Per-domain, average and worst-case log-perplexity changes (method − baseline,
    nats per token), paired by seed (the i-th runs of the two lists) and by document.

    Each run's figure for a domain is its documents' summed loss over their tokens;
    the average is the unweighted mean over domains, the worst the highest domain.
    Returns {"per_domain": {d: Interval}, "average": Interval, "worst": Interval,
    "improved"/"worse": Holm-corrected lists of domains, "documents"/"tokens" per domain}.
    """
    if len(method_runs) != len(baseline_runs) or not method_runs:
        raise ValueError("one baseline run per method run (paired by seed) is needed")
    runs = [*method_runs, *baseline_runs]
    _check_paired(runs, domains)
    n = len(method_runs)
    rng = np.random.default_rng(seed)
    # figures[b, run, domain]: b = 0 is the sample itself, 1.. the bootstrap resamples.
    figures = np.empty((resamples + 1, len(runs), len(domains)))
    for j, d in enumerate(domains):
        tokens = runs[0][d][1].astype(np.float64)
        loss = np.stack([r[d][0] for r in runs], axis=1)  # [docs, runs]
        if len(tokens) > 1:
            resampled = rng.multinomial(len(tokens), np.full(len(tokens), 1 / len(tokens)), size=resamples)
        else:  # one document: nothing to resample, and no held-out noise it could show
            resampled = np.ones((resamples, len(tokens)))
        weights = np.vstack([np.ones(len(tokens)), resampled])
        figures[:, :, j] = (weights @ loss) / np.maximum(weights @ tokens, 1.0)[:, None]

    def change(stat: Callable[[np.ndarray], np.ndarray]) -> Interval:
        values = stat(figures)  # [b, runs]
        per_seed = values[:, :n] - values[:, n:]  # [b, seeds]
        se_held_out = float(per_seed[1:].mean(axis=1).std(ddof=1))
        # Identical resamples (one document a domain) differ only by rounding in the products.
        se_held_out = 0.0 if se_held_out < 1e-12 else se_held_out
        return combine(per_seed[0], se_held_out, level)

    per_domain = {d: change(lambda f, j=j: f[:, :, j]) for j, d in enumerate(domains)}
    p_values = [per_domain[d].p_value for d in domains]
    significant = dict(zip(domains, holm(p_values, 1 - level)))
    return {
        "per_domain": per_domain,
        "average": change(lambda f: f.mean(axis=2)),
        "worst": change(lambda f: f.max(axis=2)),
        "improved": [d for d in domains if significant[d] and per_domain[d].mean < 0],
        "worse": [d for d in domains if significant[d] and per_domain[d].mean > 0],
        "documents": {d: int(len(runs[0][d][1])) for d in domains},
        "tokens": {d: int(runs[0][d][1].sum()) for d in domains},
        "resamples": resamples,
    }


def accuracy_change(method: Sequence[float], baseline: Sequence[float], examples: int,
                    level: float = LEVEL) -> Interval:
    """Paired change of an accuracy (method − baseline, per seed) over `examples`
    examples per run; higher is better."""
    pm, pb = float(np.mean(method)), float(np.mean(baseline))
    se = math.sqrt((pm * (1 - pm) + pb * (1 - pb)) / max(int(examples), 1))
    return combine(np.subtract(method, baseline), se, level)


# --- Steps to reach the baseline.

def reach_step(steps: Sequence[int], values: Sequence[float], target: float,
               higher_is_better: bool = False) -> float | None:
    """The step at which a curve first reaches `target`, linearly interpolated between
    the evaluations around the crossing; None when it never does."""
    sign = 1.0 if higher_is_better else -1.0
    previous = None
    for step, value in zip(steps, values):
        if sign * (value - target) >= 0:
            if previous is None:
                return float(step)
            s0, v0 = previous
            return float(s0 + (step - s0) * (target - v0) / (value - v0))
        previous = (step, value)
    return None


def speedup(method_curves: Sequence[tuple[Sequence[int], Sequence[float]]],
            baseline_curves: Sequence[tuple[Sequence[int], Sequence[float]]],
            higher_is_better: bool = False, level: float = LEVEL) -> dict:
    """Per seed, the step at which the method's curve reaches its paired baseline's
    final value; with every seed reaching it and two or more seeds, the interval of the
    mean step over seeds (Student t) and the speedup baseline steps / that step with
    the interval's ends inverted. Otherwise no interval: "reached" counts the seeds."""
    steps, finals = [], []
    for (ms, mv), (bs, bv) in zip(method_curves, baseline_curves):
        if not ms or not bs:
            steps.append(None)
            continue
        finals.append(bs[-1])
        steps.append(reach_step(ms, mv, bv[-1], higher_is_better))
    reached = [s for s in steps if s is not None]
    out = {"steps_to_baseline": steps, "reached": len(reached), "seeds": len(steps),
           "baseline_steps": float(np.mean(finals)) if finals else None}
    if len(reached) < 2 or len(reached) < len(steps):
        return out
    r = np.asarray(reached)
    se = float(r.std(ddof=1)) / math.sqrt(len(r))
    crit = float(stats.t.ppf(0.5 + level / 2, len(r) - 1))
    low, high = float(r.mean()) - crit * se, float(r.mean()) + crit * se
    total = out["baseline_steps"]
    out.update({
        "mean_step": float(r.mean()), "step_low": low, "step_high": high,
        "speedup": total / float(r.mean()),
        "speedup_low": total / high,
        # A step interval reaching 0 or below bounds the speedup by nothing.
        "speedup_high": total / low if low > 0 else None,
    })
    return out
