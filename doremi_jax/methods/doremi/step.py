"""DoReMi's proxy step (paper, Algorithm 1): reference losses forward only, λ_t from the
global batch, α_t by the multiplicative-weights transform (`dro`), and a gradient step on
Σ_i α_t[i]·mean_i(ℓ_θ). A step whose loss, λ or gradient is not finite is skipped."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from doremi_jax import dro
from doremi_jax.errors import InputError
from doremi_jax.losses import token_losses
from doremi_jax.train import steps
from doremi_jax.train.state import TrainState


def doremi_step(
    state: TrainState,
    batch: steps.Batch,
    reference_params: Any,
    *,
    model,
    reference_model,
    tx,
    weight_tx,
    num_domains: int,
    mode: str = "reweight",
    microbatches: int = 1,
    accumulation: str = "exact",
):
    """The DoReMi proxy step.

    mode: `reweight` (the paper: the proxy minimises Σ_i α_t[i]·mean_i(ℓ_θ)) or `resample`
    (the data are sampled by α and the loss is the plain token mean).
    accumulation (microbatches > 1): `exact` computes λ_t and α_t from the whole global
    batch first (one extra proxy forward), so the step equals the unaccumulated one;
    `fast` weights the gradient by α_{t−1}, as the reference PyTorch implementation does.
    """
    ids, mask = batch["domain_ids"], batch["decoder_loss_weights"]
    # The whole batch's token counts: every per-domain mean below divides by these, so
    # that microbatch terms add up to the whole batch's (the dro functions, as tested).
    _, counts = dro.domain_sums(mask, ids, mask, num_domains)
    total_tokens = jnp.maximum(mask.sum(), 1.0)

    def objective(tl, mb, weights):
        if mode == "reweight":
            # Σ_i α[i]·mean_i(ℓ_θ) (§2.2), α not differentiated.
            return dro.weighted_domain_loss(tl, mb["domain_ids"], mb["decoder_loss_weights"], weights, counts)
        return jnp.sum(tl * mb["decoder_loss_weights"]) / total_tokens

    def reference_losses(mb):
        # Forward only: nothing is differentiated through the reference.
        return jax.lax.stop_gradient(token_losses(reference_model, reference_params, mb))

    def domain_means(proxy_tl, ref_tl, mb):
        """λ (this batch's share), and the proxy's and reference's per-domain means."""
        ids, mask = mb["domain_ids"], mb["decoder_loss_weights"]
        lam = dro.domain_excess_losses(proxy_tl, ref_tl, ids, mask, num_domains, counts)
        proxy_means, _ = dro.domain_mean_losses(proxy_tl, ids, mask, num_domains, counts)
        ref_means, _ = dro.domain_mean_losses(ref_tl, ids, mask, num_domains, counts)
        return lam, proxy_means, ref_means

    def update_weights(lam):
        if mode == "resample":
            lam = dro.carry_absent_domains(lam, counts, state.method_state.excess_estimate)
        updates, weights_state = weight_tx.update(lam, state.method_state.weights, state.domain_weights)
        return lam, optax.apply_updates(state.domain_weights, updates), dro.ProxyState(weights_state, lam)

    if microbatches == 1:
        # One pass: α_t depends on this batch's proxy losses, which the forward gives
        # before the gradient is weighted (exact without an extra forward).
        ref_tl = reference_losses(batch)

        def loss_fn(params):
            tl = token_losses(model, params, batch)
            means = domain_means(jax.lax.stop_gradient(tl), ref_tl, batch)
            lam, alpha, dro_state = update_weights(means[0])
            return objective(tl, batch, alpha), (means, lam, alpha, dro_state)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        (_, proxy_means, ref_means), lam, alpha, dro_state = aux
    elif accumulation == "exact":
        def forward(mb):
            return domain_means(token_losses(model, state.params, mb), reference_losses(mb), mb)

        batch_lam, proxy_means, ref_means = steps.sum_over_microbatches(forward, batch, microbatches)
        lam, alpha, dro_state = update_weights(batch_lam)

        def loss_and_grad(mb):
            return jax.value_and_grad(lambda p: objective(token_losses(model, p, mb), mb, alpha))(state.params)

        loss, grads = steps.sum_over_microbatches(loss_and_grad, batch, microbatches)
    elif accumulation == "fast":
        def loss_and_grad(mb):
            def loss_fn(params):
                tl = token_losses(model, params, mb)
                return objective(tl, mb, state.domain_weights), tl

            (loss, tl), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            return loss, grads, domain_means(tl, reference_losses(mb), mb)

        loss, grads, (batch_lam, proxy_means, ref_means) = steps.sum_over_microbatches(loss_and_grad, batch, microbatches)
        lam, alpha, dro_state = update_weights(batch_lam)
    else:
        raise InputError(f"accumulation={accumulation!r}: expected 'exact' or 'fast'")

    lam_ok = jnp.all(jnp.isfinite(lam)) & jnp.all(jnp.isfinite(alpha))
    new_state, grad_norm, ok = steps.finish_step(state, grads, loss, tx, lam_ok, domain_weights=alpha, method_state=dro_state)
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "domain_loss": proxy_means,
        "reference_domain_loss": ref_means,
        "excess_loss": lam,
        # From the new state: a skipped step reports the weights it kept.
        "domain_weights": new_state.domain_weights,
        "average_domain_weights": new_state.method_state.weights.average,
        "distance_from_uniform": jnp.linalg.norm(new_state.domain_weights - 1.0 / num_domains),
        # How far this step moved ᾱ (L∞): the signal the proxy's early stop watches.
        "average_change": jnp.max(jnp.abs(new_state.method_state.weights.average - state.method_state.weights.average)),
        "domain_tokens": counts,
        **steps.step_health(new_state, ok),
    }
    return new_state, metrics
