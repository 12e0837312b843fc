"""seqio registration as a T5X project uses it: import, get_dataset, the feature converter."""

import json

import numpy as np
import pytest

import seqio  # noqa: E402  (a dependency: a broken install must fail, not skip)

from doremi_jax.data import tasks  # noqa: E402  (registers the demo corpus)

from helpers import write_corpus  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("seqio")
    data = write_corpus(str(root / "data"), {
        "aaa": ["a" * 50 + f" {i}" for i in range(40)],
        "bbb": ["b" * 30 + f" {i}" for i in range(40)],
        "ccc": ["c" * 20 + f" {i}" for i in range(40)],
    })
    weights = root / "w.json"
    weights.write_text(json.dumps({"aaa": 0.7, "bbb": 0.2, "ccc": 0.1}))
    names = tasks.register_folder_corpus("tiny3", data, weights={"doremi": str(weights)})
    return data, names


def test_names_and_rates(corpus):
    _, names = corpus
    assert names == ["tiny3_natural", "tiny3_uniform", "tiny3_doremi"]
    doremi = seqio.get_mixture_or_task("tiny3_doremi")
    rates = {t.name: doremi.get_rate(t) for t in doremi.tasks}
    assert rates == pytest.approx({"tiny3_aaa": 0.7, "tiny3_bbb": 0.2, "tiny3_ccc": 0.1})
    natural = seqio.get_mixture_or_task("tiny3_natural")
    counts = {t.name: natural.get_rate(t) for t in natural.tasks}
    # Train-split tokens: 34 documents of each domain (the first 6 are validation) + EOS.
    assert counts["tiny3_aaa"] == sum(len("a" * 50 + f" {i}") + 1 for i in range(6, 40))
    assert tasks.task_name("pile", "Gutenberg_(PG-19)") == "pile_Gutenberg__PG_19_"
    assert {"demo_natural", "demo_uniform", "demo_code", "demo_noise"} <= set(seqio.MixtureRegistry.names()) | set(seqio.TaskRegistry.names())


def test_packed_batches_carry_per_token_domain_ids(corpus):
    ds = seqio.get_dataset(
        "tiny3_doremi", {"targets": 64, "domain_ids": 64}, dataset_split="train", shuffle=True, seed=1,
        feature_converter=tasks.DomainLMFeatureConverter(pack=True),
    )
    letters = {0: ord("a") + 3, 1: ord("b") + 3, 2: ord("c") + 3}
    seen = []
    for ex in ds.take(60).as_numpy_iterator():
        for seg in set(ex["decoder_segment_ids"]) - {0}:
            sel = ex["decoder_segment_ids"] == seg
            ids = set(ex["domain_ids"][sel])
            assert len(ids) == 1  # one domain per document
            domain = ids.pop()
            assert ex["decoder_target_tokens"][sel][0] == letters[domain]
            seen.append(domain)
        assert np.all(ex["decoder_loss_weights"][ex["decoder_segment_ids"] == 0] == 0)
    shares = np.bincount(seen, minlength=3) / len(seen)
    assert shares[0] > shares[1] > shares[2]


def test_stock_decoder_converter_works_as_in_t5x(corpus):
    ds = seqio.get_dataset(
        "tiny3_uniform", {"targets": 32}, dataset_split="validation", shuffle=False,
        feature_converter=seqio.DecoderFeatureConverter(pack=False),
    )
    ex = next(ds.as_numpy_iterator())
    assert ex["decoder_target_tokens"].shape == (32,)
    assert set(ex) >= {"decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"}


def test_process_shards_partition_the_examples(corpus):
    """seqio.ShardInfo(process_index, process_count): each host reads its own part; the
    parts are disjoint and together the whole split."""
    task = seqio.get_mixture_or_task("tiny3_aaa")

    def texts(shard_info):
        ds = task.get_dataset(None, split="train", shuffle=False, shard_info=shard_info, try_in_mem_cache=False)
        return [tuple(ex["targets"].tolist()) for ex in ds.as_numpy_iterator()]

    whole = texts(None)
    parts = [texts(seqio.ShardInfo(index=i, num_shards=2)) for i in range(2)]
    assert len(whole) == 34 and all(parts)
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(whole)


