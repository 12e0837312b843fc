"""Token statistics and repetition: how many epochs a mixture spends on each domain.

Given per-domain train-split token counts (cached with the token streams), weights and a
token budget (steps x batch x sequence length), domain i is seen w_i·budget/count_i
times. Data-constrained corpora repeat small domains many times under DoReMi weights;
beyond about 4 epochs repeated tokens are worth much less (Muennighoff et al., 2023).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from doremi_jax.errors import InputError


def epochs_per_domain(token_counts: Sequence[int], weights: Sequence[float], token_budget: float) -> np.ndarray:
    counts = np.asarray(token_counts, np.float64)
    w = np.asarray(weights, np.float64)
    return w / w.sum() * token_budget / counts


def cap_weights(token_counts: Sequence[int], weights: Sequence[float], token_budget: float, max_epochs: float) -> np.ndarray:
    """The weights renormalized so that no domain exceeds `max_epochs`: capped domains are
    held at their cap and the rest of the mass goes to the others in proportion (water
    filling). A clear error when even all domains at their caps cannot fill the budget."""
    counts = np.asarray(token_counts, np.float64)
    caps = max_epochs * counts / token_budget  # the largest weight each domain may take
    if caps.sum() < 1.0:
        raise InputError(
            f"a budget of {token_budget:,.0f} tokens repeats the whole corpus more than "
            f"{max_epochs} times; raise the cap or lower the budget"
        )
    w = np.asarray(weights, np.float64) / np.sum(weights)
    capped = np.zeros(len(w), bool)
    while True:
        free = 1.0 - caps[capped].sum()
        rest = w * ~capped
        out = np.where(capped, caps, rest / rest.sum() * free if rest.sum() > 0 else 0.0)
        over = (out > caps + 1e-12) & ~capped
        if not over.any():
            return out
        capped |= over


def repetition_report(domains: Sequence[str], token_counts, weights, token_budget: float, max_epochs: float) -> list[str]:
    """One line per domain over the cap, for the run's log."""
    epochs = epochs_per_domain(token_counts, weights, token_budget)
    return [
        f"domain {d!r} would be repeated {e:.1f} times (cap {max_epochs:g}): "
        f"{int(c):,} tokens at weight {w:.4f} of a {token_budget:,.0f}-token budget"
        for d, e, c, w in zip(domains, epochs, token_counts, np.asarray(weights) / np.sum(weights))
        if e > max_epochs
    ]
