"""The Beam preprocessing (DirectRunner, two worker processes) on a small jsonl corpus
with a domain field, then the trainer on its shards; reruns, resumption, bad records."""

import json
import os

import numpy as np
import pytest

from doremi_jax.data import corpus as corpus_lib, preprocess, shards, streams, vocab as vocab_lib
from doremi_jax.data.sampler import MixtureSampler

from test_command_line import run_entry

pytestmark = pytest.mark.slow  # subprocess runs

DOMAINS = {"news": "the market rose today as", "code": "def f(x): return x +", "poems": "o rose thou art sick"}
BEAM = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def write_inputs(folder, files=2, docs=60):
    os.makedirs(folder, exist_ok=True)
    expected = {}
    for f in range(files):
        lines = []
        for i in range(docs):
            domain = list(DOMAINS)[(i + f) % 3]
            text = f"{DOMAINS[domain]} {f}-{i} " * (3 + i % 5)
            lines.append(json.dumps({"text": text, "meta": {"source": domain}}))
            expected.setdefault(domain, []).append(text)
        with open(os.path.join(folder, f"part-{f}.jsonl"), "w") as out:
            out.write("\n".join(lines) + "\n")
    return expected


def preprocess_cmd(inputs, out, *extra):
    return run_entry("data.preprocess", f"--input={inputs}", f"--output_dir={out}", "--domain_field=meta/source",
                     "--validation_fraction=0.2", *BEAM, *extra)


def shard_times(out):
    return {os.path.join(r, n): os.path.getmtime(os.path.join(r, n))
            for r, _, names in os.walk(out) for n in names if n.endswith(".array_record")}


