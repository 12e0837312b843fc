"""Batches built ahead in a thread are the batches built on demand, bit for bit: with
fixed rates, with live rates that move every step (the speculative rows repaired), and
from the command line (an ODM run with and without prefetch)."""

import json
import os

import numpy as np
import pytest

from doremi_jax.data.corpus import TokenStream
from doremi_jax.data.prefetch import Prefetcher
from doremi_jax.data.sampler import MixtureSampler

from helpers import write_three_domain_corpus
from test_command_line import one_line_error, run_entry, train


def streams(k=4, n=5000):
    rng = np.random.default_rng(0)
    out = []
    for d in range(k):
        tokens = rng.integers(3, 259, n).astype(np.int32)
        out.append(TokenStream(tokens, np.arange(0, n, 250, dtype=np.int64), n))
    return out


def drifting(steps, k=4):
    """Live rates as DoReMi's resample mode moves them: a small step each time."""
    rng = np.random.default_rng(1)
    logits = np.zeros(k)
    out = []
    for _ in range(steps):
        logits += rng.normal(0, 0.15, k)
        out.append(np.exp(logits) / np.exp(logits).sum())
    return out


@pytest.mark.parametrize("stratified", [0, 16], ids=["drawn", "stratified"])
@pytest.mark.parametrize("depth", [1, 3])
def test_prefetched_batches_equal_batches_built_on_demand(stratified, depth):
    sampler = MixtureSampler(streams(), 32, (7,), stratified_batch=stratified)
    rows = [2, 3, 5, 7, 11, 13]  # a host's share of a 16-row batch
    rates = drifting(40)
    with Prefetcher(sampler, rows, depth, last_step=40) as live:
        for step in range(40):
            got = live.get(step, rates[step])
            want = sampler.batch(step, rows, rates[step])
            for name in want:
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name} at step {step}")
    # The guesses (the previous step's rates) were wrong for some rows, not for most.
    assert 0 < live.rows_rebuilt < live.rows_built / 4, (live.rows_rebuilt, live.rows_built)
    fixed_rates = np.asarray([0.1, 0.2, 0.3, 0.4])
    with Prefetcher(sampler, rows, depth, last_step=40) as fixed:
        for step in range(40):
            got = fixed.get(step, fixed_rates)
            np.testing.assert_array_equal(got["decoder_input_tokens"],
                                          sampler.batch(step, rows, fixed_rates)["decoder_input_tokens"])
    assert fixed.rows_rebuilt == 0 and fixed.rows_built == 40 * len(rows)


def test_no_batch_is_built_past_the_last_step():
    sampler = MixtureSampler(streams(), 32, (0,))
    built = []
    original = sampler.batch

    def counting(step, *args, **kw):
        built.append(step)
        return original(step, *args, **kw)

    sampler.batch = counting
    with Prefetcher(sampler, range(4), 3, last_step=5) as prefetcher:
        for step in range(5):
            prefetcher.get(step, np.full(4, 0.25))
    assert sorted(built) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_a_live_rate_run_is_the_same_with_and_without_prefetch(tmp_path):
    """ODM's rates move every step, so its batches are built on a guess and repaired."""
    data = write_three_domain_corpus(str(tmp_path / "corpus"))
    runs = {}
    for depth in (0, 2):
        workdir = str(tmp_path / f"odm_{depth}")
        done = run_entry(
            "train", "--gin_file=gin/runs/odm.gin", "--gin_file=gin/models/tiny.gin", f"--gin.DATA_DIR='{data}'",
            "--gin.TRAIN_STEPS=30", "--gin.BATCH_SIZE=8", "--gin.SEQUENCE_LENGTH=32", "--gin.WARMUP_STEPS=5",
            "--gin.TrainConfig.eval_tokens_per_domain=256", "--gin.TrainConfig.tensorboard=False",
            f"--gin.TrainConfig.prefetch={depth}", f"--workdir={workdir}",
        )
        assert done.returncode == 0, done.stderr[-3000:]
        rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
        runs[depth] = ([{k: v for k, v in r.items() if "time" not in k} for r in rows],
                       json.load(open(os.path.join(workdir, "summary.json")))["prefetch"])
    assert runs[2][0] == runs[0][0]  # every step's loss, domain losses and rates
    assert runs[0][1]["rows_rebuilt"] == 0
    assert 0 < runs[2][1]["rows_rebuilt"] < runs[2][1]["rows_built"], runs[2][1]


def test_a_negative_prefetch_is_refused(tmp_path, capsys):
    workdir = tmp_path / "bad"
    code, err = train(["--gin_file=gin/runs/lm.gin", "--gin_file=gin/models/tiny.gin",
                       "--gin.TrainConfig.prefetch=-1", f"--workdir={workdir}"], capsys)
    assert code == 1
    one_line_error(err, "TrainConfig.prefetch=-1")
    assert not (workdir / "run.json").exists()
