"""Group DRO pieces of DoReMi (Xie et al., 2023, Algorithm 1).

- `domain_excess_losses`: λ_t[i], the per-domain mean of the clipped excess loss
  max(ℓ_θ − ℓ_ref, 0) over the domain's tokens in the (global) batch.
- `multiplicative_weights`: the domain-weight player as an optax transform,
  α_t = (1 − c)·softmax(log α_{t−1} + η·λ_t) + c/k, and the running mean ᾱ.
- `domain_mean_losses` / `weighted_domain_loss`: the proxy's objective
  L(θ, α) = Σ_i α[i]·mean_{tokens of domain i}(ℓ_θ).

Nothing here imports tensorflow, seqio or gin.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


def domain_sums(values, domain_ids, loss_mask, num_domains):
    """Sum of `values` and token count per domain: two float32[num_domains].

    A one-hot contraction rather than a scatter: under a sharded batch XLA turns it
    into a local sum plus one all-reduce over the batch axes.
    """
    onehot = jax.nn.one_hot(domain_ids, num_domains, dtype=jnp.float32)
    mask = loss_mask.astype(jnp.float32)
    sums = jnp.einsum("bl,blk->k", values.astype(jnp.float32) * mask, onehot)
    counts = jnp.einsum("bl,blk->k", mask, onehot)
    return sums, counts


def domain_mean_losses(token_loss, domain_ids, loss_mask, num_domains, counts=None):
    """Per-domain mean token loss, float32[num_domains]; 0 where a domain has no token;
    and the token counts.

    token_loss: float32[batch, length] (nats per token); domain_ids: int[batch, length];
    loss_mask: [batch, length], 1 for tokens that count. With `counts` (the whole batch's,
    when these arrays are one microbatch of it), the sums are divided by those instead:
    the microbatches' results then add up to the whole batch's means.
    """
    sums, own_counts = domain_sums(token_loss, domain_ids, loss_mask, num_domains)
    counts = own_counts if counts is None else counts
    return sums / jnp.maximum(counts, 1.0), counts


def domain_excess_losses(proxy_token_loss, ref_token_loss, domain_ids, loss_mask, num_domains, counts=None):
    """λ_t: float32[num_domains], per-domain mean of max(ℓ_proxy − ℓ_ref, 0).

    The mean runs over the domain's unmasked tokens in the whole batch (the global
    batch when the arrays are sharded; `counts` as in `domain_mean_losses` for a
    microbatch); a domain absent from the batch gets 0.
    """
    excess = jnp.maximum(proxy_token_loss - ref_token_loss, 0.0)
    lam, _ = domain_mean_losses(excess, domain_ids, loss_mask, num_domains, counts)
    return lam


def weighted_domain_loss(token_loss, domain_ids, loss_mask, domain_weights, counts=None):
    """Σ_i α[i]·mean_i(ℓ): the proxy objective. domain_weights: float32[k], not
    differentiated; `counts` as in `domain_mean_losses` for a microbatch."""
    means, _ = domain_mean_losses(token_loss, domain_ids, loss_mask, domain_weights.shape[0], counts)
    return jnp.sum(jax.lax.stop_gradient(domain_weights) * means)


def carry_absent_domains(lam: jax.Array, counts: jax.Array, previous: jax.Array) -> jax.Array:
    """λ_t where a domain has tokens in the batch; its last λ where it has none.

    For resample mode, where the rates follow α: with λ = 0 for an absent domain, a
    domain pushed towards c/k is rarely drawn, so rarely scored, so pushed further, and
    cannot recover. The reference PyTorch implementation keeps each domain's last score
    the same way. `previous` < 0 marks a domain never seen yet (λ itself is never
    negative): it gets the mean λ of the domains present, which leaves its weight
    where it is relative to theirs until it is scored. float32[k] each; counts are the
    batch's token counts per domain.
    """
    present = counts > 0
    neutral = jnp.sum(jnp.where(present, lam, 0.0)) / jnp.maximum(jnp.sum(present), 1)
    return jnp.where(present, lam, jnp.where(previous >= 0, previous, neutral))


def early_stop_reached(recent_weights, average, tolerance: float, step: int) -> bool:
    """Whether ᾱ has settled at `step`: the mean of α over the last window (float[w, k])
    is within `tolerance` (L∞) of ᾱ (float[k]), with at least as many steps before the
    window as in it (at step w the window's mean would be ᾱ itself).

    ‖ᾱ_t − ᾱ_{t−w}‖ shrinks like w/t even while α_t keeps moving (averaging alone), so it
    would stop a proxy whose weights still drift; the recent α_t against ᾱ does not.
    """
    recent = np.asarray(recent_weights, np.float64)
    if step < 2 * len(recent):
        return False
    return bool(np.max(np.abs(recent.mean(axis=0) - np.asarray(average, np.float64))) < tolerance)


class MultiplicativeWeightsState(NamedTuple):
    """count: updates taken; log_weights: log α_t kept exactly (float32 rounding of tiny
    weights through `apply_updates` would otherwise compound); average: ᾱ = mean of α_1..α_t
    (α_0 before the first update)."""

    count: jax.Array
    log_weights: jax.Array
    average: jax.Array


class ProxyState(NamedTuple):
    """What the DoReMi proxy keeps between steps besides α_t: the multiplicative-weights
    state (ᾱ is `weights.average`) and each domain's last λ (resample mode's estimate
    for a domain absent from the batch; < 0 before it is first scored)."""

    weights: MultiplicativeWeightsState
    excess_estimate: jax.Array


def init_proxy_state(alpha0, weight_tx: optax.GradientTransformation) -> ProxyState:
    return ProxyState(weight_tx.init(alpha0), -jnp.ones_like(jnp.asarray(alpha0, jnp.float32)))


ScalarOrSchedule = float | Callable[[jax.Array], jax.Array]


def multiplicative_weights(
    learning_rate: ScalarOrSchedule = 1.0, smoothing: float = 1e-3
) -> optax.GradientTransformation:
    """Exponentiated-gradient ascent on the simplex, as an optax transform.

    `update(lam, state, alpha)` returns `new_alpha - alpha`, so that
    `optax.apply_updates(alpha, updates)` is α_t = (1−c)·softmax(log α_{t−1} + η·λ_t) + c/k
    with η = learning_rate (a float or an optax schedule of the step count) and
    c = smoothing. The update is computed in log space from the state's own log α,
    so large η·λ cannot overflow and tiny weights do not lose precision.
    """

    def init_fn(alpha0):
        alpha0 = jnp.asarray(alpha0, jnp.float32)
        return MultiplicativeWeightsState(
            count=jnp.zeros([], jnp.int32),
            log_weights=jnp.log(alpha0),
            average=alpha0,
        )

    def update_fn(lam, state, alpha=None):
        if alpha is None:
            raise ValueError("multiplicative_weights.update needs the current weights `alpha`")
        eta = learning_rate(state.count) if callable(learning_rate) else learning_rate
        k = lam.shape[-1]
        log_p = jax.nn.log_softmax(state.log_weights + eta * lam.astype(jnp.float32))
        # log((1 − c)·p + c/k), without leaving log space for tiny p.
        log_weights = jnp.logaddexp(jnp.log1p(-smoothing) + log_p, jnp.log(smoothing / k))
        new_alpha = jnp.exp(log_weights)
        count = state.count + 1
        average = state.average + (new_alpha - state.average) / count.astype(jnp.float32)
        updates = new_alpha - alpha
        return updates, MultiplicativeWeightsState(count, log_weights, average)

    return optax.GradientTransformation(init_fn, update_fn)
