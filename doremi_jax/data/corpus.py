"""A corpus of domains on disk: `DATA_DIR/<domain>/{train,validation,test}.jsonl` (or `.txt`).

`train` and `validation` are required; `test` is optional but all-or-nothing: when
every domain has one, the corpus carries it (verdicts are read there, choices on
validation); when none has, the corpus has no test split; a test split in some
domains only is an error (a report on a subset of domains would mislead).

A domain may instead hold pre-tokenized data: `<split>.tokens.npy`, one int array of
token ids with documents separated by EOS (id 1), or `<split>*.tfrecord` /
`<split>*.array_record` shards of tf.train.Examples (`records.py`).

Each domain's split is tokenized once into a `TokenStream` (documents concatenated,
each followed by EOS) and cached as `.npy` under the cache directory, keyed by the
files' names, sizes and modification times and by the vocabulary.

Local token arrays (a domain's `.tokens.npy`, the cache) are memory-mapped, never read
whole: start-up reads only a small index (document starts, cached after one chunked
pass), and training touches only the windows it samples, so a host's memory does not
grow with the corpus.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
from typing import Iterator, Sequence

import numpy as np
from etils import epath

from doremi_jax import fileio
from doremi_jax.data import records, shards as shard_reader
# The stream type and the error of bad corpus input live below corpus and records.
from doremi_jax.data.streams import CorpusError, TokenStream, join_documents  # noqa: F401

SPLITS = ("train", "validation", "test")
REQUIRED_SPLITS = ("train", "validation")
# Tokens read from each end of a stream for the corpus's fingerprint.
_FINGERPRINT_TOKENS = 4096


@dataclasses.dataclass(frozen=True)
class Corpus:
    name: str
    domains: tuple[str, ...]
    streams: dict[str, list[TokenStream]]  # split -> one stream per domain, in `domains` order

    @property
    def verdict_split(self) -> str:
        """Where results are judged: test when the corpus has one, else validation (the
        split that chooses; the report says so)."""
        return "test" if "test" in self.streams else "validation"

    def token_counts(self, split: str = "train") -> np.ndarray:
        return np.asarray([s.num_tokens for s in self.streams[split]], np.int64)

    def fingerprint(self) -> str:
        """The contents, cheaply: per split and domain the token and document counts and
        the first and last tokens. The same path holding another corpus is caught."""
        h = hashlib.sha256()
        for split in sorted(self.streams):
            for domain, stream in zip(self.domains, self.streams[split]):
                h.update(f"{split}/{domain}:{stream.num_tokens}:{len(stream.doc_starts)}|".encode())
                for part in (stream.tokens[:_FINGERPRINT_TOKENS], stream.tokens[-_FINGERPRINT_TOKENS:]):
                    h.update(np.ascontiguousarray(part, np.int32).tobytes())
        return h.hexdigest()[:16]


def split_files(data_dir: str, domain: str, split: str) -> list[str]:
    folder = epath.Path(data_dir) / domain
    files = sorted(os.fspath(p) for p in folder.glob(f"{split}*.jsonl"))
    files += sorted(os.fspath(p) for p in folder.glob(f"{split}*.txt"))
    return files


def has_split(data_dir: str, domain: str, split: str) -> bool:
    """Whether a domain folder holds any file of `split`, in any layout."""
    folder = epath.Path(data_dir) / domain
    if fileio.exists(os.fspath(folder / f"{split}.tokens.npy")):
        return True
    patterns = [f"{split}*.jsonl", f"{split}*.txt", *(f"{split}*{s}" for s in records.SUFFIXES)]
    return any(next(iter(folder.glob(p)), None) is not None for p in patterns)


def optional_splits(data_dir: str, domains: Sequence[str]) -> tuple[str, ...]:
    """The optional splits (test) the corpus carries: those every domain has."""
    out = []
    for split in SPLITS:
        if split in REQUIRED_SPLITS:
            continue
        present = [d for d in domains if has_split(data_dir, d, split)]
        if present and len(present) < len(domains):
            missing = sorted(set(domains) - set(present))
            raise CorpusError(
                f"DATA_DIR {data_dir!r}: domains {present} have a {split} split and {missing} do not; "
                f"give every domain one, or none"
            )
        if present:
            out.append(split)
    return tuple(out)


def list_domains(data_dir: str) -> tuple[str, ...]:
    if not fileio.isdir(data_dir):
        raise CorpusError(f"DATA_DIR {data_dir!r} does not exist or is not a folder")
    domains = tuple(
        sorted(p.name for p in epath.Path(data_dir).iterdir() if p.is_dir() and not p.name.startswith("."))
    )
    if not domains:
        raise CorpusError(f"DATA_DIR {data_dir!r} holds no domain folders")
    return domains


def iter_documents(
    path: str, text_field: str = "text", on_decode_error: str = "fail"
) -> Iterator[str]:
    """Documents of one file: a jsonl line's `text_field`, or a whole `.txt` file.

    Undecodable bytes fail with the file and line (`on_decode_error='fail'`) or are
    replaced and counted in the log (`'skip'`).
    """
    errors = "strict" if on_decode_error == "fail" else "replace"
    with fileio.open_file(path, "rb") as f:
        raw = f.read()
    if path.endswith(".txt"):
        try:
            yield raw.decode("utf-8", errors=errors)
        except UnicodeDecodeError as e:
            raise CorpusError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        return
    skipped = 0
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            text_line = line.decode("utf-8", errors=errors)
        except UnicodeDecodeError as e:
            raise CorpusError(f"{path}:{lineno}: not UTF-8 ({e.reason})") from None
        try:
            record = json.loads(text_line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{path}:{lineno}: corrupted JSON line ({e.msg})") from None
        if not isinstance(record, dict) or text_field not in record:
            raise CorpusError(f"{path}:{lineno}: no {text_field!r} field")
        text = record[text_field]
        if not isinstance(text, str):
            raise CorpusError(f"{path}:{lineno}: field {text_field!r} is not a string")
        if "\ufffd" in text and on_decode_error == "skip":
            skipped += 1
        yield text
    if skipped:
        logging.warning("%s: %d documents had undecodable bytes (replaced)", path, skipped)


def tokenize_files(files: Sequence[str], vocab, text_field: str, on_decode_error: str) -> TokenStream:
    documents, num_bytes = [], 0
    for path in files:
        for text in iter_documents(path, text_field, on_decode_error):
            if text:
                documents.append(vocab.encode(text))
                num_bytes += len(text.encode("utf-8"))
    return join_documents(documents, vocab.eos_id, num_bytes)


def default_cache_dir() -> str:
    return os.environ.get(
        "DOREMI_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "doremi_jax")
    )


def _fingerprint(files: Sequence[str], vocab, text_field: str) -> str:
    h = hashlib.sha256(f"{vocab.fingerprint}|{text_field}".encode())
    for path in files:
        size, mtime = fileio.size_and_mtime(path)
        h.update(f"|{fileio.absolute(path)}:{size}:{mtime}".encode())
    return h.hexdigest()[:20]


# Token ids read per chunk by the one pass that indexes a memory-mapped array.
_INDEX_CHUNK = 1 << 22


def _scan_index(path: str, vocab) -> tuple[np.ndarray, int, int]:
    """Document starts and the id range of a token array, read in chunks through the
    file (not through the map, whose pages would count against this process)."""
    header = np.load(path, mmap_mode="r")
    dtype, n, offset = header.dtype, header.shape[0], header.offset
    del header
    starts, low, high = [np.zeros(1, np.int64)], 0, 0
    with open(path, "rb") as f:
        f.seek(offset)
        for begin in range(0, n, _INDEX_CHUNK):
            count = min(_INDEX_CHUNK, n - begin)
            chunk = np.frombuffer(f.read(count * dtype.itemsize), dtype)
            low, high = min(low, int(chunk.min())), max(high, int(chunk.max()))
            ends = np.flatnonzero(chunk == vocab.eos_id) + begin + 1
            starts.append(ends[ends < n].astype(np.int64))
    return np.concatenate(starts), low, high


def load_pretokenized(path: str, domain: str, vocab, cache_dir: str | None = None) -> TokenStream:
    """A `.tokens.npy` array: memory-mapped where local (its document index cached after
    one pass), read whole from a remote store."""
    local = not fileio.is_remote(path)
    try:
        if local:
            tokens = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            with fileio.open_file(path, "rb") as f:
                tokens = np.load(io.BytesIO(f.read()), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CorpusError(f"domain {domain!r}: cannot read {path!r} ({e})") from None
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise CorpusError(f"domain {domain!r}: {path!r} must be a 1-D integer array of token ids")
    if not tokens.size:
        return TokenStream(tokens, np.zeros(0, np.int64), 0)
    if local:
        key = hashlib.sha256(f"{_fingerprint([path], vocab, 'index')}|{vocab.eos_id}".encode()).hexdigest()[:20]
        index = os.path.join(cache_dir or default_cache_dir(), "index", f"{key}.npz")
        if os.path.exists(index):
            with np.load(index) as z:
                starts, low, high = z["doc_starts"], int(z["low"]), int(z["high"])
        else:
            starts, low, high = _scan_index(path, vocab)
            os.makedirs(os.path.dirname(index), exist_ok=True)
            tmp = f"{index}.tmp-{os.getpid()}.npz"
            np.savez(tmp, doc_starts=starts, low=low, high=high)
            os.replace(tmp, index)
    else:
        tokens = tokens.astype(np.int32)
        low, high = int(tokens.min()), int(tokens.max())
        ends = np.flatnonzero(tokens == vocab.eos_id) + 1
        starts = np.r_[0, ends[ends < tokens.size]].astype(np.int64)
    if low < 0 or high >= vocab.vocab_size:
        raise CorpusError(
            f"domain {domain!r}: {path!r} has ids outside the vocabulary [0, {vocab.vocab_size})"
        )
    # No text to count: a token stands for one byte in bits-per-byte.
    return TokenStream(tokens, starts, int(tokens.size))


def _save_stream(folder: str, name: str, stream: TokenStream) -> None:
    """The cache of a tokenized split: two `.npy` arrays (memory-mapped when read) and
    its byte count; the byte count is written last and marks the entry complete."""
    os.makedirs(folder, exist_ok=True)
    for field in ("tokens", "doc_starts"):
        tmp = os.path.join(folder, f"{name}.{field}.tmp-{os.getpid()}.npy")
        np.save(tmp, getattr(stream, field))
        os.replace(tmp, os.path.join(folder, f"{name}.{field}.npy"))
    fileio.write_text_atomic(os.path.join(folder, f"{name}.json"), json.dumps({"num_bytes": stream.num_bytes}))


def _load_cached_stream(folder: str, name: str) -> TokenStream | None:
    done = os.path.join(folder, f"{name}.json")
    if not os.path.exists(done):
        return None
    return TokenStream(
        np.load(os.path.join(folder, f"{name}.tokens.npy"), mmap_mode="r"),
        np.load(os.path.join(folder, f"{name}.doc_starts.npy")),
        int(json.loads(open(done).read())["num_bytes"]),
    )


def load_stream(
    data_dir: str,
    domain: str,
    split: str,
    vocab,
    text_field: str = "text",
    on_decode_error: str = "fail",
    cache_dir: str | None = None,
    record_feature: str = "targets",
) -> TokenStream:
    folder = os.path.join(data_dir, domain)
    if not fileio.isdir(folder):
        raise CorpusError(f"domain {domain!r}: folder {folder!r} does not exist")
    pretokenized = os.path.join(folder, f"{split}.tokens.npy")
    if fileio.exists(pretokenized):
        stream = load_pretokenized(pretokenized, domain, vocab, cache_dir)
        if stream.num_tokens == 0:
            raise CorpusError(f"domain {domain!r}: {pretokenized!r} is empty")
        return stream
    files = split_files(data_dir, domain, split)
    shards = sorted(os.fspath(p) for s in records.SUFFIXES for p in epath.Path(folder).glob(f"{split}*{s}"))
    if not files and not shards:
        raise CorpusError(
            f"domain {domain!r}: no {split}*.jsonl, {split}*.txt, {split}.tokens.npy, "
            f"{split}*.tfrecord or {split}*.array_record in {folder!r}"
        )
    if files and shards:
        raise CorpusError(f"domain {domain!r}: {folder!r} mixes text files and record shards for {split}")
    if not files and shard_reader.has_lengths(shards):
        # The Beam preprocessing's shards: read by window, never whole, never cached.
        return _indexed_shards(data_dir, domain, split, shards, vocab, record_feature)
    key = _fingerprint(files, vocab, text_field) if files else _fingerprint(shards, vocab, f"records:{record_feature}")
    cache = os.path.join(cache_dir or default_cache_dir(), "tokens", key)
    cached = _load_cached_stream(cache, f"{domain}.{split}")
    if cached is not None:
        return cached
    if files:
        stream = tokenize_files(files, vocab, text_field, on_decode_error)
    else:
        stream = records.load_shards(shards, vocab, domain, record_feature)
    if stream.num_tokens == 0:
        raise CorpusError(f"domain {domain!r}: the {split} split in {folder!r} is empty")
    _save_stream(cache, f"{domain}.{split}", stream)
    return _load_cached_stream(cache, f"{domain}.{split}")


def _indexed_shards(data_dir, domain, split, shards, vocab, feature) -> TokenStream:
    index_path = os.path.join(data_dir, "index.json")
    index = json.loads(fileio.read_text(index_path)) if fileio.exists(index_path) else {}
    if index and index.get("vocabulary") != vocab.fingerprint:
        raise CorpusError(
            f"domain {domain!r}: the shards in {data_dir!r} were tokenized with vocabulary "
            f"{index.get('vocabulary')!r}; this run's is {vocab.fingerprint!r}"
        )
    stream = shard_reader.load_stream(shards, vocab.eos_id, feature)
    if stream.num_tokens == 0:
        raise CorpusError(f"domain {domain!r}: the {split} shards in {os.path.join(data_dir, domain)!r} are empty")
    counted = index.get("domains", {}).get(domain, {}).get(split)
    if counted:
        stream = dataclasses.replace(stream, num_bytes=int(counted["bytes"]))
    return stream


def load_corpus(
    data_dir: str,
    vocab,
    name: str = "folder",
    domains: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    text_field: str = "text",
    on_decode_error: str = "fail",
    cache_dir: str | None = None,
    record_feature: str = "targets",
) -> Corpus:
    """Tokenized streams of every domain and split. `domains` defaults to the sub-folders;
    `splits` to train, validation and test where every domain has one."""
    if on_decode_error not in ("fail", "skip"):
        raise CorpusError(f"on_decode_error={on_decode_error!r}: expected 'fail' or 'skip'")
    domains = tuple(domains) if domains else list_domains(data_dir)
    if splits is None:
        splits = (*REQUIRED_SPLITS, *optional_splits(data_dir, domains))
    streams = {
        split: [
            load_stream(data_dir, d, split, vocab, text_field, on_decode_error, cache_dir, record_feature)
            for d in domains
        ]
        for split in splits
    }
    return Corpus(name, domains, streams)
