"""Online Data Mixing: the EXP3 bandit's known answers, its step, and a main model
trained with it from the command line on a corpus this test writes."""

import functools
import json
import math
import os
import shlex

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from doremi_jax import sharding
from doremi_jax.methods.odm import bandit, step as odm_steps
from doremi_jax.train import setup as train_setup
from doremi_jax.methods.odm.trainer import OnlineDataMixing
from doremi_jax.train.state import OptimizerConfig, make_optimizer

from conftest import REPO
from helpers import TINY, assert_mixture_gin, write_three_domain_corpus
from test_command_line import one_line_error, run_entry, train

K = 4


def run_bandit(losses_fn, updates, rates0=None, counts_fn=None, smoothing=0.9, variant="paper", first_step=0):
    """Feed `updates` batches of per-domain losses (global steps from `first_step`);
    returns the rates after each and the state."""
    state = bandit.init(np.full(K, 1 / K) if rates0 is None else rates0)
    rates = state.average
    update = jax.jit(functools.partial(bandit.update, smoothing=smoothing, variant=variant))
    history = []
    for t in range(updates):
        counts = jnp.ones(K) if counts_fn is None else jnp.asarray(counts_fn(t), jnp.float32)
        rates, state = update(state, jnp.asarray(losses_fn(t), jnp.float32), counts, rates, step=first_step + t)
        history.append(np.asarray(rates))
    return np.asarray(history), state


def reference_exp3(losses, smoothing):
    """The paper's Algorithm 1 in float64, written out independently of `bandit`."""
    rates, reward, eps_prev = np.full(K, 1 / K), np.zeros(K), 1 / K
    out = []
    for t, loss in enumerate(losses, start=1):
        reward = smoothing * reward + (1 - smoothing) * loss / rates
        eps = min(1 / K, math.sqrt(math.log(K) / (K * t)))
        z = np.exp(eps_prev * reward - np.max(eps_prev * reward))
        rates = (1 - K * eps) * z / z.sum() + eps
        eps_prev = eps
        out.append(rates)
    return np.asarray(out)


def test_update_matches_the_papers_formulas_in_float64():
    rng = np.random.default_rng(0)
    losses = rng.uniform(1.0, 6.0, (300, K))
    ours, _ = run_bandit(lambda t: losses[t], 300)
    np.testing.assert_allclose(ours, reference_exp3(losses, 0.9), rtol=2e-5, atol=1e-6)
    assert np.abs(ours[-1] - 1 / K).max() > 0.01  # the rates really moved


def reference_authors(losses, present, smoothing, warmup):
    """The authors' released update (`SmoothedMeanWeightUpdater.group_update` with their
    `UpdateScheduler`), written out in float64 from their code: after `warmup` global
    steps, each present domain's reward is smoothed towards exp(loss), and the rates are
    proportional to the rewards above the floor ε of the global iteration."""
    weights, reward = np.full(K, 1 / K), np.zeros(K)
    out = []
    for iteration, (loss, here) in enumerate(zip(losses, present), start=1):
        if iteration > warmup:
            eps = min(1 / K, math.sqrt(math.log(K) / (K * iteration)))
            for i in range(K):
                if here[i]:
                    reward[i] = smoothing * reward[i] + (1 - smoothing) * math.exp(loss[i])
            weights = (1 - K * eps) * reward / reward.sum() + eps
            weights = weights / weights.sum()
        out.append(weights)
    return np.asarray(out)


def test_the_authors_variant_matches_their_code_in_float64():
    rng = np.random.default_rng(1)
    warmup, steps = 20, 300
    losses = rng.uniform(1.0, 6.0, (steps, K))
    present = rng.random((steps, K)) > 0.2  # some domains absent from some batches
    present[warmup] = True  # every reward starts at the first update
    expected = reference_authors(losses, present, 0.5, warmup)
    ours, _ = run_bandit(lambda t: losses[warmup + t], steps - warmup, counts_fn=lambda t: present[warmup + t],
                         smoothing=0.5, variant="authors", first_step=warmup)
    np.testing.assert_allclose(ours, expected[warmup:], rtol=2e-5, atol=1e-6)
    # Unlike the paper's importance-weighted softmax, the rates follow the rewards' ratio.
    paper, _ = run_bandit(lambda t: losses[warmup + t], steps - warmup, counts_fn=lambda t: present[warmup + t],
                          smoothing=0.5, first_step=warmup)
    assert np.abs(paper[-1] - ours[-1]).max() > 1e-3


def test_domains_of_equal_loss_keep_equal_rates():
    rates, _ = run_bandit(lambda t: np.full(K, 2.5 + np.sin(t)), 500)
    np.testing.assert_allclose(rates, 1 / K, atol=1e-6)


