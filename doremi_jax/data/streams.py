"""A domain split as one token stream (documents each closed by EOS), and the error
of bad corpus input: what `corpus` (folders, caches) and `records` (shards) both make."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator

import numpy as np


class CorpusError(ValueError):
    """Bad corpus input: the message names the domain and file."""


@dataclasses.dataclass(frozen=True)
class TokenStream:
    """One domain split. tokens: int32[n]; doc_starts: int64[num_docs], ascending from 0."""

    tokens: np.ndarray
    doc_starts: np.ndarray
    num_bytes: int

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def documents(self) -> Iterator[np.ndarray]:
        """Each document's token ids, its closing EOS included."""
        ends = list(self.doc_starts[1:]) + [self.num_tokens]
        for start, end in zip(self.doc_starts, ends):
            yield self.tokens[start:end]

    def doc_numbers(self, start: int, stop: int) -> np.ndarray:
        """Document number of the tokens start..stop-1, int32[stop - start] (from the
        document starts: no per-token array over the whole stream)."""
        positions = np.arange(start, stop, dtype=np.int64)
        return (np.searchsorted(self.doc_starts, positions, side="right") - 1).astype(np.int32)


def join_documents(documents: Iterable[np.ndarray], eos_id: int, num_bytes: int | None = None) -> TokenStream:
    """One stream from documents' token ids (without EOS): each followed by EOS. Without
    `num_bytes` (pre-tokenized data, no text to count) a token stands for one byte."""
    pieces, starts, pos = [], [], 0
    eos = np.asarray([eos_id], np.int32)
    for ids in documents:
        starts.append(pos)
        pieces += [np.asarray(ids, np.int32), eos]
        pos += len(ids) + 1
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    return TokenStream(tokens, np.asarray(starts, np.int64), int(tokens.size) if num_bytes is None else num_bytes)
