"""The per-device memory estimate the loop prints (and checks against
TrainConfig.device_memory_gib) before compiling; `python -m doremi_jax.aot` compares it
with XLA's own figure (BENCHMARKS.md: within 0.86x-1.33x on the shipped models)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from doremi_jax import sharding
from doremi_jax.models import TransformerConfig
from doremi_jax.train.setup import abstract_params


def memory_estimate(model_cfg: TransformerConfig, mesh, rules, optimizer: str, batch_size: int,
                    sequence_length: int, with_reference: bool) -> dict[str, float]:
    """Per-device bytes: parameters, optimizer state, reference parameters, activations.

    Parameters are counted shard by shard from the rules; AdamW keeps two float32
    moments per parameter, Adafactor about one factored row and column (counted as 0.1).
    Activations kept for the backward pass per layer and token, in units of the compute
    dtype: without remat about 8·d + 3·mlp (the layer's input and middle, the norms'
    outputs, q, k, v and attention's output; the MLP's gate, up and product: the norm and
    gated product keep only their inputs), less with remat; the attention scores only
    within a block, and none under a flash kernel. A rough figure, meant to catch a
    configuration that cannot fit before a pod run.
    """
    abstract, _ = abstract_params(model_cfg, mesh, rules)
    param_bytes = sum(
        math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(abstract)
    )
    rows = batch_size / sharding.data_parallel_size(mesh)
    tensor = mesh.shape["tensor"]
    unit = jnp.dtype(model_cfg.dtype).itemsize
    # (per embed_dim, per mlp_dim) kept per layer and token, by remat policy.
    # 'dots' (jax's 'minimal' is the same policy) keeps the matmuls' outputs: q, k, v and
    # the two projections back into the residual stream, gate and up, and the input.
    d_coef, mlp_coef = {"none": (8, 3), "minimal": (6, 2), "dots": (6, 2), "full": (1, 0.15)}[
        model_cfg.remat_policy]
    per_token = (d_coef * model_cfg.embed_dim + mlp_coef * model_cfg.mlp_dim / tensor) * unit
    keep = {"none": 1.0, "minimal": 0.5, "dots": 0.35, "full": 1.0 / 17}[model_cfg.remat_policy]  # of the scores
    block = model_cfg.attention_block_size or sequence_length
    scores = rows * model_cfg.num_heads / tensor * block * sequence_length * 4
    if model_cfg.attention_implementation != "xla":  # a flash kernel (cuDNN, Pallas) keeps none
        scores = 0.0
    activations = model_cfg.num_layers * (rows * sequence_length * per_token + scores * keep)
    # Logits and their gradient, float32; of one tile of the sequence when tiled.
    logits = rows * sequence_length * model_cfg.vocab_size / tensor * 4 * 2 / model_cfg.vocab_tiles
    return {
        "params": param_bytes,
        "optimizer": param_bytes * (2.0 if optimizer == "adamw" else 0.1),
        "reference": param_bytes if with_reference else 0.0,
        "activations": activations + logits,
    }
