"""seqio registration as a T5X project uses it: import, get_dataset, the feature converter."""

import json

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")

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
