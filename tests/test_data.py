"""Corpus reading, vocabularies, weights files and the mixture sampler (no tensorflow)."""

import json
import os

import numpy as np
import pytest

from doremi_jax.data import corpus as corpus_lib
from doremi_jax.data import inputs, vocab as vocab_lib, weights as weights_lib
from doremi_jax.data.sampler import MixtureSampler, eval_batches

from helpers import write_corpus

BYTES = vocab_lib.ByteVocabulary()


def stream(docs):
    pieces, starts, pos = [], [], 0
    for d in docs:
        ids = np.asarray(d, np.int32)
        starts.append(pos)
        pieces += [ids, [1]]
        pos += len(ids) + 1
    return corpus_lib.TokenStream(np.concatenate(pieces).astype(np.int32), np.asarray(starts), pos)


def test_packing_segments_positions_and_mask():
    s = stream([[10, 11, 12], [20, 21], [30, 31, 32, 33]])
    sampler = MixtureSampler([s], sequence_length=8, seed=0)
    for step in range(20):
        b = sampler.batch(step, [0], np.ones(1))
        inp, tgt = b["decoder_input_tokens"][0], b["decoder_target_tokens"][0]
        seg, pos, mask = b["decoder_segment_ids"][0], b["decoder_positions"][0], b["decoder_loss_weights"][0]
        for i in range(8):
            if seg[i] == 0:
                assert mask[i] == 0
                continue
            # Positions restart with each document; a target after EOS is not predicted.
            if i > 0 and seg[i] == seg[i - 1]:
                assert pos[i] == pos[i - 1] + 1
            elif i > 0:
                assert pos[i] == 0
            if inp[i] == 1:
                assert mask[i] == 0  # EOS ends a document: the next one is not its target
            if i + 1 < 8 and seg[i + 1] == seg[i] and seg[i]:
                assert tgt[i] == inp[i + 1]
        assert np.all(b["domain_ids"] == 0)
        assert set(np.unique(seg)) <= set(range(0, 5))


def test_packing_off_one_document_per_row_padded():
    s = stream([[10, 11, 12], [20, 21]])
    sampler = MixtureSampler([s], sequence_length=8, seed=0, packing=False)
    b = sampler.batch(0, range(6), np.ones(1))
    for row in range(6):
        seg = b["decoder_segment_ids"][row]
        n = int((seg > 0).sum())
        assert set(seg[:n]) == {1} and np.all(seg[n:] == 0)
        assert b["decoder_input_tokens"][row][0] in (10, 20)
        assert np.all(b["decoder_loss_weights"][row][n:] == 0)


def test_batches_are_a_function_of_seed_step_row_and_weights():
    a = stream([list(range(3, 200))] * 5)
    b = stream([list(range(100, 250))] * 5)
    s1 = MixtureSampler([a, b], 16, seed=3)
    s2 = MixtureSampler([a, b], 16, seed=3)
    w = np.asarray([0.3, 0.7])
    full = s1.batch(9, range(8), w)
    # Any split of the rows over hosts gives the same global batch.
    halves = [s2.batch(9, range(0, 4), w), s2.batch(9, range(4, 8), w)]
    for k in full:
        np.testing.assert_array_equal(full[k], np.concatenate([h[k] for h in halves]))
    assert not np.array_equal(full["decoder_input_tokens"], s1.batch(10, range(8), w)["decoder_input_tokens"])
    assert not np.array_equal(full["decoder_input_tokens"], MixtureSampler([a, b], 16, seed=4).batch(9, range(8), w)["decoder_input_tokens"])


def test_weights_set_the_domain_shares():
    a = stream([list(range(3, 200))] * 5)
    sampler = MixtureSampler([a, a, a], 8, seed=0)
    w = np.asarray([0.6, 0.3, 0.1])
    ids = np.concatenate([sampler.batch(t, range(64), w)["domain_ids"][:, 0] for t in range(50)])
    shares = np.bincount(ids, minlength=3) / ids.size
    np.testing.assert_allclose(shares, w, atol=0.03)
    # New weights take effect at the very next step (a live mixture).
    ids = np.concatenate([sampler.batch(t, range(64), np.asarray([0, 0, 1.0]))["domain_ids"][:, 0] for t in range(3)])
    assert np.all(ids == 2)


