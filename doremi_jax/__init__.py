"""doremi_jax: DoReMi domain reweighting and language-model pretraining in JAX/Flax."""

__version__ = "0.1.0"