def test_beam_shards_train_a_model_and_reruns_are_idempotent(tmp_path):
    inputs = str(tmp_path / "in")
    expected = write_inputs(inputs)
    out = str(tmp_path / "out")
    done = preprocess_cmd(f"{inputs}/*.jsonl", out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 input file(s) processed, 0 already done" in done.stdout
    # Quiet: a line per finished input, the table (domain x split) and the summary line.
    assert done.stdout.count("done: ") == 2 and len(done.stdout.splitlines()) == 2 + 3 * 2 + 1, done.stdout
    assert done.stderr == "", done.stderr[-3000:]
    index = json.load(open(os.path.join(out, "index.json")))
    assert set(index["domains"]) == set(DOMAINS) and index["vocabulary"] == "byte"

    # Every document once, in its split (held out by a hash of its text), in input order.
    vocab = vocab_lib.make_vocabulary("byte")
    corpus = corpus_lib.load_corpus(out, vocab, cache_dir=str(tmp_path / "cache"))
    for d, texts in expected.items():
        for split in ("train", "validation"):
            mine = [t for t in texts if preprocess.split_of(t, 0.2) == split]
            assert mine, (d, split)
            stream = corpus.streams[split][corpus.domains.index(d)]
            want = np.concatenate([np.r_[vocab.encode(t), vocab.eos_id] for t in mine]).astype(np.int32)
            np.testing.assert_array_equal(np.asarray(stream.tokens), want)
            t = index["domains"][d][split]
            assert t["documents"] == len(mine) and t["tokens"] == want.size
            assert t["bytes"] == sum(len(x.encode()) for x in mine)

    # Read by window from the shards (never whole, never cached), the sampler's batches
    # equal, bit for bit, those of the same documents held in memory.
    assert isinstance(corpus.streams["train"][0].tokens, shards.ShardTokens)
    assert not os.path.exists(str(tmp_path / "cache" / "tokens"))
    in_memory = [streams.join_documents([vocab.encode(t) for t in expected[d] if preprocess.split_of(t, 0.2) == "train"],
                                        vocab.eos_id) for d in corpus.domains]
    for packing in (True, False):
        lazy = MixtureSampler(corpus.streams["train"], 48, seed=3, packing=packing)
        whole = MixtureSampler(in_memory, 48, seed=3, packing=packing)
        for step in range(5):
            a, b = lazy.batch(step, range(16), np.full(3, 1 / 3)), whole.batch(step, range(16), np.full(3, 1 / 3))
            for name in a:
                np.testing.assert_array_equal(a[name], b[name])

    # A rerun does nothing; a new input file is the only one processed.
    before = shard_times(out)
    again = preprocess_cmd(f"{inputs}/*.jsonl", out)
    assert again.returncode == 0 and "0 input file(s) processed, 2 already done" in again.stdout, again.stderr[-2000:]
    assert shard_times(out) == before and json.load(open(os.path.join(out, "index.json"))) == index
    write_inputs(str(tmp_path / "more"), files=3)
    os.replace(str(tmp_path / "more" / "part-2.jsonl"), os.path.join(inputs, "part-2.jsonl"))
    third = preprocess_cmd(f"{inputs}/*.jsonl", out)
    assert third.returncode == 0 and "1 input file(s) processed, 2 already done" in third.stdout
    assert all(shard_times(out)[p] == t for p, t in before.items())
    grown = json.load(open(os.path.join(out, "index.json")))
    assert grown["domains"]["news"]["train"]["documents"] > index["domains"]["news"]["train"]["documents"]

    # seqio Tasks over the same shards (T5X projects): natural rates from the index, the
    # documents as the shards hold them.
    import seqio

    from doremi_jax.data import tasks

    tasks.register_folder_corpus("beamtest", out)
    mixture = seqio.get_mixture_or_task("beamtest_natural")
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    assert rates == {tasks.task_name("beamtest", d): float(t["train"]["tokens"]) for d, t in grown["domains"].items()}
    first = next(iter(seqio.get_mixture_or_task("beamtest_news").get_dataset(
        {"targets": 4096}, split="validation", shuffle=False, use_cached=False).as_numpy_iterator()))
    news_validation = corpus.streams["validation"][corpus.domains.index("news")]
    np.testing.assert_array_equal(first["targets"], np.asarray(news_validation.tokens[0:news_validation.doc_starts[1]]))

    # The trainer on the shards.
    workdir = str(tmp_path / "run")
    trained = run_entry("train", "--gin_file=gin/runs/reference.gin", "--gin_file=gin/models/tiny.gin",
                        f"--gin.DATA_DIR='{out}'", "--gin.TRAIN_STEPS=3", "--gin.BATCH_SIZE=8", "--gin.SEQUENCE_LENGTH=32",
                        "--gin.TrainConfig.eval_tokens_per_domain=256", "--gin.TrainConfig.tensorboard=False",
                        f"--workdir={workdir}")
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["domains"] == sorted(DOMAINS) and summary["step"] == 3


def test_a_malformed_record_names_its_file_and_line_or_is_skipped_and_counted(tmp_path):
    inputs = str(tmp_path / "in")
    write_inputs(inputs, files=1, docs=12)
    bad = os.path.join(inputs, "part-0.jsonl")
    lines = open(bad).read().splitlines()
    lines[6] = '{"text": "cut short'
    open(bad, "w").write("\n".join(lines) + "\n")
    out = str(tmp_path / "out")
    failed = preprocess_cmd(f"{inputs}/*.jsonl", out)
    assert failed.returncode == 1
    # One line: not Beam's traceback of the worker's error before it.
    assert failed.stderr.count("\n") == 1, failed.stderr[-2000:]
    assert failed.stderr.startswith(f"error: {bad}:7: not a JSON record"), failed.stderr[-2000:]
    assert not os.path.exists(os.path.join(out, "index.json"))
    skipped = preprocess_cmd(f"{inputs}/*.jsonl", out, "--on_error=skip")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    assert "1 malformed record(s) skipped" in skipped.stdout
    index = json.load(open(os.path.join(out, "index.json")))
    assert sum(s["documents"] for s in index["shards"]) == 11


def test_a_kill_while_writing_a_shard_then_a_rerun_gives_the_same_shards(tmp_path):
    """SIGKILL inside the Beam job (DOREMI_FAULT, in-process runner), after the first
    shard was moved into place and while the second is written: the rerun's shards and
    index are those of an uninterrupted run, byte for byte."""
    inputs = str(tmp_path / "in")
    write_inputs(inputs, files=1, docs=30)
    args = [f"--input={inputs}/*.jsonl", "--domain_field=meta/source", "--validation_fraction=0.2"]
    clean, killed = str(tmp_path / "clean"), str(tmp_path / "killed")
    assert run_entry("data.preprocess", *args, f"--output_dir={clean}").returncode == 0
    cut = run_entry("data.preprocess", *args, f"--output_dir={killed}", env={"DOREMI_FAULT": "shard_write@2"})
    assert cut.returncode == -9, cut.stderr[-2000:]
    assert not os.path.exists(os.path.join(killed, "index.json"))
    again = run_entry("data.preprocess", *args, f"--output_dir={killed}")
    assert again.returncode == 0 and "1 input file(s) processed" in again.stdout, again.stderr[-2000:]

    def files(root):
        return {os.path.relpath(os.path.join(r, n), root): open(os.path.join(r, n), "rb").read()
                for r, _, names in os.walk(root) for n in names if not r.endswith(".done")}

    assert files(killed) == files(clean)


def test_zstd_inputs_through_the_pile_entry(tmp_path):
    """The README's `python -m doremi_jax.data.pile` (the same Beam pipeline) on .jsonl.zst."""
    import zstandard

    inputs = str(tmp_path / "in")
    expected = write_inputs(inputs, files=1, docs=30)
    raw = open(os.path.join(inputs, "part-0.jsonl"), "rb").read()
    with open(os.path.join(inputs, "part-0.jsonl.zst"), "wb") as f:
        f.write(zstandard.ZstdCompressor().compress(raw))
    os.remove(os.path.join(inputs, "part-0.jsonl"))
    out = str(tmp_path / "out")
    done = run_entry("data.pile", f"--input={inputs}/*.jsonl.zst", f"--output_dir={out}",
                     "--domain_field=meta/source", "--validation_fraction=0.2", "--test_fraction=0.3", *BEAM)
    assert done.returncode == 0, done.stderr[-2000:]
    index = json.load(open(os.path.join(out, "index.json")))
    for d, texts in expected.items():
        counted = sum(t["documents"] for t in index["domains"][d].values())
        assert counted == len(texts)
        # The test fraction held out by the hash, beside validation.
        for split in ("train", "validation", "test"):
            mine = [t for t in texts if preprocess.split_of(t, 0.2, 0.3) == split]
            assert index["domains"][d].get(split, {}).get("documents", 0) == len(mine), (d, split)


def test_test_fraction_is_held_out_by_the_same_hash_and_leaves_validation_as_it_was():
    texts = [f"document number {i}" for i in range(2000)]
    before = [preprocess.split_of(t, 0.1) for t in texts]
    after = [preprocess.split_of(t, 0.1, 0.2) for t in texts]
    assert [a for a, b in zip(after, before) if b == "validation"] == ["validation"] * before.count("validation")
    assert set(a for a, b in zip(after, before) if b == "train") == {"train", "test"}
    assert 0.15 < after.count("test") / len(texts) < 0.25 and 0.07 < after.count("validation") / len(texts) < 0.13
