"""Pure step functions: learning, the proxy step's accumulation modes, non-finite safety."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from doremi_jax import dro, losses, sharding
from doremi_jax.data.corpus import TokenStream
from doremi_jax.data.sampler import MixtureSampler
from doremi_jax.train import steps
from doremi_jax.train import setup as train_setup  # `setup` is a fixture here
from doremi_jax.train.state import OptimizerConfig, make_optimizer
from doremi_jax.methods.doremi import step as doremi_steps
from doremi_jax.methods.doremi.trainer import DoReMi

from helpers import TINY

K = 3


def streams():
    rng = np.random.default_rng(0)
    pattern = np.tile(np.arange(3, 40, dtype=np.int32), 400)  # learnable: a counting sequence
    noise = rng.integers(3, 259, 20_000).astype(np.int32)
    easy = np.full(20_000, 100, np.int32)
    return [TokenStream(t, np.zeros(1, np.int64), t.size) for t in (pattern, noise, easy)]


@pytest.fixture(scope="module")
def setup():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1))
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=1), 100)
    weight_tx = dro.multiplicative_weights(1.0, 1e-3)
    alpha0 = np.full(K, 1 / K)
    state, state_sh, param_sh = train_setup.init_state(TINY, tx, alpha0, jax.random.PRNGKey(0), mesh, sharding.DEFAULT_RULES, DoReMi())
    sampler = MixtureSampler(streams(), 32, seed=0)
    rows = sharding.local_batch_rows(mesh, 16)

    def batch(step):
        return sharding.make_global_batch(mesh, sampler.batch(step, rows, alpha0), 16)

    return dict(mesh=mesh, tx=tx, weight_tx=weight_tx, state=state, batch=batch, model=TINY.make())


def copy(tree):
    return jax.tree.map(lambda x: x.copy(), tree)


def test_lm_step_learns(setup):
    step = jax.jit(functools.partial(steps.lm_step, model=setup["model"], tx=setup["tx"], num_domains=K))
    state, losses = copy(setup["state"]), []
    with sharding.activate(setup["mesh"], sharding.DEFAULT_RULES):
        for t in range(40):
            state, m = step(state, setup["batch"](t))
            losses.append(float(m["loss"]))
    assert int(state.step) == 40
    assert losses[-1] < losses[0] - 1.0, losses
    # The noise domain cannot be learned below its entropy, log(256).
    assert float(m["domain_loss"][1]) > np.log(256) - 0.1


def doremi(setup, state, batch, ref, **kw):
    fn = jax.jit(functools.partial(
        doremi_steps.doremi_step, model=setup["model"], reference_model=setup["model"], tx=setup["tx"],
        weight_tx=setup["weight_tx"], num_domains=K, **kw))
    with sharding.activate(setup["mesh"], sharding.DEFAULT_RULES):
        return fn(state, batch, ref)


def test_exact_accumulation_equals_one_pass_and_fast_differs(setup):
    # A reference that differs from the proxy: the proxy after a few LM steps.
    ref = jax.tree.map(lambda x: x * 1.1, setup["state"].params)
    batch = setup["batch"](7)
    one, m1 = doremi(setup, copy(setup["state"]), batch, ref)
    exact, m2 = doremi(setup, copy(setup["state"]), batch, ref, microbatches=4, accumulation="exact")
    fast, m3 = doremi(setup, copy(setup["state"]), batch, ref, microbatches=4, accumulation="fast")
    np.testing.assert_allclose(m2["domain_weights"], m1["domain_weights"], rtol=1e-5)
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(exact.params), jax.tree.leaves(one.params)):
        np.testing.assert_allclose(a, b, atol=2e-6)
    # Fast mode has the same α_t but weighted the gradient by α_{t-1} (uniform here).
    np.testing.assert_allclose(m3["domain_weights"], m1["domain_weights"], rtol=1e-5)
    assert abs(float(m3["loss"]) - float(m1["loss"])) > 1e-4
    assert float(jnp.abs(m1["domain_weights"] - 1 / K).max()) > 1e-3  # α really moved


def test_nonfinite_step_keeps_params_and_weights(setup):
    ref = setup["state"].params
    batch = dict(setup["batch"](3))
    weights = np.asarray(batch["decoder_loss_weights"]).copy()
    weights[0, 0] = np.nan
    batch["decoder_loss_weights"] = jax.device_put(weights, batch["decoder_loss_weights"].sharding)
    before = copy(setup["state"])
    after, m = doremi(setup, copy(setup["state"]), batch, ref)
    assert not bool(m["step_ok"]) and int(after.nonfinite_steps) == 1 and int(after.step) == 1
    for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(before.params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(after.domain_weights, before.domain_weights)
    np.testing.assert_array_equal(after.method_state.weights.average, before.method_state.weights.average)
    # A good step afterwards resets the counter.
    again, m = doremi(setup, after, setup["batch"](4), ref)
    assert bool(m["step_ok"]) and int(again.nonfinite_steps) == 0


def test_resample_mode_uses_the_plain_token_mean(setup):
    ref = jax.tree.map(lambda x: x * 0.9, setup["state"].params)
    batch = setup["batch"](5)
    _, m = doremi(setup, copy(setup["state"]), batch, ref, mode="resample")
    mask = np.asarray(batch["decoder_loss_weights"])
    tl = losses.token_losses(setup["model"], setup["state"].params, jax.device_get(batch))
    np.testing.assert_allclose(float(m["loss"]), float((np.asarray(tl) * mask).sum() / mask.sum()), rtol=1e-5)
