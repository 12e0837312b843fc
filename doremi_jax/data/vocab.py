"""Vocabularies without tensorflow: the byte vocabulary and SentencePiece.

Ids follow seqio/T5 conventions (pad 0, eos 1, unk 2), so a model trained here
reads the same ids through `seqio.ByteVocabulary` or `seqio.SentencePieceVocabulary`
in a T5X project (tests/test_data.py checks the byte one against seqio).
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterable

import numpy as np

from doremi_jax import fileio
from doremi_jax.errors import InputError

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


class ByteVocabulary:
    """UTF-8 bytes shifted by the 3 special ids: vocab_size 259, as seqio.ByteVocabulary."""

    num_special = 3
    vocab_size = 256 + 3
    eos_id = EOS_ID
    pad_id = PAD_ID

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + self.num_special

    def decode(self, ids: Iterable[int]) -> str:
        data = bytes(int(i) - self.num_special for i in ids if self.num_special <= int(i) < 259)
        return data.decode("utf-8", errors="replace")

    @property
    def fingerprint(self) -> str:
        return "byte"


class SentencePieceVocabulary:
    """A SentencePiece model file, with pad/eos/unk at 0/1/2 as T5 models use."""

    eos_id = EOS_ID
    pad_id = PAD_ID

    def __init__(self, model_path: str):
        import sentencepiece as spm  # only needed for this vocabulary

        if not fileio.exists(model_path):
            raise FileNotFoundError(f"SentencePiece model {model_path!r} does not exist")
        self.model_path = model_path
        with fileio.open_file(model_path, "rb") as f:  # local or gs://
            self._model_proto = f.read()
        self._sp = spm.SentencePieceProcessor(model_proto=self._model_proto)
        if (self._sp.pad_id(), self._sp.eos_id(), self._sp.unk_id()) != (PAD_ID, EOS_ID, UNK_ID):
            raise InputError(
                f"SentencePiece model {model_path!r}: pad/eos/unk ids are "
                f"{self._sp.pad_id()}/{self._sp.eos_id()}/{self._sp.unk_id()}, expected 0/1/2"
            )
        self.vocab_size = self._sp.get_piece_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._sp.encode(text), np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids if int(i) > UNK_ID])

    @property
    def fingerprint(self) -> str:
        return "spm-" + hashlib.sha256(self._model_proto).hexdigest()[:16]


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_prefix: str) -> str:
    """Train a unigram SentencePiece model on `texts`; returns the `.model` path."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=model_prefix,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        byte_fallback=True,
        character_coverage=1.0,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
    )
    return model_prefix + ".model"


def make_vocabulary(kind: str = "byte", model_path: str | None = None):
    """`byte` (default, no files) or `sentencepiece` (needs `model_path`)."""
    if kind == "byte":
        return ByteVocabulary()
    if kind == "sentencepiece":
        if not model_path:
            raise InputError("make_vocabulary: kind='sentencepiece' needs model_path")
        return SentencePieceVocabulary(model_path)
    raise InputError(f"make_vocabulary: unknown kind {kind!r} (expected 'byte' or 'sentencepiece')")