def test_eval_batches_cover_each_token_once():
    s = stream([list(range(3, 40))] * 3)
    batches = list(eval_batches([s, s], 16, 4, max_tokens=10_000))
    for d in range(2):
        counted = sum(b["decoder_loss_weights"][b["domain_ids"] == d].sum() for b in batches)
        # Every target except those following an EOS is scored once.
        assert counted == s.num_tokens - 1 - 2


def test_byte_vocabulary_matches_seqio():
    import seqio
    ours, theirs = BYTES, seqio.ByteVocabulary()
    text = "DoReMi: données, 多语言 🎵"
    assert ours.vocab_size == theirs.vocab_size
    assert list(ours.encode(text)) == list(theirs.encode(text))
    assert ours.decode(ours.encode(text)) == text


def test_sentencepiece_train_and_load(tmp_path):
    texts = [f"the quick brown fox number {i} jumps over the lazy dog" for i in range(300)]
    path = vocab_lib.train_sentencepiece(texts, 320, str(tmp_path / "spm"))  # 256 byte pieces
    v = vocab_lib.make_vocabulary("sentencepiece", path)
    assert v.vocab_size == 320 and v.eos_id == 1
    ids = v.encode("the lazy dog")
    assert ids.min() > 2 and v.decode(ids) == "the lazy dog"


def test_corpus_folder_and_cache(tmp_path):
    root = write_corpus(str(tmp_path / "c"), {"a": ["alpha one", "alpha two", "alpha three"], "b": ["beta"] * 4})
    (tmp_path / "c" / "b" / "train2.txt").write_text("a plain text file")
    c = corpus_lib.load_corpus(root, BYTES, cache_dir=str(tmp_path / "cache"))
    assert c.domains == ("a", "b")
    counts = c.token_counts()
    assert counts[0] == len("alpha two") + len("alpha three") + 2
    assert counts[1] == 3 * (len("beta") + 1) + len("a plain text file") + 1
    again = corpus_lib.load_corpus(root, BYTES, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(again.streams["train"][1].tokens, c.streams["train"][1].tokens)
    w = inputs.named_weights("natural", c)
    np.testing.assert_allclose(w, counts / counts.sum())


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda r: None, "does not exist"),
        (lambda r: os.makedirs(r), "holds no domain folders"),
        (lambda r: (os.makedirs(f"{r}/a"), open(f"{r}/a/train.jsonl", "w").write('{"text": "x"}\n')), "no validation"),
        (lambda r: (os.makedirs(f"{r}/a"), open(f"{r}/a/train.jsonl", "w").write("\n"), open(f"{r}/a/validation.jsonl", "w").write('{"text": "x"}\n')), "is empty"),
        (lambda r: (os.makedirs(f"{r}/a"), open(f"{r}/a/train.jsonl", "w").write('{"text": "x"}\n{"body": "y"}\n')), r"train.jsonl:2: no 'text' field"),
        (lambda r: (os.makedirs(f"{r}/a"), open(f"{r}/a/train.jsonl", "w").write('{"text": "x"}\n{"text": "y"\n')), r"train.jsonl:2: corrupted JSON"),
        (lambda r: (os.makedirs(f"{r}/a"), open(f"{r}/a/train.jsonl", "wb").write(b'{"text": "\xff\xfe"}\n')), r"train.jsonl:1: not UTF-8"),
    ],
)
def test_bad_corpus_is_one_clear_error(tmp_path, setup, message):
    root = str(tmp_path / "data")
    setup(root)
    with pytest.raises(corpus_lib.CorpusError, match=message):
        corpus_lib.load_corpus(root, BYTES, cache_dir=str(tmp_path / "cache"))


def test_undecodable_text_can_be_skipped(tmp_path):
    root = str(tmp_path / "data")
    os.makedirs(f"{root}/a")
    open(f"{root}/a/train.jsonl", "wb").write(b'{"text": "ok \xff"}\n')
    open(f"{root}/a/validation.jsonl", "w").write('{"text": "fine"}\n')
    c = corpus_lib.load_corpus(root, BYTES, on_decode_error="skip", cache_dir=str(tmp_path / "cache"))
    assert c.token_counts()[0] > 0


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"a": 1, "b": 1, "z": 1}, r"unknown domain\(s\) \['z'\]"),
        ({"a": 1}, r"no weight for domain\(s\) \['b'\]"),
        ({"a": -1, "b": 2}, "'a' is negative"),
        ({"a": float("nan"), "b": 1}, "'a' is nan"),
        ({"a": 0, "b": 0}, "all weights are zero"),
        ({"a": "x", "b": 1}, "not a number"),
    ],
)
def test_bad_weights_file(tmp_path, weights, message):
    path = tmp_path / "w.json"
    path.write_text(json.dumps(weights))
    with pytest.raises(ValueError, match=message):
        weights_lib.read_weights(str(path), ["a", "b"])


