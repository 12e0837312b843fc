"""Orbax round trip of a sharded train state, and restoring only the params."""

import jax
import numpy as np
import pytest

from doremi_jax import checkpoints, dro, sharding
from doremi_jax.train import loop
from doremi_jax.train.state import OptimizerConfig, make_optimizer

from helpers import TINY


def make_state(seed, mesh_cfg):
    mesh = sharding.make_mesh(mesh_cfg)
    tx = make_optimizer(OptimizerConfig(), 10)
    return loop.init_state(TINY, tx, np.full(3, 1 / 3), jax.random.PRNGKey(seed), mesh, mesh_cfg.rules, dro.multiplicative_weights()), mesh


def test_round_trip_into_another_mesh(tmp_path):
    (state, _, param_sh), _ = make_state(0, sharding.MeshConfig(data=-1))
    ckpt = checkpoints.Checkpointer(str(tmp_path / "ck"), max_to_keep=2)
    state = state.replace(step=state.step + 5)
    ckpt.save(5, state)
    ckpt.close()
    # Restore into a differently sharded, differently initialised state (FSDP x tensor).
    fsdp = sharding.MeshConfig(data=1, fsdp=4, tensor=2)
    (other, _, other_sh), _ = make_state(1, fsdp)
    ckpt = checkpoints.Checkpointer(str(tmp_path / "ck"))
    assert ckpt.latest_step() == 5
    restored = ckpt.restore(other)
    assert int(restored.step) == 5
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kernel = restored.params["layer_0"]["mlp"]["up"]["kernel"]
    assert kernel.sharding.spec == other_sh["layer_0"]["mlp"]["up"]["kernel"].spec
    params = checkpoints.restore_params(str(tmp_path / "ck"), loop.abstract_params(TINY, sharding.make_mesh(fsdp), fsdp.rules)[0])
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restore_params_errors(tmp_path):
    mesh_cfg = sharding.MeshConfig(data=-1)
    abstract = loop.abstract_params(TINY, sharding.make_mesh(mesh_cfg), mesh_cfg.rules)[0]
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoint folder"):
        checkpoints.restore_params(str(tmp_path / "none"), abstract)
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoints.CheckpointError, match="no complete checkpoint"):
        checkpoints.restore_params(str(tmp_path / "empty"), abstract)
