"""The train state and the optimizer that steps it."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from doremi_jax.errors import InputError



@struct.dataclass
class TrainState:
    """Everything a step reads and writes; checkpointed whole.

    domain_weights: float32[k], the mixture method's current weights (DoReMi's α_t,
    ODM's rates π_t; a fixed mixture's sampling weights). method_state: whatever else the
    method keeps between steps (a pytree; `()` for a fixed mixture), so that it is
    checkpointed and resumed with the rest. nonfinite_steps: consecutive skipped steps.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    domain_weights: jax.Array
    method_state: Any
    nonfinite_steps: jax.Array


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW or Adafactor with warmup and cosine or inverse-square-root decay."""

    name: str = "adamw"  # or "adafactor"
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    decay: str = "cosine"  # "cosine" | "rsqrt" | "constant"
    end_learning_rate_ratio: float = 0.1
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.95
    grad_clip_norm: float = 1.0


def learning_rate_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    warmup = max(1, min(cfg.warmup_steps, total_steps))
    ramp = optax.linear_schedule(0.0, cfg.learning_rate, warmup)
    if cfg.decay == "cosine":
        decay = optax.cosine_decay_schedule(
            cfg.learning_rate, max(1, total_steps - warmup), alpha=cfg.end_learning_rate_ratio
        )
    elif cfg.decay == "rsqrt":
        decay = lambda t: cfg.learning_rate * jnp.sqrt(warmup / (t + warmup))  # noqa: E731
    elif cfg.decay == "constant":
        decay = optax.constant_schedule(cfg.learning_rate)
    else:
        raise InputError(f"OptimizerConfig.decay={cfg.decay!r}: expected cosine, rsqrt or constant")
    return optax.join_schedules([ramp, decay], [warmup])


@functools.lru_cache(maxsize=64)  # one object per setting: jit_cache compares it by identity
def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        core = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    elif cfg.name == "adafactor":
        core = optax.adafactor(schedule, weight_decay_rate=cfg.weight_decay or None)
    else:
        raise InputError(f"OptimizerConfig.name={cfg.name!r}: expected adamw or adafactor")
    if cfg.grad_clip_norm:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), core)
    return core