def test_a_domain_whose_loss_stays_higher_gains_rate():
    rates, _ = run_bandit(lambda t: [3.0, 2.0, 2.0, 2.0], 1000)
    # The reward is importance-weighted (L/π), so the rates settle where the arms'
    # L_i/π_i balance through the softmax: above 1/K for the harder domain, not at 1.
    assert rates[-1][0] > 1 / K + 0.01 and rates[-1][0] == rates[-1].max()
    assert (np.diff(rates[100:, 0]) > -1e-3).all()  # and it does not fall back
    np.testing.assert_allclose(rates[-1][1:], rates[-1][1], rtol=1e-5)  # the rest stay equal
    # The first updates explore uniformly (ε_t = 1/K while √(ln K/(K·t)) ≥ 1/K).
    np.testing.assert_allclose(rates[0], 1 / K, atol=1e-6)


def test_the_exploration_floor_holds():
    rates, state = run_bandit(lambda t: [1e4, 0.0, 0.0, 0.0], 2000)  # one arm all the reward
    floors = np.asarray([bandit.exploration(t, K) for t in range(1, 2001)])
    assert (rates >= floors[:, None] * (1 - 1e-5)).all()
    assert rates[-1][1:].min() == pytest.approx(float(floors[-1]), rel=1e-4)  # starved arms sit on it
    np.testing.assert_allclose(rates.sum(axis=1), 1.0, atol=1e-5)


def test_an_absent_domain_keeps_its_reward():
    _, state = run_bandit(lambda t: [2.0, 2.0, 2.0, 2.0], 50, counts_fn=lambda t: [1, 1, 1, 1 if t < 10 else 0])
    reward = np.asarray(state.reward)
    after_ten, _ = run_bandit(lambda t: [2.0, 2.0, 2.0, 2.0], 10)
    assert reward[3] != reward[0]
    _, ten = run_bandit(lambda t: [2.0] * 4, 10)
    assert reward[3] == pytest.approx(float(np.asarray(ten.reward)[3]), rel=1e-4)  # frozen since step 10


@pytest.fixture(scope="module")
def odm_state():
    mesh = sharding.make_mesh(sharding.MeshConfig(data=-1))
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=1), 100)
    state, _, _ = train_setup.init_state(
        TINY, tx, np.full(K, 1 / K), jax.random.PRNGKey(0), mesh, sharding.DEFAULT_RULES, OnlineDataMixing()
    )
    tokens = np.random.default_rng(0).integers(3, 259, (8, 33)).astype(np.int32)
    batch = {
        "decoder_input_tokens": jnp.asarray(tokens[:, :-1]),
        "decoder_target_tokens": jnp.asarray(tokens[:, 1:]),
        "decoder_loss_weights": jnp.ones((8, 32), jnp.float32),
        "decoder_positions": jnp.tile(jnp.arange(32, dtype=jnp.int32), (8, 1)),
        "decoder_segment_ids": jnp.ones((8, 32), jnp.int32),
        "domain_ids": jnp.asarray(np.repeat(np.arange(K), 2)[:, None] * np.ones((1, 32), np.int32), jnp.int32),
    }
    return dict(mesh=mesh, tx=tx, state=state, batch=batch)


def odm_step(env, state, batch, **kw):
    from doremi_jax.models import Transformer

    fn = jax.jit(functools.partial(odm_steps.odm_step, model=Transformer(TINY), tx=env["tx"], num_domains=K, **kw))
    with sharding.activate(env["mesh"], sharding.DEFAULT_RULES):
        return fn(jax.tree.map(lambda x: x.copy(), state), batch)


def test_odm_step_learns_rates_skips_bad_steps_and_waits_out_warmup(odm_state):
    state, batch = odm_state["state"], odm_state["batch"]
    after, m = odm_step(odm_state, state, batch)
    assert int(after.method_state.count) == 1 and bool(m["step_ok"])
    assert np.asarray(after.method_state.reward).min() > 0  # every domain was in the batch
    np.testing.assert_allclose(np.asarray(m["domain_weights"]), np.asarray(after.domain_weights))
    held, _ = odm_step(odm_state, state, batch, warmup_steps=5)
    assert int(held.method_state.count) == 0 and int(held.step) == 1
    np.testing.assert_array_equal(np.asarray(held.domain_weights), np.asarray(state.domain_weights))
    bad = dict(batch, decoder_loss_weights=batch["decoder_loss_weights"].at[0, 0].set(jnp.nan))
    skipped, m = odm_step(odm_state, state, bad)
    assert not bool(m["step_ok"]) and int(skipped.method_state.count) == 0
    np.testing.assert_array_equal(np.asarray(skipped.method_state.reward), np.asarray(state.method_state.reward))


