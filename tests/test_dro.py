"""The DRO transform and excess losses against an independent float64 NumPy version."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from doremi_jax import dro, sharding


def numpy_update(alpha, lam, eta, c):
    """(1-c)·normalize(alpha ⊙ exp(eta·lam)) + c/k in float64 (the paper's Algorithm 1)."""
    z = np.log(alpha) + eta * lam
    z = z - z.max()
    p = np.exp(z) / np.exp(z).sum()
    return (1 - c) * p + c / len(alpha)


def numpy_excess(proxy, ref, ids, mask, k):
    lam = np.zeros(k)
    for i in range(k):
        sel = (ids == i) & (mask > 0)
        if sel.any():
            lam[i] = np.maximum(proxy[sel] - ref[sel], 0).mean()
    return lam


def test_transform_matches_float64_over_30_updates_with_extreme_steps():
    rng = np.random.default_rng(0)
    k, eta, c = 7, 1.0, 1e-3
    tx = dro.multiplicative_weights(learning_rate=eta, smoothing=c)
    alpha = jnp.full(k, 1.0 / k, jnp.float32)
    state = tx.init(alpha)
    ref_alpha = np.full(k, 1.0 / k)
    ref_hist = []
    update = jax.jit(tx.update)
    for t in range(30):
        lam = rng.uniform(0, 3, k)
        if t == 5:
            lam[2] = 1e3  # η·λ near 1e3: one domain takes almost everything
        if 6 <= t < 12:
            lam[:] = 0
            lam[2] = 50.0  # keep the others pinned near c/k for several steps
        updates, state = update(jnp.asarray(lam, jnp.float32), state, alpha)
        alpha = optax.apply_updates(alpha, updates)
        ref_alpha = numpy_update(ref_alpha, lam, eta, c)
        ref_hist.append(ref_alpha)
        assert np.all(np.isfinite(np.asarray(alpha)))
        np.testing.assert_allclose(np.asarray(alpha), ref_alpha, atol=2e-5, rtol=0)
        np.testing.assert_allclose(np.asarray(state.average), np.mean(ref_hist, 0), atol=2e-5, rtol=0)
        # The state keeps every weight to relative precision, tiny ones included, so
        # rounding in apply_updates cannot compound from step to step.
        np.testing.assert_allclose(np.exp(np.asarray(state.log_weights)), ref_alpha, rtol=1e-4)
    assert int(state.count) == 30
    # Weights near c/k really were exercised.
    assert np.min(ref_hist[10]) < 2 * c / k


def test_transform_initial_state_and_simplex():
    tx = dro.multiplicative_weights(1.0, 1e-3)
    alpha0 = jnp.asarray([0.5, 0.3, 0.2])
    state = tx.init(alpha0)
    assert int(state.count) == 0
    np.testing.assert_allclose(state.average, alpha0)
    updates, state = tx.update(jnp.asarray([1.0, 0.0, 2.0]), state, alpha0)
    alpha = optax.apply_updates(alpha0, updates)
    assert abs(float(alpha.sum()) - 1) < 1e-6 and float(alpha.min()) >= 1e-3 / 3 - 1e-9


def test_transform_with_schedule_and_chain():
    schedule = optax.linear_schedule(0.0, 2.0, 4)
    tx = optax.chain(optax.clip(1.0), dro.multiplicative_weights(schedule, 0.0))
    alpha = jnp.asarray([0.25, 0.75])
    state = tx.init(alpha)
    # First step: η = schedule(0) = 0, so the weights do not move.
    updates, state = tx.update(jnp.asarray([5.0, 0.0]), state, alpha)
    np.testing.assert_allclose(optax.apply_updates(alpha, updates), alpha, atol=1e-7)
    # Second step: η = 0.5 and λ clipped to 1.
    updates, state = tx.update(jnp.asarray([5.0, 0.0]), state, alpha)
    np.testing.assert_allclose(
        optax.apply_updates(alpha, updates), numpy_update(np.asarray([0.25, 0.75]), np.asarray([1.0, 0]), 0.5, 0.0), atol=1e-6
    )


def random_losses(seed, batch=8, length=16, k=5):
    rng = np.random.default_rng(seed)
    proxy = rng.uniform(0, 5, (batch, length)).astype(np.float32)
    ref = rng.uniform(0, 5, (batch, length)).astype(np.float32)
    ids = rng.integers(0, k - 1, (batch, length))  # domain k-1 is absent
    mask = (rng.uniform(size=(batch, length)) > 0.3).astype(np.float32)
    return proxy, ref, ids, mask, k


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_excess_losses_match_numpy(seed):
    proxy, ref, ids, mask, k = random_losses(seed)
    lam = dro.domain_excess_losses(proxy, ref, ids, mask, k)
    expected = numpy_excess(proxy, ref, ids, mask, k)
    np.testing.assert_allclose(np.asarray(lam), expected, rtol=1e-5, atol=1e-6)
    assert float(lam[k - 1]) == 0.0
    # Masked tokens do not count, even with a huge excess.
    proxy2 = np.where(mask > 0, proxy, 1e6).astype(np.float32)
    np.testing.assert_allclose(dro.domain_excess_losses(proxy2, ref, ids, mask, k), lam, rtol=1e-6)


def test_excess_losses_reduce_over_the_global_sharded_batch():
    proxy, ref, ids, mask, k = random_losses(3, batch=16)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1))
    assert mesh.devices.size == 8
    shard = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    args = [jax.device_put(x, shard) for x in (proxy, ref, ids, mask)]
    lam = jax.jit(dro.domain_excess_losses, static_argnums=4)(*args, k)
    np.testing.assert_allclose(np.asarray(lam), numpy_excess(proxy, ref, ids, mask, k), rtol=1e-5, atol=1e-6)


def test_weighted_domain_loss_is_weighted_per_domain_mean():
    proxy, _, ids, mask, k = random_losses(4)
    w = np.random.default_rng(4).dirichlet(np.ones(k)).astype(np.float32)
    got = float(dro.weighted_domain_loss(proxy, ids, mask, w))
    means = [proxy[(ids == i) & (mask > 0)].mean() if ((ids == i) & (mask > 0)).any() else 0 for i in range(k)]
    assert abs(got - float(np.dot(w, means))) < 1e-4
