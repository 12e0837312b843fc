"""Pure step functions: (state, batch[, reference_params]) -> (state, metrics).

`lm_step` trains on the plain token mean (reference and main runs), and skips a step
whose loss or gradient is not finite. A mixture method's own step lives in its folder
(`doremi_jax/methods/<name>/step.py`) and is built from the pieces here: the sum over
microbatches, the optimizer update that keeps a non-finite step out (`finish_step`) and
the health metrics.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from doremi_jax import dro
from doremi_jax.losses import token_losses
from doremi_jax.train.state import TrainState
from doremi_jax.errors import InputError

Batch = dict[str, jax.Array]


def split_microbatches(batch: Batch, microbatches: int) -> Batch:
    def split(x):
        if x.shape[0] % microbatches:
            raise InputError(f"batch of {x.shape[0]} rows does not split into {microbatches} microbatches")
        return x.reshape((microbatches, x.shape[0] // microbatches) + x.shape[1:])

    return jax.tree.map(split, batch)


def sum_over_microbatches(fn: Callable, batch: Batch, microbatches: int):
    """Σ over microbatches of fn(microbatch) (a pytree), by lax.scan; fn(batch) when 1."""
    if microbatches == 1:
        return fn(batch)
    parts = split_microbatches(batch, microbatches)
    first = jax.tree.map(lambda x: x[0], parts)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(fn, first))

    def body(acc, mb):
        return jax.tree.map(jnp.add, acc, fn(mb)), None

    total, _ = jax.lax.scan(body, zeros, parts)
    return total


def apply_if_finite(state: TrainState, new_state: TrainState, ok: jax.Array) -> TrainState:
    """new_state when ok; otherwise state with the step advanced and the skip counted."""
    kept = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
    return kept.replace(
        step=state.step + 1,
        nonfinite_steps=jnp.where(ok, 0, state.nonfinite_steps + 1),
    )


def finish_step(state, grads, loss, tx, extra_ok, **replace):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & extra_ok
    new_state = state.replace(params=params, opt_state=opt_state, **replace)
    return apply_if_finite(state, new_state, ok), grad_norm, ok


def step_health(new_state, ok):
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

    loss, grads, sums, counts = sum_over_microbatches(loss_and_grad, batch, microbatches)
    new_state, grad_norm, ok = finish_step(state, grads, loss, tx, True)
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "domain_loss": sums / jnp.maximum(counts, 1.0),
        "domain_tokens": counts,
        **step_health(new_state, ok),
    }
    return new_state, metrics
