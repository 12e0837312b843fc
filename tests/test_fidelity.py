"""Details that bias λ: the proxy's data stream, absent domains in resample mode, early stop."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import optax
from conftest import REPO

from doremi_jax import config, configurables, dro
from doremi_jax.data.corpus import TokenStream
from doremi_jax.data.sampler import MixtureSampler, stream_seed


def stage_stream(run_file):
    configurables.register()
    config.parse([], [], [run_file], ["REFERENCE_DIR = 'x'"] if "proxy" in run_file else [], model_dir="x")
    return config.query("TrainConfig.stream"), config.query("%SEED")


def windows(sampler, weights, steps=200, rows=16):
    """(step, row) -> (domain, first target token's window start) of every sampled row."""
    out = {}
    for step in range(steps):
        batch = sampler.batch(step, range(rows), weights)
        for r in range(rows):
            out[(step, r)] = (int(batch["domain_ids"][r, 0]), batch["decoder_input_tokens"][r, :16].tobytes())
    return out


def test_the_proxy_does_not_read_the_references_windows():
    rng = np.random.default_rng(0)
    streams = [TokenStream(rng.integers(3, 259, 20_000).astype(np.int32), np.zeros(1, np.int64), 20_000) for _ in range(3)]
    natural, uniform = np.array([0.6, 0.3, 0.1]), np.full(3, 1 / 3)
    (ref_stream, seed), (proxy_stream, _) = stage_stream("gin/runs/reference.gin"), stage_stream("gin/runs/proxy.gin")
    assert ref_stream != proxy_stream
    reference = windows(MixtureSampler(streams, 64, stream_seed(seed, ref_stream)), natural)
    proxy = windows(MixtureSampler(streams, 64, stream_seed(seed, proxy_stream)), uniform)
    same_place = sum(reference[key] == proxy[key] for key in reference)
    anywhere = len(set(reference.values()) & set(proxy.values()))
    # Chance level: two unrelated seeds overlap about as much (a few windows anywhere,
    # none at the same step and row); one shared stream reads the same window whenever
    # the domain draws agree (about a third of the rows here).
    other = windows(MixtureSampler(streams, 64, (123,)), uniform)
    chance = len(set(reference.values()) & set(other.values()))
    shared = windows(MixtureSampler(streams, 64, stream_seed(seed)), uniform)
    shared_ref = windows(MixtureSampler(streams, 64, stream_seed(seed)), natural)
    assert sum(shared_ref[key] == shared[key] for key in shared) > 0.2 * len(shared)
    assert same_place <= 2
    assert anywhere <= max(3 * chance, 10)


def simulate(carry: bool, steps=300, rows=8, seed=0):
    """Resample-mode DoReMi on synthetic losses: domain 0 has a large excess (1.0), the
    others a small one (0.2), and starts rare (α_0[0] = 0.02)."""
    k = 4
    rng = np.random.default_rng(seed)
    tx = dro.multiplicative_weights(1.0, 1e-3)
    alpha = jnp.asarray([0.02, 0.98 / 3, 0.98 / 3, 0.98 / 3], jnp.float32)
    state, estimate = tx.init(alpha), -jnp.ones(k)
    true_excess = np.array([1.0, 0.2, 0.2, 0.2])
    for _ in range(steps):
        p = np.asarray(alpha, np.float64)
        ids = rng.choice(k, size=rows, p=p / p.sum())
        ids = np.repeat(ids[:, None], 4, axis=1)
        ref = np.zeros(ids.shape, np.float32)
        proxy = (true_excess[ids] + rng.normal(0, 0.05, ids.shape)).astype(np.float32)
        mask = np.ones(ids.shape, np.float32)
        lam = dro.domain_excess_losses(jnp.asarray(proxy), jnp.asarray(ref), jnp.asarray(ids), jnp.asarray(mask), k)
        _, counts = dro.domain_sums(jnp.asarray(mask), jnp.asarray(ids), jnp.asarray(mask), k)
        if carry:
            lam = dro.carry_absent_domains(lam, counts, estimate)
            estimate = lam
        updates, state = tx.update(lam, state, alpha)
        alpha = optax.apply_updates(alpha, updates)
    return np.asarray(alpha)


def test_a_starved_domain_with_a_large_excess_gets_its_weight_back():
    for seed in range(3):
        assert simulate(carry=True, seed=seed)[0] > 0.9
        # λ = 0 whenever it is absent: pushed to the floor and kept there.
        assert simulate(carry=False, seed=seed)[0] < 0.01


def test_early_stop_waits_for_the_weights_not_for_the_average():
    k, window = 3, 50
    steps = np.arange(1, 2001)
    # α_t drifting slowly but steadily: the old criterion (ᾱ over a window) says "settled".
    drift = np.stack([0.2 + 0.4 * steps / steps[-1], 0.5 - 0.2 * steps / steps[-1], 0.3 - 0.2 * steps / steps[-1]], 1)
    average = np.cumsum(drift, 0) / steps[:, None]
    assert np.max(np.abs(average[-1] - average[-1 - window])) < 0.01
    assert not dro.early_stop_reached(drift[-window:], average[-1], 0.01, len(steps))
    # α_t settled long ago: the window's mean and ᾱ agree.
    settled = np.tile([0.5, 0.3, 0.2], (len(steps), 1))
    settled[:100] = 1 / k
    average = np.cumsum(settled, 0) / steps[:, None]
    assert dro.early_stop_reached(settled[-window:], average[-1], 0.01, len(steps))
    # At step w the window's mean is ᾱ itself: too early to tell.
    assert not dro.early_stop_reached(drift[:window], np.mean(drift[:window], 0), 0.01, window)


def test_stratified_batches_split_rows_by_the_weights_on_every_host():
    """Stratified: each step's rows are divided between the domains in proportion to the
    weights (largest remainders); the global batch is the same however hosts split it."""
    from doremi_jax.data.sampler import stratified_domains

    weights = np.asarray([0.5, 0.3, 0.15, 0.05])
    for step in range(20):
        domains = stratified_domains((7,), step, weights, 16)
        np.testing.assert_array_equal(np.bincount(domains, minlength=4), [8, 5, 2, 1])
    assert not np.array_equal(stratified_domains((7,), 0, weights, 16), stratified_domains((7,), 1, weights, 16))
    uniform = np.full(4, 0.25)
    assert all(np.bincount(stratified_domains((0,), s, uniform, 6), minlength=4).min() >= 1 for s in range(50))

    rng = np.random.default_rng(0)
    streams = [TokenStream(rng.integers(3, 200, 5000).astype(np.int32), np.asarray([0, 2500]), 5000)
               for _ in range(4)]
    sampler = MixtureSampler(streams, 32, seed=(3,), stratified_batch=8)
    whole = sampler.batch(4, range(8), uniform)
    halves = [sampler.batch(4, rows, uniform) for rows in (range(0, 4), range(4, 8))]
    for name in whole:
        np.testing.assert_array_equal(whole[name], np.concatenate([h[name] for h in halves]))
    np.testing.assert_array_equal(np.bincount(whole["domain_ids"][:, 0], minlength=4), [2, 2, 2, 2])


def test_stratified_run_from_the_command_line_sees_every_domain_every_step(tmp_path):
    """`--gin.DataConfig.stratified=True` on the trainer: every step's metrics count tokens
    of every domain (8 rows, 4 domains); drawn per row, some step misses a domain."""
    def domain_tokens(workdir, *flags):
        result = subprocess.run(
            [sys.executable, "-m", "doremi_jax.train", "--gin_file=gin/runs/reference.gin",
             "--gin_file=gin/models/tiny.gin", "--gin.BATCH_SIZE=8", "--gin.TRAIN_STEPS=10",
             "--gin.REFERENCE_WEIGHTS='uniform'", "--gin.TrainConfig.tensorboard=False", *flags,
             f"--workdir={workdir}"],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
        return np.asarray([[v for k, v in sorted(r.items()) if k.startswith("domain_tokens/")]
                           for r in rows if "domain_tokens/code" in r])

    stratified = domain_tokens(tmp_path / "stratified", "--gin.DataConfig.stratified=True")
    assert stratified.shape == (10, 4) and stratified.min() > 0
    drawn = domain_tokens(tmp_path / "drawn")
    assert drawn.min() == 0
    assert json.loads(open(tmp_path / "stratified" / "run.json").read())["stratified"] is True
