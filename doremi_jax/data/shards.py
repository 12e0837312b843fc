"""A domain split held in ArrayRecord shards, read by window and never whole.

The Beam preprocessing (`preprocess.py`) writes beside each shard the token count of
each of its records (`<shard>.lengths.npy`, EOS included). From those alone the stream's
document starts are known at start-up; `ShardTokens[a:b]` then decodes only the records
overlapping [a, b), through grain's `ArrayRecordDataSource` (MaxText's loader; it reads
local and gs:// paths), so a host's memory does not grow with the corpus.
"""

from __future__ import annotations

import io

import numpy as np

from doremi_jax import fileio
from doremi_jax.data import tensorflow_runtime
from doremi_jax.data.streams import TokenStream

LENGTHS = ".lengths.npy"


def has_lengths(shards) -> bool:
    return bool(shards) and all(p.endswith(".array_record") and fileio.exists(p + LENGTHS) for p in shards)


def _lengths(path: str) -> np.ndarray:
    with fileio.open_file(path + LENGTHS, "rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


class ShardTokens:
    """int32 token ids of the concatenated records (each followed by EOS), by slice."""

    dtype = np.dtype(np.int32)

    def __init__(self, shards, doc_starts: np.ndarray, total: int, eos_id: int, feature: str = "targets"):
        import grain.python as grain

        self._source = grain.ArrayRecordDataSource(list(shards))
        self._starts, self._total = doc_starts, total
        self._eos, self._feature = eos_id, feature
        self.shape = (total,)

    def __len__(self) -> int:
        return self._total

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("ShardTokens reads contiguous windows: tokens[a:b]")
        start, stop, _ = key.indices(self._total)
        if stop <= start:
            return np.zeros(0, np.int32)
        first = int(np.searchsorted(self._starts, start, side="right") - 1)
        last = int(np.searchsorted(self._starts, stop - 1, side="right") - 1)
        # One record or two per window: read one by one (`__getitems__` starts a thread
        # pool per call, which costs more than the reads themselves here).
        records = [self._source[i] for i in range(first, last + 1)]
        pieces = [np.r_[self._decode(r), self._eos].astype(np.int32) for r in records]
        window = np.concatenate(pieces)
        offset = start - int(self._starts[first])
        return window[offset: offset + (stop - start)]

    def __array__(self, dtype=None, copy=None):
        whole = self[0:self._total]
        return whole if dtype is None else whole.astype(dtype)

    def _decode(self, record: bytes) -> np.ndarray:
        tf = tensorflow_runtime.tensorflow()

        example = tf.train.Example.FromString(record)
        return np.fromiter(example.features.feature[self._feature].int64_list.value, np.int64)


def load_stream(shards, eos_id: int, feature: str = "targets") -> TokenStream:
    """The split's stream from its shards' length files: no record is read here."""
    # The document starts are the one thing held per document (8 bytes each): built shard
    # by shard, so start-up holds at most twice that, never the lengths besides.
    ends, total = [np.zeros(1, np.int64)], 0
    for path in shards:
        shard_ends = np.cumsum(_lengths(path), dtype=np.int64)
        shard_ends += total
        total = int(shard_ends[-1]) if shard_ends.size else total
        ends.append(shard_ends)
    starts = np.concatenate(ends)[:-1]
    # No text to count here: a token stands for one byte in bits-per-byte, as for
    # other pre-tokenized data.
    return TokenStream(ShardTokens(shards, starts, total, eos_id, feature), starts, total)
