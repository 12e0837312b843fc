"""What the trainer asks of the data layer: a corpus, its starting weights, batches.

No tensorflow here: the trainer's input is the step-indexed `MixtureSampler` over
token streams; seqio Tasks and Mixtures over the same folders live in `tasks.py`
for T5X projects.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from doremi_jax import fileio
from doremi_jax.data import corpus as corpus_lib
from doremi_jax.data import demo, vocab as vocab_lib, weights as weights_lib
from doremi_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the domains are and how to read them; bound by gin/data/*.gin."""

    data_dir: str = "demo"  # "demo": the embedded corpus, built on first use
    corpus_name: str = "demo"
    vocabulary: str = "byte"  # or "sentencepiece"
    spm_model: str | None = None
    text_field: str = "text"
    record_feature: str = "targets"  # token-id feature of .tfrecord / .array_record shards
    on_decode_error: str = "fail"  # or "skip"
    packing: bool = True
    # Stratified batches: each step's rows split between the domains in proportion to
    # the sampling weights (largest remainders), instead of a domain drawn per row; with
    # uniform weights and batch >= k no domain is ever absent from a step (a DoReMi
    # proxy's λ of an absent domain is 0 for that step).
    stratified: bool = False
    cache_dir: str | None = None


def resolve_data_dir(cfg: DataConfig) -> str:
    return demo.build_demo_corpus() if cfg.data_dir == "demo" else cfg.data_dir


def vocabulary(cfg: DataConfig):
    return vocab_lib.make_vocabulary(cfg.vocabulary, cfg.spm_model)


def build_corpus(cfg: DataConfig, vocab=None) -> corpus_lib.Corpus:
    """The corpus tokenized by `vocab` (default: the one `cfg` names)."""
    vocab = vocab or vocabulary(cfg)
    return corpus_lib.load_corpus(
        resolve_data_dir(cfg),
        vocab,
        name=cfg.corpus_name,
        text_field=cfg.text_field,
        on_decode_error=cfg.on_decode_error,
        cache_dir=cfg.cache_dir,
        record_feature=cfg.record_feature,
    )


def named_weights(spec: str, corpus: corpus_lib.Corpus) -> np.ndarray:
    """`natural` (train-split token shares), `uniform`, or a path to a weights JSON file."""
    k = len(corpus.domains)
    if spec == "uniform":
        return np.full(k, 1.0 / k)
    if spec == "natural":
        counts = corpus.token_counts("train").astype(np.float64)
        return counts / counts.sum()
    if spec.endswith(".json") or fileio.exists(spec):
        return weights_lib.read_weights(fileio.shipped(spec), corpus.domains)
    raise InputError(f"weights {spec!r}: expected 'natural', 'uniform' or a path to a .json file")
