"""Sharding: the same proxy run on 1 device and on three 8-device meshes; params really split."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from doremi_jax import dro, sharding
from doremi_jax.data.sampler import MixtureSampler
from doremi_jax.train import loop, memory, setup
from doremi_jax.train.state import OptimizerConfig, make_optimizer
from doremi_jax.methods.doremi import step as doremi_steps
from doremi_jax.methods.doremi.trainer import DoReMi

from helpers import TINY
from test_steps import K, streams

DATA_PARALLEL_RULES = tuple((name, ("data", "fsdp") if name == "activation_batch" else None) for name, _ in sharding.DEFAULT_RULES)
MESHES = {
    "one_device": (sharding.MeshConfig(data=1), DATA_PARALLEL_RULES, 1),
    "data8": (sharding.MeshConfig(data=8), DATA_PARALLEL_RULES, 8),
    "fsdp4_tensor2": (sharding.MeshConfig(data=1, fsdp=4, tensor=2), sharding.DEFAULT_RULES, 8),
    "data2_fsdp2_tensor2": (sharding.MeshConfig(data=2, fsdp=2, tensor=2), sharding.DEFAULT_RULES, 8),
}
STEPS, BATCH, LENGTH = 4, 16, 32


def proxy_run(name):
    mesh_cfg, rules, n = MESHES[name]
    mesh = sharding.make_mesh(mesh_cfg, jax.devices()[:n])
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=1), 100)
    weight_tx = dro.multiplicative_weights(1.0, 1e-3)
    alpha0 = np.full(K, 1 / K)
    state, state_sh, param_sh = setup.init_state(TINY, tx, alpha0, jax.random.PRNGKey(0), mesh, rules, DoReMi())
    ref_state, _, _ = setup.init_state(TINY, tx, alpha0, jax.random.PRNGKey(1), mesh, rules, DoReMi())
    model = TINY.make()
    step = jax.jit(
        functools.partial(doremi_steps.doremi_step, model=model, reference_model=model, tx=tx, weight_tx=weight_tx, num_domains=K),
        in_shardings=(state_sh, sharding.batch_sharding(mesh), param_sh),
        out_shardings=(state_sh, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )
    sampler = MixtureSampler(streams(), LENGTH, seed=0)
    rows = sharding.local_batch_rows(mesh, BATCH)
    losses, alphas = [], []
    with sharding.activate(mesh, rules):
        for t in range(STEPS):
            batch = sharding.make_global_batch(mesh, sampler.batch(t, rows, alpha0), BATCH)
            state, m = step(state, batch, ref_state.params)
            losses.append(float(m["loss"]))
            alphas.append(np.asarray(m["domain_weights"]))
    return state, np.asarray(losses), np.asarray(alphas), param_sh


@pytest.fixture(scope="module")
def single():
    return proxy_run("one_device")


@pytest.mark.parametrize("name", ["data8", "fsdp4_tensor2", "data2_fsdp2_tensor2"])
def test_meshes_match_one_device(single, name):
    state1, losses1, alphas1, _ = single
    state, losses, alphas, _ = proxy_run(name)
    np.testing.assert_allclose(losses, losses1, rtol=2e-5)
    np.testing.assert_allclose(alphas, alphas1, atol=2e-6)
    np.testing.assert_allclose(np.asarray(state.method_state.weights.average), np.asarray(state1.method_state.weights.average), atol=2e-6)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(state1.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)
    assert float(np.abs(alphas1[-1] - 1 / K).max()) > 1e-3


def test_parameters_are_split_as_the_rules_say():
    state, _, _, param_sh = proxy_run("fsdp4_tensor2")
    up = state.params["layer_0"]["mlp"]["up"]["kernel"]  # (embed, mlp) -> (fsdp, tensor)
    assert up.sharding.spec == P("fsdp", "tensor")
    assert up.addressable_shards[0].data.shape == (TINY.embed_dim // 4, TINY.mlp_dim // 2)
    query = state.params["layer_0"]["attention"]["query"]  # (embed, heads, kv)
    assert query.sharding.spec == P("fsdp", "tensor", None)
    embed = state.params["embed"]["embedding"]  # (vocab, embed)
    assert embed.sharding.spec == P("tensor", "fsdp")
    # Adam's moments follow their parameters.
    mu = state.opt_state[1][0].mu["layer_0"]["mlp"]["up"]["kernel"]
    assert mu.sharding.spec == P("fsdp", "tensor")
    norm = state.params["final_norm"]["scale"]
    assert norm.sharding.spec in (P(None), P())


def test_mesh_errors():
    with pytest.raises(ValueError, match="needs 6 devices, but 8 are available"):
        sharding.make_mesh(sharding.MeshConfig(data=3, fsdp=2))
    with pytest.raises(ValueError, match="does not divide the 8 devices"):
        sharding.make_mesh(sharding.MeshConfig(data=-1, fsdp=3))
    assert dict(sharding.make_mesh(sharding.MeshConfig(data=-1, tensor=2)).shape) == {"data": 4, "fsdp": 1, "tensor": 2}


def test_memory_estimate_counts_shards_and_fails_early(tmp_path):
    import dataclasses

    from doremi_jax.models import param_count

    big = dataclasses.replace(TINY, embed_dim=256, mlp_dim=1024, num_heads=8, head_dim=32)
    one = memory.memory_estimate(big, sharding.make_mesh(sharding.MeshConfig(data=1), jax.devices()[:1]), DATA_PARALLEL_RULES, "adamw", 8, 64, True)
    assert one["params"] == param_count(big) * 4 and one["optimizer"] == 2 * one["params"] and one["reference"] == one["params"]
    split = memory.memory_estimate(big, sharding.make_mesh(sharding.MeshConfig(data=1, fsdp=4, tensor=2)), sharding.DEFAULT_RULES, "adamw", 8, 64, True)
    assert split["params"] < one["params"] / 6  # split 8 ways but for the small replicated norms
    assert split["activations"] < one["activations"]
    # A flash kernel keeps no score matrix; vocabulary tiles keep one tile's logits.
    mesh = sharding.make_mesh(sharding.MeshConfig(data=1), jax.devices()[:1])
    flash = dataclasses.replace(big, attention_implementation="pallas_interpret")
    tiled = dataclasses.replace(big, vocab_tiles=4)
    base = memory.memory_estimate(big, mesh, DATA_PARALLEL_RULES, "adamw", 8, 64, False)["activations"]
    scores = big.num_layers * 8 * big.num_heads * 64 * 64 * 4  # no remat: every layer's, float32
    logits = 8 * 64 * big.vocab_size * 4 * 2
    assert memory.memory_estimate(flash, mesh, DATA_PARALLEL_RULES, "adamw", 8, 64, False)["activations"] == base - scores
    assert memory.memory_estimate(tiled, mesh, DATA_PARALLEL_RULES, "adamw", 8, 64, False)["activations"] == (
        pytest.approx(base - logits * 3 / 4))
    with pytest.raises(loop.TrainingError, match="exceeds TrainConfig.device_memory_gib=0.0001"):
        loop.train(str(tmp_path / "oom"), model=TINY, config=loop.TrainConfig(train_steps=1, batch_size=8, sequence_length=64, device_memory_gib=0.0001))
    assert not (tmp_path / "oom" / "checkpoints").exists()
