"""Greedy decoding with a key/value cache, compiled once and sharded like training.

Prompts are left-padded to one length, so every row's next token sits at the same
cache index: one prefill call over the prompts, then one call per new token inside a
`lax.while_loop` that stops when every row has emitted a stop token (newline or EOS)
or after `max_new_tokens`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from doremi_jax import sharding
from doremi_jax.data.vocab import PAD_ID
from doremi_jax.errors import InputError
from doremi_jax.jit_cache import memoized
from doremi_jax.models import Transformer, TransformerConfig


def left_pad(prompts: Sequence[np.ndarray], length: int) -> dict[str, np.ndarray]:
    """Token, position and segment arrays [n, length]; a prompt longer than `length`
    keeps its last `length` tokens (the part next to the answer)."""
    tokens = np.zeros((len(prompts), length), np.int32)
    positions = np.zeros((len(prompts), length), np.int32)
    segments = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):
        prompt = np.asarray(prompt, np.int32)[-length:]
        if prompt.size == 0:
            raise ValueError(f"prompt {row} is empty")
        n = prompt.size
        tokens[row, length - n:] = prompt
        positions[row, length - n:] = np.arange(n)
        segments[row, length - n:] = 1
    return {"tokens": tokens, "positions": positions, "segment_ids": segments}


def greedy_generate(model: Transformer, params, tokens, positions, segment_ids, max_new_tokens: int, stop_ids):
    """New tokens int32[batch, max_new_tokens] after each left-padded prompt; PAD after a
    row's stop token (which is kept)."""
    batch, prompt_len = tokens.shape
    cache_len = prompt_len + max_new_tokens
    shapes = jax.eval_shape(
        model.init, jax.random.PRNGKey(0), jnp.zeros((batch, cache_len), jnp.int32)
    )["cache"]
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    logits, variables = model.apply(
        {"params": params, "cache": cache}, tokens, positions, segment_ids, mutable=["cache"]
    )
    stop_ids = jnp.asarray(list(stop_ids), jnp.int32)
    first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    out = jnp.full((batch, max_new_tokens), PAD_ID, jnp.int32)
    # A row's next position is one past its last prompt token.
    next_pos = positions[:, -1] + 1

    def cond(carry):
        i, _, _, _, _, done = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, cache, token, pos, out, done = carry
        out = out.at[:, i].set(jnp.where(done, PAD_ID, token))
        done = done | jnp.isin(token, stop_ids)
        logits, variables = model.apply(
            {"params": params, "cache": cache}, token[:, None], pos[:, None],
            jnp.ones((batch, 1), jnp.int32), mutable=["cache"],
        )
        token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        return i + 1, variables["cache"], token, pos + 1, out, done

    carry = (jnp.zeros([], jnp.int32), variables["cache"], first, next_pos, out, jnp.zeros((batch,), bool))
    return jax.lax.while_loop(cond, body, carry)[4]


@memoized
def _jit_generate(model, max_new_tokens: int, stop_ids: tuple, mesh, param_shardings):
    batch = sharding.batch_sharding(mesh)
    generate = lambda p, t, pos, seg: greedy_generate(model, p, t, pos, seg, max_new_tokens, stop_ids)  # noqa: E731
    return jax.jit(
        generate, in_shardings=(param_shardings, batch, batch, batch), out_shardings=sharding.replicated(mesh),
    )


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    batch_size: int = 32
    prompt_length: int = 96  # prompts keep their last this many tokens
    max_new_tokens: int = 16


class Generator:
    """`generator(params, prompts) -> list of new-token arrays`, one jit for any number of
    prompts (padded up to whole batches)."""

    def __init__(self, model_cfg: TransformerConfig, mesh, rules, param_shardings, cfg: DecodeConfig, stop_ids):
        dp = sharding.data_parallel_size(mesh)
        if cfg.batch_size % dp:
            raise InputError(f"DecodeConfig.batch_size={cfg.batch_size} is not divisible by the {dp} data-parallel devices")
        # Decoding keeps no activations for a backward pass: no remat.
        self.model = dataclasses.replace(model_cfg, remat_policy="none").make(decode=True)
        self.mesh, self.rules, self.cfg = mesh, list(rules), cfg
        self._generate = _jit_generate(self.model, cfg.max_new_tokens, tuple(stop_ids), mesh, param_shardings)

    def __call__(self, params, prompts: Sequence[np.ndarray]) -> list[np.ndarray]:
        b = self.cfg.batch_size
        rows = sharding.local_batch_rows(self.mesh, b)
        outputs = []
        for start in range(0, len(prompts), b):
            chunk = list(prompts[start:start + b])
            real = len(chunk)
            chunk += [chunk[-1]] * (b - real)  # whole batches: one compiled shape
            arrays = left_pad(chunk, self.cfg.prompt_length)
            local = {k: v[rows] for k, v in arrays.items()}
            glob = sharding.make_global_batch(self.mesh, local, b)
            with sharding.activate(self.mesh, self.rules):
                new = self._generate(params, glob["tokens"], glob["positions"], glob["segment_ids"])
            outputs.extend(np.asarray(jax.device_get(new))[:real])
        return outputs
