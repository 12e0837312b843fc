"""The training input reads windows of memory-mapped token arrays, never whole arrays:
the same batches as in memory, and a training process whose memory does not grow with
the corpus."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from doremi_jax.data import corpus as corpus_lib, vocab as vocab_lib
from doremi_jax.data.sampler import MixtureSampler, eval_batches


def write_tokens(folder, n, seed, chunk=1 << 22):
    """`train.tokens.npy` and `validation.tokens.npy` of random byte ids with an EOS about
    every 500 tokens, written in chunks (the test never holds a big array)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for split, size in (("train", n), ("validation", 20_000)):
        out = np.lib.format.open_memmap(os.path.join(folder, f"{split}.tokens.npy"), "w+", np.int32, (size,))
        for start in range(0, size, chunk):
            part = rng.integers(3, 259, min(chunk, size - start)).astype(np.int32)
            part[rng.integers(0, len(part), len(part) // 500)] = 1
            out[start:start + len(part)] = part
        out.flush()
        del out


def in_memory(stream):
    """The stream as the in-memory path builds it: the whole array read, and the
    document starts from its EOS positions."""
    tokens = np.asarray(stream.tokens).copy()
    ends = np.flatnonzero(tokens == vocab_lib.EOS_ID) + 1
    return corpus_lib.TokenStream(tokens, np.r_[0, ends[ends < tokens.size]].astype(np.int64), stream.num_bytes)


def test_memory_mapped_batches_equal_the_in_memory_ones(tmp_path):
    for i, domain in enumerate(("a", "b")):
        write_tokens(str(tmp_path / "data" / domain), 50_000 + 7_000 * i, seed=i, chunk=9_999)
    corpus = corpus_lib.load_corpus(str(tmp_path / "data"), vocab_lib.ByteVocabulary(), cache_dir=str(tmp_path / "c"))
    mapped = corpus.streams["train"]
    assert all(isinstance(s.tokens, np.memmap) for s in mapped)
    memory = [in_memory(s) for s in mapped]
    for m, r in zip(mapped, memory):
        np.testing.assert_array_equal(m.doc_starts, r.doc_starts)
    weights = np.array([0.3, 0.7])
    for packing in (True, False):
        a, b = MixtureSampler(mapped, 64, 3, packing), MixtureSampler(memory, 64, 3, packing)
        for step in (0, 1, 17):
            x, y = a.batch(step, range(16), weights), b.batch(step, range(16), weights)
            for name in x:
                np.testing.assert_array_equal(x[name], y[name], err_msg=name)
    for x, y in zip(eval_batches(corpus.streams["validation"], 64, 8, 2048),
                    eval_batches([in_memory(s) for s in corpus.streams["validation"]], 64, 8, 2048)):
        for name in x:
            np.testing.assert_array_equal(x[name], y[name])
    # The index is cached: a second load reads no token data to build it.
    again = corpus_lib.load_corpus(str(tmp_path / "data"), vocab_lib.ByteVocabulary(), cache_dir=str(tmp_path / "c"))
    np.testing.assert_array_equal(again.streams["train"][1].doc_starts, memory[1].doc_starts)


def peak_rss(data_dir, workdir):
    """Peak resident memory (bytes) of a training process of 3 steps on `data_dir`.

    VmHWM, not getrusage's ru_maxrss: Linux carries a forked child's pre-exec high-water
    mark (the parent's, copied at fork) into ru_maxrss across exec, so a parent that once
    held a lot would mask the child's own peak."""
    code = (
        "import sys\n"
        "from doremi_jax import cli\n"
        "from doremi_jax.train import __main__ as entry\n"
        "cli.main(entry.run, sys.argv[1:])\n"
        "print('PEAK_RSS_KIB', open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "--gin_file=gin/runs/reference.gin", "--gin_file=gin/data/folder.gin",
         "--gin_file=gin/models/tiny.gin", f"--gin.DATA_DIR='{data_dir}'", "--gin.TRAIN_STEPS=3",
         "--gin.BATCH_SIZE=8", "--gin.SEQUENCE_LENGTH=64", "--gin.TrainConfig.eval_tokens_per_domain=512",
         "--gin.TrainConfig.tensorboard=False", f"--workdir={workdir}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (line,) = [l for l in out.stdout.splitlines() if l.startswith("PEAK_RSS_KIB")]
    return int(line.split()[1]) * 1024


def write_shards(folder, n, seed, doc=4000):
    """The Beam preprocessing's format (`preprocess.write_shard`): train and validation
    shards of random byte-id documents of `doc` tokens, written a document at a time."""
    from doremi_jax.data import preprocess

    rng = np.random.default_rng(seed)
    for split, size in (("train", n), ("validation", 20_000)):
        docs = (rng.integers(3, 259, doc).astype(np.int32) for _ in range(max(1, size // doc)))
        preprocess.write_shard(os.path.join(folder, f"{split}-00000.array_record"), docs)


@pytest.mark.slow
@pytest.mark.parametrize("layout,write,big_tokens", [
    ("token arrays", write_tokens, 64 << 20),  # per domain: 2 x 256 MiB of int32 ids
    ("shards", write_shards, 32 << 20),  # per domain: 2 x 128 MiB, read by window from shards
])
def test_training_memory_does_not_grow_with_the_corpus(tmp_path, layout, write, big_tokens):
    for domain, seed in (("a", 0), ("b", 1)):
        write(str(tmp_path / "small" / domain), 100_000, seed)
        write(str(tmp_path / "big" / domain), big_tokens, seed)
    corpus_bytes = 2 * big_tokens * 4
    small = peak_rss(tmp_path / "small", tmp_path / "w_small")
    big = peak_rss(tmp_path / "big", tmp_path / "w_big")
    print(f"peak RSS: {small / 2**20:.0f} MiB on a 0.8 MB corpus, {big / 2**20:.0f} MiB on a "
          f"{corpus_bytes / 2**20:.0f} MiB corpus of {layout}")
    # Reading whole arrays costs about 2.3x the corpus (1.2 GB for the token arrays);
    # windows cost nothing.
    assert big - small < corpus_bytes / 4
