"""Online Data Mixing's step: the LM step, then the EXP3 update of the sampling rates
from the batch's per-domain losses (`bandit`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import doremi_jax.methods.odm.bandit as bandit
from doremi_jax.train import steps
from doremi_jax.train.state import TrainState


def odm_step(state: TrainState, batch: steps.Batch, *, model, tx, num_domains: int, microbatches: int = 1,
             smoothing: float = 0.9, warmup_steps: int = 0, variant: str = "paper"):
    """The LM step, then Online Data Mixing's EXP3 update: each domain's mean loss in
    this batch is its reward, and the rates for the next batch come out in
    `domain_weights` (`bandit.update`). During the first `warmup_steps` steps the rates
    stay where they started and nothing is learnt; a skipped step changes nothing."""
    new_state, metrics = steps.lm_step(state, batch, model=model, tx=tx, num_domains=num_domains, microbatches=microbatches)
    rates, bandit_state = bandit.update(
        state.method_state, metrics["domain_loss"], metrics["domain_tokens"], state.domain_weights, smoothing,
        variant, state.step,
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
