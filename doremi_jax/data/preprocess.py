"""`python -m doremi_jax.data.preprocess --input 'PATH/*.jsonl.zst' --output_dir OUT`.

A corpus of jsonl (or .jsonl.zst, or .txt: one document per line) records split by a
domain field into the folder layout the trainer reads, tokenized, as pre-tokenized
ArrayRecord shards of `tf.train.Example`s with a `targets` int64 feature (what seqio's
decoder-only tasks read, so T5X projects can register Tasks over the same shards):

    OUT/<domain>/<split>-<input>.array_record   one shard per input file, domain and split
    OUT/<domain>/<split>-<input>.array_record.lengths.npy
                                                 each record's tokens (EOS included): the
                                                 trainer's random-access index (`shards.py`)
    OUT/index.json                               documents, tokens and bytes per shard,
                                                 per domain and split, and the vocabulary

On Apache Beam, the engine seqio's cache_tasks_main and TFDS use for big corpora: the
DirectRunner here (`--direct_num_workers=N --direct_running_mode=multi_processing`),
Dataflow, Flink or Spark by Beam's own flags (`--runner=DataflowRunner --project ...`).
Deterministic (documents in their input order; the validation and test splits held out
by a hash of each document's text, `--validation_fraction`, `--test_fraction`), idempotent and resumable per input
file: a finished input's shards are recorded under OUT/.done/ and skipped on a rerun. A
malformed record stops the run with its file and line (or, with `--on_error=skip`, is
skipped and counted).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import io
import json
import logging
import os
import sys
from typing import Iterable, Iterator, Sequence

import numpy as np

from etils import epath

from doremi_jax import fileio, quiet
from doremi_jax.data import tensorflow_runtime
from doremi_jax.faults import fault_point
from doremi_jax.data.weights import folder_name

SPLITS = ("train", "validation", "test")


class PreprocessError(ValueError):
    """A malformed input record: the message names the file and line."""


def read_lines(path: str) -> Iterator[bytes]:
    """An input's lines, local or on gs:// (through fileio)."""
    if path.endswith(".zst"):
        import zstandard

        with fileio.open_file(path, "rb") as f:
            yield from io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(f))
    else:
        with fileio.open_file(path, "rb") as f:
            yield from f


def find_inputs(pattern: str) -> list[str]:
    """The files matching a glob, local or on gs://, sorted."""
    if not fileio.is_remote(pattern):
        return sorted(glob.glob(pattern))
    folder, _, name = pattern.rpartition("/")
    return sorted(os.fspath(p) for p in epath.Path(folder).glob(name))


def _field(record, path: str):
    for key in path.split("/"):
        record = record[key]
    return record


def parse(path: str, lineno: int, line: bytes, domain_field: str, text_field: str) -> tuple[str, str] | None:
    """(domain folder name, text) of one input line; None for a blank line."""
    if not line.strip():
        return None
    if path.endswith((".txt", ".txt.zst")):
        raise PreprocessError(f"{path}:{lineno}: plain text has no domain field; give jsonl records")
    try:
        record = json.loads(line)
        domain, text = _field(record, domain_field), _field(record, text_field)
    except json.JSONDecodeError as e:
        raise PreprocessError(f"{path}:{lineno}: not a JSON record ({e.msg})") from None
    except (KeyError, TypeError):
        raise PreprocessError(f"{path}:{lineno}: no {domain_field!r} and {text_field!r} fields") from None
    if not isinstance(text, str) or not isinstance(domain, str) or not domain:
        raise PreprocessError(f"{path}:{lineno}: {text_field!r} and {domain_field!r} must be strings")
    return folder_name(domain), text


def split_of(text: str, validation_fraction: float, test_fraction: float = 0.0) -> str:
    """The document's split, from a hash of its text: the same document lands in the same
    split on every run and every worker. Hashes in [0, v) are validation, [v, v + t)
    test, the rest train: adding a test fraction later leaves validation as it was."""
    h = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") / 2**64
    if h < validation_fraction:
        return "validation"
    return "test" if h < validation_fraction + test_fraction else "train"


def _vocabulary(spm_model: str):
    from doremi_jax.data import vocab

    return vocab.make_vocabulary("sentencepiece", spm_model) if spm_model else vocab.make_vocabulary("byte")


def _serialize(ids: np.ndarray) -> bytes:
    tf = tensorflow_runtime.tensorflow()

    example = tf.train.Example()  # filled in place: half the time of building it from parts
    example.features.feature["targets"].int64_list.value.extend(ids.tolist())
    return example.SerializeToString()


