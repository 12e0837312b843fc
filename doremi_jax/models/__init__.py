"""Flax models. `Transformer` is the only architecture; sizes live in gin/models/."""

from doremi_jax.models.transformer import Transformer, TransformerConfig, model_flops_per_step, param_count

__all__ = ["Transformer", "TransformerConfig", "model_flops_per_step", "param_count"]
