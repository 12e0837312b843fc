"""The EXP3 bandit of Online Data Mixing (Albalak et al., 2023, Algorithm 1).

Arms are domains; the reward of a domain is the main model's own mean training loss on
it (a domain the model still finds hard is worth sampling). With K domains and t the
number of updates so far:

  ε_t   = min{1/K, sqrt(ln K / (K·t))}                       (exploration, ε_0 = 1/K)
  R̂_i  ← α·R̂_i + (1 − α)·L_i / π_i                          (smoothed importance-weighted reward,
                                                               for each domain in the batch)
  π_i   = (1 − K·ε_t)·softmax(ε_{t−1}·R̂)_i + ε_t            (the next batch's rates)

ε_{t−1} is EXP3's learning rate and ε_t its exploration floor: every π_i ≥ ε_t. A domain
absent from the batch keeps its R̂ (it was not pulled). Pure jax, float32; nothing here
imports tensorflow, seqio or gin.

`variant="authors"` is what the authors' released code runs for the paper's results
with mixed-domain batches (`SmoothedMeanWeightUpdater.group_update` in
alon-albalak/online-data-mixing, which its README names the paper's implementation):

  R̂_i  ← α·R̂_i + (1 − α)·exp(L_i)                           (no importance weight; R̂_0 = 0)
  π_i   = (1 − K·ε_t)·R̂_i / Σ_j R̂_j + ε_t                     (proportional, not a softmax)

with t the global step (counted through the warmup), so ε_t is already small when the
first update comes after a warmup.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Exp3State(NamedTuple):
    """count: updates taken (t); reward: R̂, float32[K]; average: the mean of the rates
    π_1..π_t (π_0 before the first update): a static mixture a later run can train on."""

    count: jax.Array
    reward: jax.Array
    average: jax.Array


def init(rates0) -> Exp3State:
    rates0 = jnp.asarray(rates0, jnp.float32)
    return Exp3State(jnp.zeros([], jnp.int32), jnp.zeros_like(rates0), rates0)


def exploration(t, num_domains: int) -> jax.Array:
    """ε_t = min{1/K, sqrt(ln K / (K·t))}, with ε_0 = 1/K."""
    k = float(num_domains)
    t = jnp.asarray(t, jnp.float32)
    decayed = jnp.sqrt(jnp.log(k) / (k * jnp.maximum(t, 1.0)))
    return jnp.where(t > 0, jnp.minimum(1.0 / k, decayed), 1.0 / k)


def rates(reward: jax.Array, learning_rate: jax.Array, floor: jax.Array) -> jax.Array:
    """π = (1 − K·floor)·softmax(learning_rate·R̂) + floor."""
    k = reward.shape[-1]
    return (1.0 - k * floor) * jax.nn.softmax(learning_rate * reward) + floor


VARIANTS = ("paper", "authors")


def update(state: Exp3State, losses: jax.Array, counts: jax.Array, sampled_rates: jax.Array,
           smoothing: float, variant: str = "paper", step: jax.Array | int = 0) -> tuple[jax.Array, Exp3State]:
    """One update from a batch: `losses` float32[K], each domain's mean token loss in
    the batch; `counts` its tokens (0: absent, R̂ kept); `sampled_rates` the π the batch
    was drawn with (the paper's importance weights); `step` the global step the batch
    trained (the authors' variant counts ε by it). Returns the next rates and state."""
    present = counts > 0
    k = losses.shape[-1]
    count = state.count + 1
    if variant == "paper":
        estimate = losses / jnp.maximum(sampled_rates, 1e-12)
    elif variant == "authors":
        estimate = jnp.exp(losses)
    else:
        raise ValueError(f"variant={variant!r}: expected one of {VARIANTS}")
    reward = jnp.where(present, smoothing * state.reward + (1.0 - smoothing) * estimate, state.reward)
    if variant == "paper":
        new_rates = rates(reward, exploration(state.count, k), exploration(count, k))
    else:
        floor = exploration(jnp.asarray(step) + 1, k)  # their iteration counter is 1 after the first step
        new_rates = (1.0 - k * floor) * reward / jnp.maximum(reward.sum(), 1e-30) + floor
    average = state.average + (new_rates - state.average) / count.astype(jnp.float32)
    return new_rates, Exp3State(count, reward, average)