def write_shard(final: str, documents: Iterable[np.ndarray]) -> int:
    """One shard: each document (token ids, no EOS) a `tf.train.Example` record, and its
    record lengths (EOS included) beside it; returns the shard's tokens. Written locally,
    then moved (or copied to gs://) whole: a reader never sees half a shard, and the
    shard appears after its lengths file."""
    import tempfile

    from array_record.python import array_record_module

    fileio.makedirs(os.path.dirname(final))
    remote = fileio.is_remote(final)
    name = os.path.basename(final)
    tmp = os.path.join(tempfile.gettempdir(), f"{name}.tmp-{os.getpid()}") if remote else f"{final}.tmp-{os.getpid()}"
    if not remote:  # a killed earlier attempt's part; one worker writes each shard
        for stale in glob.glob(glob.escape(final) + ".tmp-*"):
            os.remove(stale)
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    lengths = []
    for ids in documents:
        ids = np.asarray(ids)
        writer.write(_serialize(ids))
        lengths.append(int(ids.size) + 1)
    writer.close()
    fault_point("shard_write")  # the shard written to its temporary name, not yet moved
    with fileio.open_file(final + ".lengths.npy", "wb") as f:
        np.save(f, np.asarray(lengths, np.int64))
    if remote:
        epath.Path(tmp).copy(final, overwrite=True)
        os.remove(tmp)
    else:
        os.replace(tmp, final)
    return int(sum(lengths))


def _done_path(output_dir: str, index: int, path: str) -> str:
    key = hashlib.sha256(fileio.absolute(path).encode()).hexdigest()[:12]
    return os.path.join(output_dir, ".done", f"{index:05d}-{key}.json")


def _build(p, inputs: Sequence[tuple[int, str]], output_dir: str, options: dict):
    """The Beam graph: read each input (one element per file), spread the lines over the
    workers, parse and tokenize, group back per (input, domain, split) and write each
    group as one shard in input order; each input's shard records go to its done file."""
    import apache_beam as beam

    skipped = beam.metrics.Metrics.counter("doremi_jax", "skipped_records")

    def lines(item):
        index, path = item
        for lineno, line in enumerate(read_lines(path), 1):
            yield (index, path, lineno), line

    class Tokenize(beam.DoFn):
        def setup(self):
            self.vocab = _vocabulary(options["spm_model"])

        def process(self, element):
            (index, path, lineno), line = element
            try:
                parsed = parse(path, lineno, line, options["domain_field"], options["text_field"])
            except PreprocessError:
                if options["on_error"] == "skip":
                    skipped.inc()
                    return
                raise
            if parsed is None:
                return
            domain, text = parsed
            ids = np.asarray(self.vocab.encode(text), np.int32)
            split = options["split"] or split_of(text, options["validation_fraction"], options["test_fraction"])
            yield (index, path, domain, split), (lineno, ids, len(text.encode("utf-8")))

    def write_shard_of(element):
        (index, path, domain, split), docs = element
        docs = sorted(docs, key=lambda d: d[0])
        name = f"{split}-{index:05d}.array_record"
        tokens = write_shard(os.path.join(output_dir, domain, name), (ids for _, ids, _ in docs))
        yield (index, path), {"domain": domain, "split": split, "shard": f"{domain}/{name}",
                              "documents": len(docs), "tokens": tokens, "bytes": int(sum(d[2] for d in docs))}

    def record_done(element):
        (index, path), shards = element
        fileio.write_text_atomic(_done_path(output_dir, index, path), json.dumps(
            {"input": fileio.absolute(path), "shards": sorted(shards, key=lambda s: s["shard"])}))
        print(f"done: {path} ({sum(s['documents'] for s in shards):,} documents, "
              f"{sum(s['tokens'] for s in shards):,} tokens, {len(shards)} shard(s))", flush=True)

    return (
        p
        | "Inputs" >> beam.Create(list(inputs))
        | "Lines" >> beam.FlatMap(lines)
        | "Spread" >> beam.Reshuffle()
        | "Tokenize" >> beam.ParDo(Tokenize())
        | "PerShard" >> beam.GroupByKey()
        | "Write" >> beam.FlatMap(write_shard_of)
        | "PerInput" >> beam.GroupByKey()
        | "Done" >> beam.Map(record_done)
    )


def write_index(output_dir: str, vocabulary: str) -> dict:
    """OUT/index.json from every finished input's record: shards, and per domain and
    split the documents, tokens and bytes (what natural rates and epoch counts need,
    without reading a token)."""
    shards = []
    for done in sorted(os.fspath(p) for p in epath.Path(output_dir, ".done").glob("*.json")):
        shards += json.loads(fileio.read_text(done))["shards"]
    totals: dict[str, dict[str, dict[str, int]]] = {}
    for s in sorted(shards, key=lambda s: s["shard"]):
        t = totals.setdefault(s["domain"], {}).setdefault(s["split"], {"documents": 0, "tokens": 0, "bytes": 0})
        for k in ("documents", "tokens", "bytes"):
            t[k] += s[k]
    index = {"vocabulary": vocabulary, "feature": "targets", "domains": dict(sorted(totals.items())),
             "shards": sorted(shards, key=lambda s: s["shard"])}
    fileio.write_text_atomic(os.path.join(output_dir, "index.json"), json.dumps(index, indent=1))
    return index