def test_weights_round_trip_in_reference_format(tmp_path):
    path = str(tmp_path / "w.json")
    weights_lib.write_weights(path, ["a", "b"], [0.25, 0.75])
    assert json.load(open(path)) == {"a": 0.25, "b": 0.75}
    np.testing.assert_allclose(weights_lib.read_weights(path, ["b", "a"]), [0.75, 0.25])


def test_reference_config_format_and_pile_set_names(tmp_path):
    """A config of the reference implementation (nested, Pile spellings) reads against
    the folder names our Pile splitter writes."""
    path = tmp_path / "ref.json"
    path.write_text(json.dumps({
        "train_domain_weights": {"PubMed Central": 3, "Wikipedia (en)": 1},
        "eval_domain_weights": {"PubMed Central": 1, "Wikipedia (en)": 1},
    }))
    np.testing.assert_allclose(
        weights_lib.read_weights(str(path), ["PubMed_Central", "Wikipedia_(en)"]), [0.75, 0.25]
    )
    path.write_text(json.dumps({"PubMed Central": 1, "PubMed_Central": 1}))
    with pytest.raises(ValueError, match="'PubMed_Central' is given twice"):
        weights_lib.read_weights(str(path), ["PubMed_Central"])


@pytest.mark.parametrize("name, pile_cc", [("baseline", 0.1121), ("doremi_280m", 0.6057)])
def test_shipped_pile_weights(tmp_path, monkeypatch, name, pile_cc):
    """The paper's weight files cover the 22 Pile domains as the splitter names them, and
    resolve from any working directory."""
    from doremi_jax.data import pile

    domains = sorted(pile.folder_name(d) for d in PILE_SET_NAMES)
    monkeypatch.chdir(tmp_path)
    corpus = corpus_lib.Corpus("pile", tuple(domains), {})
    weights = inputs.named_weights(f"weights/pile/{name}.json", corpus)
    assert len(weights) == 22 and weights.sum() == pytest.approx(1.0)
    assert weights[domains.index("Pile-CC")] == pytest.approx(pile_cc, abs=2e-4)


PILE_SET_NAMES = [
    "Pile-CC", "PubMed Central", "Books3", "OpenWebText2", "ArXiv", "Github", "FreeLaw", "StackExchange",
    "USPTO Backgrounds", "PubMed Abstracts", "Gutenberg (PG-19)", "OpenSubtitles", "Wikipedia (en)",
    "DM Mathematics", "Ubuntu IRC", "BookCorpus2", "EuroParl", "HackerNews", "YoutubeSubtitles", "PhilPapers",
    "NIH ExPorter", "Enron Emails",
]