@pytest.mark.slow
def test_odm_trains_from_its_gin_file_on_a_written_corpus(tmp_path):
    data = write_three_domain_corpus(str(tmp_path / "corpus"))
    workdir = str(tmp_path / "odm")
    args = ["--gin_file=gin/runs/odm.gin", "--gin_file=gin/models/tiny.gin", f"--gin.DATA_DIR='{data}'",
            "--gin.TRAIN_STEPS=120", "--gin.BATCH_SIZE=16", "--gin.SEQUENCE_LENGTH=64", "--gin.WARMUP_STEPS=10",
            "--gin.TrainConfig.eval_tokens_per_domain=1024", "--gin.TrainConfig.tensorboard=False",
            f"--workdir={workdir}"]
    done = run_entry("train", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "odm run on corpus" in done.stdout
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    domains = ["easy", "learnable", "noise"]
    trajectory = np.asarray([[r[f"domain_weights/{d}"] for d in domains] for r in rows if "loss" in r])
    assert trajectory.shape == (120, 3)
    np.testing.assert_allclose(trajectory.sum(axis=1), 1.0, atol=1e-5)
    mean = json.load(open(os.path.join(workdir, "domain_weights.json")))
    np.testing.assert_allclose([mean[d] for d in domains], trajectory.mean(axis=0), atol=1e-5)
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["average_domain_weights"] == mean
    # Its reward is the loss itself: the pure-noise domain, which no model can learn,
    # ends with the highest rate and the easy one with the lowest (unlike DoReMi's excess loss).
    final = trajectory[-1]
    assert final[2] == final.max() and final[0] == final.min(), final
    assert_mixture_gin(workdir)


@pytest.mark.slow
def test_the_readme_odm_command_runs_and_resumes(tmp_path):
    readme = open(os.path.join(REPO, "README.md")).read()
    command = next(line for line in readme.splitlines() if "gin/runs/odm.gin" in line and "python -m" in line)
    args = shlex.split(command.strip().strip("`"))[3:]  # after `python -m doremi_jax.train`
    workdir = str(tmp_path / "o")
    args = [a if not a.startswith("--workdir=") else f"--workdir={workdir}" for a in args]
    shrink = ["--gin.BATCH_SIZE=8", "--gin.SEQUENCE_LENGTH=64", "--gin.TrainConfig.eval_tokens_per_domain=512"]
    done = run_entry("train", *args, *shrink)
    assert done.returncode == 0, done.stderr[-3000:]
    first = json.load(open(os.path.join(workdir, "summary.json")))
    assert first["step"] == 20 and set(first["average_domain_weights"]) == {"code", "noise", "prose", "repetitive"}
    # More steps resume the bandit where it stopped (its state is in the checkpoint).
    more = run_entry("train", *args, *shrink, "--gin.TRAIN_STEPS=24")
    assert more.returncode == 0 and "resuming from step 20" in more.stdout, more.stderr[-3000:]
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 25))
    # Another update rule's rewards are on another scale: a resume may not switch to it.
    switched = run_entry("train", *args, *shrink, "--gin.TRAIN_STEPS=28", "--gin.OnlineDataMixing.variant='authors'")
    assert switched.returncode == 1, switched.stderr[-2000:]
    one_line_error(switched.stderr, "variant")
    assert json.load(open(os.path.join(workdir, "summary.json")))["step"] == 24

    # The authors' update from the command line, on a corpus written here: rates still
    # during the warmup, then (1 − K·ε_t)·R̂/ΣR̂ + ε_t with t the global step.
    data = write_three_domain_corpus(str(tmp_path / "corpus"))
    authors = str(tmp_path / "authors")
    args = [a if not a.startswith("--workdir=") else f"--workdir={authors}" for a in args]
    done = run_entry("train", *args, *shrink, f"--gin.DATA_DIR='{data}'", "--gin.OnlineDataMixing.variant='authors'",
                     "--gin.OnlineDataMixing.warmup_steps=5")
    assert done.returncode == 0, done.stderr[-3000:]
    domains = ["easy", "learnable", "noise"]
    rows = [json.loads(line) for line in open(os.path.join(authors, "metrics.jsonl"))]
    rows = [r for r in rows if "loss" in r]
    rates = np.asarray([[r[f"domain_weights/{d}"] for d in domains] for r in rows])
    np.testing.assert_allclose(rates[:5], 1 / 3, atol=1e-6)  # MIXTURE_WEIGHTS = 'uniform'
    for r, pi in zip(rows[5:], rates[5:]):
        reward = np.asarray([r[f"estimated_reward/{d}"] for d in domains])
        eps = min(1 / 3, math.sqrt(math.log(3) / (3 * r["step"])))
        np.testing.assert_allclose(pi, (1 - 3 * eps) * reward / reward.sum() + eps, rtol=1e-4)


def test_bad_odm_settings_are_one_line_and_write_nothing(tmp_path, capsys):
    workdir = tmp_path / "bad"
    code, err = train(["--gin_file=gin/runs/odm.gin", "--gin_file=gin/models/tiny.gin",
                       "--gin.OnlineDataMixing.smoothing=1.5", f"--workdir={workdir}"], capsys)
    assert code == 1
    one_line_error(err, "OnlineDataMixing.smoothing=1.5: expected 0 <= smoothing < 1")
    assert not (workdir / "run.json").exists() and not (workdir / "checkpoints").exists()
    code, err = train(["--gin_file=gin/runs/odm.gin", "--gin_file=gin/models/tiny.gin",
                       "--gin.OnlineDataMixing.variant='code'", f"--workdir={workdir}"], capsys)
    assert code == 1
    one_line_error(err, "OnlineDataMixing.variant='code': expected one of ['paper', 'authors']")
    assert not (workdir / "run.json").exists() and not (workdir / "checkpoints").exists()