def preprocess(inputs: Sequence[str], output_dir: str, *, spm_model: str = "", domain_field: str = "meta/pile_set_name",
               text_field: str = "text", validation_fraction: float = 0.0, test_fraction: float = 0.0,
               split: str = "", on_error: str = "fail", beam_args: Sequence[str] = (), quiet: bool = False) -> dict:
    """Run the pipeline over the inputs not yet done; write and return the index. With
    `quiet`, what Beam and its worker processes log is muted while the job runs (stdout,
    where each finished input is reported, is not); an error still reaches the caller."""
    from doremi_jax import quiet as quiet_lib
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error={on_error!r}: expected 'fail' or 'skip'")
    if split and split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {list(SPLITS)} or '' (held out by hash)")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction}: expected 0 <= fraction < 1")
    if not 0.0 <= test_fraction < 1.0 or validation_fraction + test_fraction >= 1.0:
        raise ValueError(f"test_fraction={test_fraction}: expected 0 <= fraction and validation_fraction + "
                         "test_fraction < 1")
    fileio.makedirs(os.path.join(output_dir, ".done"))
    vocabulary = _vocabulary(spm_model).fingerprint
    previous = os.path.join(output_dir, "index.json")
    if fileio.exists(previous) and json.loads(fileio.read_text(previous))["vocabulary"] != vocabulary:
        raise ValueError(f"{output_dir!r} holds shards of another vocabulary; use a new output folder")
    todo = [(i, p) for i, p in enumerate(inputs) if not fileio.exists(_done_path(output_dir, i, p))]
    options = dict(spm_model=spm_model, domain_field=domain_field, text_field=text_field,
                   validation_fraction=validation_fraction, test_fraction=test_fraction, split=split,
                   on_error=on_error)
    skipped = 0
    if todo:
        pipeline = beam.Pipeline(options=PipelineOptions(list(beam_args)))
        _build(pipeline, todo, output_dir, options)
        with quiet_lib.native_stderr_muted() if quiet else contextlib.nullcontext():
            result = pipeline.run()
            result.wait_until_finish()
        counters = result.metrics().query(beam.metrics.MetricsFilter().with_name("skipped_records"))["counters"]
        skipped = int(sum(c.committed or 0 for c in counters))
    index = write_index(output_dir, vocabulary)
    index["inputs_processed"], index["skipped_records"] = len(todo), skipped
    return index


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="glob of .jsonl, .jsonl.zst or .txt files")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--spm_model", default="", help="SentencePiece model (default: bytes)")
    parser.add_argument("--domain_field", default="meta/pile_set_name",
                        help="path of the field that names a record's domain (any jsonl corpus)")
    parser.add_argument("--text_field", default="text")
    parser.add_argument("--validation_fraction", type=float, default=0.0,
                        help="hold out this fraction of documents (by a hash of their text) as validation")
    parser.add_argument("--test_fraction", type=float, default=0.0,
                        help="hold out this fraction of documents (by the same hash) as test, where results are judged")
    parser.add_argument("--split", default="", help="put every document in this split (train, validation or test)")
    parser.add_argument("--on_error", default="fail", choices=["fail", "skip"])
    parser.add_argument("--verbose", action="store_true", help="Beam's, TensorFlow's and GCP's own logs too")
    args, beam_args = parser.parse_known_args(argv)
    if not args.verbose:
        _quiet()
    inputs = find_inputs(args.input)
    if not inputs:
        print(f"error: no files match {args.input!r}", file=sys.stderr)
        raise SystemExit(1)
    try:
        index = preprocess(inputs, args.output_dir, spm_model=args.spm_model, domain_field=args.domain_field,
                           text_field=args.text_field, validation_fraction=args.validation_fraction,
                           test_fraction=args.test_fraction,
                           split=args.split, on_error=args.on_error, beam_args=beam_args, quiet=not args.verbose)
    except (PreprocessError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as e:  # noqa: BLE001 - Beam wraps a worker's error in its own
        cause = _preprocess_error(e)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        raise SystemExit(1) from None
    for domain, splits in index["domains"].items():
        for split, t in splits.items():
            print(f"{domain:<24}{split:<11}{t['documents']:>12,} documents {t['tokens']:>16,} tokens {t['bytes']:>16,} bytes")
    print(f"{index['inputs_processed']} input file(s) processed, {len(inputs) - index['inputs_processed']} already done; "
          f"{index['skipped_records']} malformed record(s) skipped; index: {os.path.join(args.output_dir, 'index.json')}")


def _quiet() -> None:
    """Only this entry's lines: one per finished input, the table, or the one-line error.
    Beam logs a worker's error with its traceback before raising it (reported here as one
    line), and Beam, GCP and TensorFlow log routine start-up warnings."""
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    tensorflow_runtime.tensorflow()
    with quiet.native_stderr_muted():
        import apache_beam  # noqa: F401


def _preprocess_error(e: BaseException) -> str | None:
    """The PreprocessError inside a runner's exception (a worker's error arrives wrapped,
    its message carrying ours), as one line."""
    seen = e
    while seen is not None:
        if isinstance(seen, PreprocessError):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    text = str(e)
    marker = "PreprocessError: "
    if marker in text:
        return text.split(marker, 1)[1].splitlines()[0].strip().strip("'\"[]")
    return None


if __name__ == "__main__":
    main()
