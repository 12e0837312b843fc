"""Mixture methods: what decides the data mixture while the one loop trains.

A method is a frozen dataclass chosen by gin (`train.method = @DoReMi()`); the loop
asks it for its state, its step, the rates of the next batch, whether to stop early
and what to write at the end, and never branches on which method it runs.
"""

from doremi_jax.train.methods.base import MixtureMethod
from doremi_jax.train.methods.doremi import DoReMi
from doremi_jax.train.methods.fixed import FixedMixture
from doremi_jax.train.methods.odm import OnlineDataMixing

METHODS = (FixedMixture, DoReMi, OnlineDataMixing)
FIXED_MIXTURE = FixedMixture()  # the plain LM run, the trainer's default

__all__ = ["FIXED_MIXTURE", "METHODS", "DoReMi", "FixedMixture", "MixtureMethod", "OnlineDataMixing"]
