"""What gin can configure: the library's config classes, the trainer, and every
registered mixture method's settings and trainer plug-ins (`doremi_jax.methods`).

Called by the entries before they parse gin; `config.py` below only parses.
"""

from __future__ import annotations

from doremi_jax import config, methods, sharding
from doremi_jax.data import inputs
from doremi_jax.eval.downstream import DownstreamConfig
from doremi_jax.models import TransformerConfig
from doremi_jax.train import loop, mixture, state


def register() -> None:
    for cls in (
        TransformerConfig,
        inputs.DataConfig,
        sharding.MeshConfig,
        state.OptimizerConfig,
        loop.TrainConfig,
        DownstreamConfig,
        mixture.FixedMixture,
    ):
        config.add_configurable(cls.__name__, cls)
    config.add_configurable("train", loop.train)
    methods.register_with_gin()