@pytest.mark.parametrize("suffix", [".tfrecord", ".array_record"])
def test_pretokenized_shards_in_the_trainer_corpus_and_in_seqio(tmp_path, suffix):
    from doremi_jax.data import corpus as corpus_lib, records
    from doremi_jax.data.vocab import ByteVocabulary

    docs = {split: [[10 + i] * (3 + i) for i in range(n)] for split, n in (("train", 6), ("validation", 2))}
    for split, documents in docs.items():
        records.write_records(str(tmp_path / "data" / "tok" / f"{split}-00000{suffix}"), documents[:3])
        records.write_records(str(tmp_path / "data" / "tok" / f"{split}-00001{suffix}"), documents[3:])
    write_corpus(str(tmp_path / "data"), {"txt": ["hello"] * 10})
    vocab = ByteVocabulary()
    c = corpus_lib.load_corpus(str(tmp_path / "data"), vocab, cache_dir=str(tmp_path / "cache"))
    stream = c.streams["train"][c.domains.index("tok")]
    expected = [t for d in docs["train"] for t in d + [1]]
    assert stream.tokens.tolist() == expected
    assert stream.doc_starts.tolist() == [0, 4, 9, 15, 22, 30]

    names = tasks.register_folder_corpus("tok2", str(tmp_path / "data"))
    ds = seqio.get_mixture_or_task("tok2_tok").get_dataset(None, split="validation", shuffle=False)
    got = [ex["targets"].tolist() for ex in ds.as_numpy_iterator()]
    assert got == [d + [1] for d in docs["validation"]]
    assert "tok2_natural" in names


def test_bad_record_shards(tmp_path):
    from doremi_jax.data import corpus as corpus_lib, records
    from doremi_jax.data.vocab import ByteVocabulary

    records.write_records(str(tmp_path / "d" / "tok" / "train.tfrecord"), [[5, 6]], feature="inputs")
    with pytest.raises(corpus_lib.CorpusError, match=r"domain 'tok': .*train.tfrecord: record 0 has no feature 'targets'"):
        corpus_lib.load_stream(str(tmp_path / "d"), "tok", "train", ByteVocabulary(), cache_dir=str(tmp_path / "c"))
    records.write_records(str(tmp_path / "e" / "tok" / "train.tfrecord"), [[5, 600]])
    with pytest.raises(corpus_lib.CorpusError, match="ids outside the vocabulary"):
        corpus_lib.load_stream(str(tmp_path / "e"), "tok", "train", ByteVocabulary(), cache_dir=str(tmp_path / "c"))


def test_tfds_dataset_split_by_a_domain_field(tmp_path):
    """A TFDS dataset whose examples carry a nested domain field, one Task per value;
    built from tfds.testing.mock_data with examples the test writes."""
    import tensorflow_datasets as tfds
    import tensorflow as tf

    rows = [("Pile-CC", "web page one"), ("PubMed Central", "a paper"), ("Pile-CC", "web page two"),
            ("Github", "def f(): pass"), ("PubMed Central", "another paper")]

    def as_dataset(self, split, **kwargs):
        return tf.data.Dataset.from_tensor_slices({
            "text": [t for _, t in rows],
            "meta": {"pile_set_name": [d for d, _ in rows]},
        })

    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"Pile-CC": 0.5, "PubMed Central": 0.3, "Github": 0.2}))
    names = tasks.register_tfds_corpus(
        "mockpile", "lambada:1.0.0", "meta/pile_set_name", ["Pile-CC", "PubMed Central", "Github"],
        weights={"doremi": str(weights)},
    )
    assert names == ["mockpile_uniform", "mockpile_doremi"]
    vocab = tasks.DEFAULT_VOCABULARY
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        for domain_id, (task, want) in enumerate([
            ("mockpile_Pile_CC", ["web page one", "web page two"]),
            ("mockpile_PubMed_Central", ["a paper", "another paper"]),
            ("mockpile_Github", ["def f(): pass"]),
        ]):
            ds = seqio.get_mixture_or_task(task).get_dataset(None, split="train", shuffle=False, try_in_mem_cache=False)
            examples = list(ds.as_numpy_iterator())
            assert [vocab.decode(ex["targets"].tolist()) for ex in examples] == want
            assert all((ex["domain_ids"] == domain_id).all() for ex in examples)
    mixture = seqio.get_mixture_or_task("mockpile_doremi")
    assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == pytest.approx(
        {"mockpile_Pile_CC": 0.5, "mockpile_PubMed_Central": 0.3, "mockpile_Github": 0.2}
    )
