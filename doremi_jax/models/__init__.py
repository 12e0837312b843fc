"""Flax models. `Transformer` is the only architecture; sizes live in gin/models/."""

from doremi_jax.models.transformer import Transformer, TransformerConfig, param_count

__all__ = ["Transformer", "TransformerConfig", "param_count"]
