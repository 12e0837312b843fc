"""Token losses of a model on a batch, and the evaluation step: what training and
evaluation share (below both, so that neither imports the other for them)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from doremi_jax import dro

Batch = dict[str, jax.Array]


def token_losses(model, params, batch: Batch) -> jax.Array:
    """Per-token cross-entropy in nats, float32[batch, length] (padding included; mask later)."""
    logits = model.apply(
        {"params": params},
        batch["decoder_input_tokens"],
        batch["decoder_positions"],
        batch["decoder_segment_ids"],
    )
    # log Σ exp(logits) − the label's logit, the label's picked by a masked sum rather than
    # a gather (optax's softmax_cross_entropy_with_integer_labels): XLA then fuses both
    # reductions over the vocabulary into the logits' consumers and never writes a float32
    # copy of them. On a 256k vocabulary that is most of a step's memory traffic: the
    # 280M model's step compiled for TPU v4 moves 21% fewer bytes (BENCHMARKS.md). Same
    # value to float32 rounding.
    labels = batch["decoder_target_tokens"]
    vocab = jnp.arange(logits.shape[-1], dtype=labels.dtype)
    label_logit = jnp.sum(jnp.where(vocab == labels[..., None], logits, 0.0), axis=-1)
    return jax.nn.logsumexp(logits, axis=-1) - label_logit


def eval_step(params, batch: Batch, *, model, num_domains: int):
    """Per-domain sum of token losses (nats) and token counts over one batch, and the
    scored token losses, float32[batch, length] (0 where not scored), which the
    evaluator sums per held-out document for the verdicts' intervals."""
    tl = token_losses(model, params, batch)
    sums, counts = dro.domain_sums(tl, batch["domain_ids"], batch["decoder_loss_weights"], num_domains)
    return sums, counts, tl * batch["decoder_loss_weights"]
