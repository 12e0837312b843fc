"""Pre-tokenized shards: TFRecord and ArrayRecord files of `tf.train.Example`s.

Each record is one document whose token ids are an int64 list feature (`targets` by
default, the feature name seqio's decoder-only tasks use), as written by seqio/T5X
caching jobs or by `write_records`. A domain folder holding `<split>-*.tfrecord` or
`<split>-*.array_record` shards is read into one `TokenStream` (each document followed
by EOS) and cached like tokenized text. tensorflow and array_record are imported only
here and only when such shards are read.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator, Sequence

import numpy as np

from doremi_jax import fileio
from doremi_jax.data import tensorflow_runtime
from doremi_jax.data.streams import CorpusError, join_documents
from doremi_jax.errors import InputError

SUFFIXES = (".tfrecord", ".array_record")


class RecordError(ValueError):
    pass


def _serialized(path: str) -> Iterator[bytes]:
    if path.endswith(".array_record"):
        from array_record.python import array_record_module

        reader = array_record_module.ArrayRecordReader(path)
        try:
            yield from reader.read_all()
        finally:
            reader.close()
    else:
        tf = tensorflow_runtime.tensorflow()

        for record in tf.data.TFRecordDataset([path]).as_numpy_iterator():
            yield record


def read_documents(path: str, feature: str = "targets") -> Iterator[np.ndarray]:
    """The token ids of every record in one shard."""
    tf = tensorflow_runtime.tensorflow()

    for i, record in enumerate(_serialized(path)):
        try:
            example = tf.train.Example.FromString(record)
        except Exception:  # noqa: BLE001 - protobuf raises its own DecodeError
            raise RecordError(f"{path}: record {i} is not a tf.train.Example") from None
        features = example.features.feature
        if feature not in features:
            raise RecordError(f"{path}: record {i} has no feature {feature!r} (has {sorted(features)})")
        ids = features[feature].int64_list.value
        if not ids and features[feature].bytes_list.value:
            raise RecordError(f"{path}: feature {feature!r} of record {i} holds bytes, not token ids")
        yield np.asarray(ids, np.int64)


def load_shards(files: Sequence[str], vocab, domain: str, feature: str = "targets"):
    """One TokenStream from the shards of a domain's split, ids checked against `vocab`."""
    documents = []
    for path in files:
        try:
            for ids in read_documents(path, feature):
                if ids.size == 0:
                    continue
                if ids.min() < 0 or ids.max() >= vocab.vocab_size:
                    raise CorpusError(
                        f"domain {domain!r}: {path} has ids outside the vocabulary [0, {vocab.vocab_size})"
                    )
                documents.append(ids[:-1] if ids[-1] == vocab.eos_id else ids)  # EOS once
        except RecordError as e:
            raise CorpusError(f"domain {domain!r}: {e}") from None
    return join_documents(documents, vocab.eos_id)


def write_records(path: str, documents: Iterable[Sequence[int]], feature: str = "targets") -> int:
    """Write token-id documents as one TFRecord or ArrayRecord shard (by suffix)."""
    tf = tensorflow_runtime.tensorflow()

    serialized = [
        tf.train.Example(features=tf.train.Features(feature={
            feature: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(i) for i in doc]))
        })).SerializeToString()
        for doc in documents
    ]
    if not path.endswith(SUFFIXES):
        raise InputError(f"{path}: expected a .tfrecord or .array_record file")
    fileio.makedirs(os.path.dirname(fileio.absolute(path)))
    if path.endswith(".array_record"):
        from array_record.python import array_record_module

        writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
        for record in serialized:
            writer.write(record)
        writer.close()
    else:
        with tf.io.TFRecordWriter(path) as writer:
            for record in serialized:
                writer.write(record)
    return len(serialized)