def test_pretokenized_domain(tmp_path):
    root = tmp_path / "data" / "tok"
    root.mkdir(parents=True)
    np.save(root / "train.tokens.npy", np.asarray([5, 6, 1, 7, 8, 9, 1], np.int32))
    np.save(root / "validation.tokens.npy", np.asarray([5, 1], np.int32))
    c = corpus_lib.load_corpus(str(tmp_path / "data"), BYTES, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(c.streams["train"][0].doc_starts, [0, 3])
    np.save(root / "train.tokens.npy", np.asarray([5, 600], np.int32))
    with pytest.raises(corpus_lib.CorpusError, match="outside the vocabulary"):
        corpus_lib.load_corpus(str(tmp_path / "data"), BYTES, cache_dir=str(tmp_path / "cache"))


def test_demo_corpus_is_deterministic_with_unequal_domains(demo_dir, tmp_path):
    from doremi_jax.data import demo

    again = demo.build_demo_corpus(str(tmp_path / "demo"))
    for d in demo.DOMAINS:
        for split in ("train", "validation"):
            a = open(os.path.join(demo_dir, d, f"{split}.jsonl"), "rb").read()
            b = open(os.path.join(again, d, f"{split}.jsonl"), "rb").read()
            assert a == b and len(a) > 1000
    c = corpus_lib.load_corpus(demo_dir, BYTES)
    shares = c.token_counts() / c.token_counts().sum()
    assert shares.max() > 3 * shares.min()


def test_pile_split_by_set_name(tmp_path):
    from doremi_jax.data import pile

    records = [("Pile-CC", "web page"), ("PubMed Central", "a paper"), ("Pile-CC", "another page"), ("Github", "code()")]
    src = tmp_path / "00.jsonl"
    src.write_text("".join(json.dumps({"text": t, "meta": {"pile_set_name": s}}) + "\n" for s, t in records))
    counts = pile.split_pile([str(src)], str(tmp_path / "out"), "train", shard_docs=1)
    assert counts["Pile-CC"] == {"documents": 2, "bytes": len("web page") + len("another page")}
    assert sorted(os.listdir(tmp_path / "out" / "Pile-CC")) == ["train-00000.jsonl", "train-00001.jsonl"]
    assert json.loads((tmp_path / "out" / "PubMed_Central" / "train-00000.jsonl").read_text())["text"] == "a paper"
    assert json.load(open(tmp_path / "out" / "train_counts.json"))["Github"]["documents"] == 1
    (tmp_path / "bad.jsonl").write_text('{"text": "no meta"}\n')
    with pytest.raises(SystemExit, match="bad.jsonl:1: not a record with 'text' and 'meta/pile_set_name'"):
        pile.split_pile([str(tmp_path / "bad.jsonl")], str(tmp_path / "out2"))


def test_jsonl_split_by_any_domain_field(tmp_path):
    from doremi_jax.data import pile

    src = tmp_path / "x.jsonl"
    src.write_text("".join(json.dumps({"body": f"doc {i}", "source": {"name": ["news", "forum"][i % 2]}}) + "\n"
                           for i in range(5)))
    counts = pile.split_pile([str(src)], str(tmp_path / "out"), "validation", domain_field="source/name",
                             text_field="body")
    assert {d: c["documents"] for d, c in counts.items()} == {"news": 3, "forum": 2}
    lines = (tmp_path / "out" / "forum" / "validation-00000.jsonl").read_text().splitlines()
    assert [json.loads(line)["text"] for line in lines] == ["doc 1", "doc 3"]


def test_epochs_and_capping():
    from doremi_jax.data import stats

    counts = [1000, 100, 10_000]
    np.testing.assert_allclose(stats.epochs_per_domain(counts, [0.5, 0.4, 0.1], 10_000), [5, 40, 0.1])
    capped = stats.cap_weights(counts, [0.5, 0.4, 0.1], 10_000, max_epochs=4)
    np.testing.assert_allclose(capped.sum(), 1.0)
    epochs = stats.epochs_per_domain(counts, capped, 10_000)
    assert np.all(epochs <= 4 + 1e-9)
    np.testing.assert_allclose(capped[:2], [0.4, 0.04])  # both held at their caps
    lines = stats.repetition_report(["a", "b", "c"], counts, [0.5, 0.4, 0.1], 10_000, 4)
    assert len(lines) == 2 and "'b' would be repeated 40.0 times" in lines[1]
    with pytest.raises(ValueError, match="repeats the whole corpus more than 4 times"):
        stats.cap_weights(counts, [1, 1, 1], 1e6, 4)


def test_a_test_split_is_all_or_nothing(tmp_path):
    """test is optional: loaded when every domain has one, absent when none has, and a
    test split in some domains only is a one-line error naming them."""
    from doremi_jax.data import corpus as corpus_lib, vocab as vocab_lib

    vocab = vocab_lib.make_vocabulary("byte", None)
    for d in ("a", "b"):
        os.makedirs(tmp_path / d)
        for split in ("train", "validation"):
            (tmp_path / d / f"{split}.jsonl").write_text(json.dumps({"text": f"{d} {split} text"}) + "\n")
    plain = corpus_lib.load_corpus(str(tmp_path), vocab, cache_dir=str(tmp_path / ".cache"))
    assert set(plain.streams) == {"train", "validation"} and plain.verdict_split == "validation"
    (tmp_path / "a" / "test.jsonl").write_text(json.dumps({"text": "a test text"}) + "\n")
    with pytest.raises(corpus_lib.CorpusError, match=r"\['a'\] have a test split and \['b'\] do not"):
        corpus_lib.load_corpus(str(tmp_path), vocab, cache_dir=str(tmp_path / ".cache"))
    (tmp_path / "b" / "test.txt").write_text("b test text")
    full = corpus_lib.load_corpus(str(tmp_path), vocab, cache_dir=str(tmp_path / ".cache"))
    assert full.verdict_split == "test"
    assert [s.num_tokens for s in full.streams["test"]] == [len("a test text") + 1, len("b test text") + 1]
