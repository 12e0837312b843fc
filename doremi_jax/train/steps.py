"""Pure step functions: (state, batch[, reference_params]) -> (state, metrics).

`lm_step` trains on the plain token mean (reference and main runs); `doremi_step` is
the proxy step of DoReMi (paper, Algorithm 1): reference losses forward only, λ_t from
the global batch, α_t by the multiplicative-weights transform, and a gradient step on
Σ_i α_t[i]·mean_i(ℓ_θ); `odm_step` is the LM step followed by Online Data Mixing's
EXP3 update of the sampling rates from the batch's per-domain losses (`bandit`). Each
skips a step whose loss, λ or gradient is not finite. The mixture methods
(`train/methods`) choose among them.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from doremi_jax import bandit, dro
from doremi_jax.losses import token_losses
from doremi_jax.train.state import TrainState
from doremi_jax.errors import InputError

Batch = dict[str, jax.Array]


def _split_microbatches(batch: Batch, microbatches: int) -> Batch:
    def split(x):
        if x.shape[0] % microbatches:
            raise InputError(f"batch of {x.shape[0]} rows does not split into {microbatches} microbatches")
        return x.reshape((microbatches, x.shape[0] // microbatches) + x.shape[1:])

    return jax.tree.map(split, batch)


def _sum_over_microbatches(fn: Callable, batch: Batch, microbatches: int):
    """Σ over microbatches of fn(microbatch) (a pytree), by lax.scan; fn(batch) when 1."""
    if microbatches == 1:
        return fn(batch)
    parts = _split_microbatches(batch, microbatches)
    first = jax.tree.map(lambda x: x[0], parts)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(fn, first))

    def body(acc, mb):
        return jax.tree.map(jnp.add, acc, fn(mb)), None

    total, _ = jax.lax.scan(body, zeros, parts)
    return total


def _apply_if_finite(state: TrainState, new_state: TrainState, ok: jax.Array) -> TrainState:
    """new_state when ok; otherwise state with the step advanced and the skip counted."""
    kept = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
    return kept.replace(
        step=state.step + 1,
        nonfinite_steps=jnp.where(ok, 0, state.nonfinite_steps + 1),
    )


def _finish(state, grads, loss, tx, extra_ok, **replace):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & extra_ok
    new_state = state.replace(params=params, opt_state=opt_state, **replace)
    return _apply_if_finite(state, new_state, ok), grad_norm, ok


def _step_health(new_state, ok):
    return {"step_ok": ok, "nonfinite_steps": new_state.nonfinite_steps}


def lm_step(state: TrainState, batch: Batch, *, model, tx, num_domains: int, microbatches: int = 1):
    """One step on the mean token loss of the batch."""
    mask = batch["decoder_loss_weights"]
    total_tokens = jnp.maximum(mask.sum(), 1.0)

    def loss_and_grad(mb):
        def loss_fn(params):
            tl = token_losses(model, params, mb)
            return jnp.sum(tl * mb["decoder_loss_weights"]) / total_tokens, tl

        (loss, tl), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        sums, counts = dro.domain_sums(tl, mb["domain_ids"], mb["decoder_loss_weights"], num_domains)
        return loss, grads, sums, counts

    loss, grads, sums, counts = _sum_over_microbatches(loss_and_grad, batch, microbatches)
    new_state, grad_norm, ok = _finish(state, grads, loss, tx, True)
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "domain_loss": sums / jnp.maximum(counts, 1.0),
        "domain_tokens": counts,
        **_step_health(new_state, ok),
    }
    return new_state, metrics


def doremi_step(
    state: TrainState,
    batch: Batch,
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

        batch_lam, proxy_means, ref_means = _sum_over_microbatches(forward, batch, microbatches)
        lam, alpha, dro_state = update_weights(batch_lam)

        def loss_and_grad(mb):
            return jax.value_and_grad(lambda p: objective(token_losses(model, p, mb), mb, alpha))(state.params)

        loss, grads = _sum_over_microbatches(loss_and_grad, batch, microbatches)
    elif accumulation == "fast":
        def loss_and_grad(mb):
            def loss_fn(params):
                tl = token_losses(model, params, mb)
                return objective(tl, mb, state.domain_weights), tl

            (loss, tl), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            return loss, grads, domain_means(tl, reference_losses(mb), mb)

        loss, grads, (batch_lam, proxy_means, ref_means) = _sum_over_microbatches(loss_and_grad, batch, microbatches)
        lam, alpha, dro_state = update_weights(batch_lam)
    else:
        raise InputError(f"accumulation={accumulation!r}: expected 'exact' or 'fast'")

    lam_ok = jnp.all(jnp.isfinite(lam)) & jnp.all(jnp.isfinite(alpha))
    new_state, grad_norm, ok = _finish(state, grads, loss, tx, lam_ok, domain_weights=alpha, method_state=dro_state)
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
        **_step_health(new_state, ok),
    }
    return new_state, metrics


def odm_step(state: TrainState, batch: Batch, *, model, tx, num_domains: int, microbatches: int = 1,
             smoothing: float = 0.9, warmup_steps: int = 0):
    """The LM step, then Online Data Mixing's EXP3 update: each domain's mean loss in
    this batch is its reward, and the rates for the next batch come out in
    `domain_weights` (`bandit.update`). During the first `warmup_steps` steps the rates
    stay where they started and nothing is learnt; a skipped step changes nothing."""
    new_state, metrics = lm_step(state, batch, model=model, tx=tx, num_domains=num_domains, microbatches=microbatches)
    rates, bandit_state = bandit.update(
        state.method_state, metrics["domain_loss"], metrics["domain_tokens"], state.domain_weights, smoothing
    )
    learn = metrics["step_ok"] & (state.step >= warmup_steps)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(learn, a, b), new, old)  # noqa: E731
    new_state = new_state.replace(
        domain_weights=keep(rates, state.domain_weights), method_state=keep(bandit_state, state.method_state)
    )
    metrics.update(
        domain_weights=new_state.domain_weights,
        average_domain_weights=new_state.method_state.average,
        estimated_reward=new_state.method_state.reward,
    )
    return new_state, metrics
