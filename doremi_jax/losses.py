"""Token losses of a model on a batch, and the evaluation step: what training and
evaluation share (below both, so that neither imports the other for them)."""

from __future__ import annotations

import jax

from doremi_jax import dro

Batch = dict[str, jax.Array]


def token_losses(model, params, batch: Batch) -> jax.Array:
    """Per-token cross-entropy in nats, float32[batch, length] (padding included; mask later):
    the model called with targets, so that it may tile its logits (`vocab_tiles`)."""
    return model.apply(
        {"params": params},
        batch["decoder_input_tokens"],
        batch["decoder_positions"],
        batch["decoder_segment_ids"],
        targets=batch["decoder_target_tokens"],
    )


def eval_step(params, batch: Batch, *, model, num_domains: int):
    """Per-domain sum of token losses (nats) and token counts over one batch, and the
    scored token losses, float32[batch, length] (0 where not scored), which the
    evaluator sums per held-out document for the verdicts' intervals."""
    tl = token_losses(model, params, batch)
    sums, counts = dro.domain_sums(tl, batch["domain_ids"], batch["decoder_loss_weights"], num_domains)
    return sums, counts, tl * batch["decoder_loss_weights"]
