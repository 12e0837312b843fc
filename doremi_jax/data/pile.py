"""`python -m doremi_jax.data.pile --input 'PATH/*.jsonl.zst' --output_dir OUT`.

The Pile (domains by `meta.pile_set_name`), or any jsonl corpus with `--domain_field`,
into the layout doremi_jax reads. By default this is the Apache Beam preprocessing
(`doremi_jax.data.preprocess`: tokenized ArrayRecord shards and an index; its flags,
`--spm_model`, `--validation_fraction`, `--test_fraction` or `--split`, and Beam's runner flags, pass
through). With `--format=jsonl`, the text itself is split, in one process, into
`OUT/<domain>/<split>-NNNNN.jsonl` shards with `OUT/<split>_counts.json` (documents and
UTF-8 bytes per domain), to be tokenized by the trainer. Domain names become folder
names with spaces and slashes replaced by underscores ("PubMed Central" ->
"PubMed_Central"). Reads `.jsonl` and `.jsonl.zst`.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import sys
from typing import Iterator

from doremi_jax.data.weights import folder_name


def _lines(path: str) -> Iterator[bytes]:
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise SystemExit(f"error: {path}: reading .zst needs `pip install zstandard`") from None
        with open(path, "rb") as f:
            reader = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(f))
            yield from reader
    else:
        with open(path, "rb") as f:
            yield from f


def _field(record: dict, path: str):
    for key in path.split("/"):
        record = record[key]
    return record


def split_pile(
    inputs: list[str],
    output_dir: str,
    split: str = "train",
    shard_docs: int = 100_000,
    domain_field: str = "meta/pile_set_name",
    text_field: str = "text",
) -> dict:
    """Split jsonl records by the value of `domain_field` (a path, "meta/pile_set_name"
    for The Pile) into the folder layout; returns the counts per domain."""
    counts: dict[str, dict[str, int]] = {}
    writers: dict[str, tuple] = {}  # domain -> (file, shard index, docs in shard)
    os.makedirs(output_dir, exist_ok=True)

    def write(domain: str, text: str) -> None:
        f, shard, n = writers.get(domain, (None, -1, shard_docs))
        if n >= shard_docs:
            if f:
                f.close()
            shard, n = shard + 1, 0
            os.makedirs(os.path.join(output_dir, domain), exist_ok=True)
            f = open(os.path.join(output_dir, domain, f"{split}-{shard:05d}.jsonl"), "w", encoding="utf-8")
        f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        writers[domain] = (f, shard, n + 1)
        c = counts.setdefault(domain, {"documents": 0, "bytes": 0})
        c["documents"] += 1
        c["bytes"] += len(text.encode("utf-8"))

    try:
        for path in inputs:
            for lineno, line in enumerate(_lines(path), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    domain = folder_name(str(_field(record, domain_field)))
                    text = _field(record, text_field)
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise SystemExit(
                        f"error: {path}:{lineno}: not a record with {text_field!r} and {domain_field!r}"
                    ) from None
                write(domain, text)
    finally:
        for f, _, _ in writers.values():
            f.close()
    with open(os.path.join(output_dir, f"{split}_counts.json"), "w") as f:
        json.dump(dict(sorted(counts.items())), f, indent=2)
    return counts


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--format=jsonl" not in argv:
        from doremi_jax.data import preprocess

        return preprocess.main([a for a in argv if a != "--format=shards"])
    argv.remove("--format=jsonl")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="glob of .jsonl or .jsonl.zst files")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--split", default="train", choices=["train", "validation", "test"])
    parser.add_argument("--shard_docs", type=int, default=100_000)
    parser.add_argument("--domain_field", default="meta/pile_set_name",
                        help="path of the field that names a record's domain (any jsonl corpus)")
    parser.add_argument("--text_field", default="text")
    args = parser.parse_args(argv)
    inputs = sorted(glob.glob(args.input))
    if not inputs:
        print(f"error: no files match {args.input!r}", file=sys.stderr)
        raise SystemExit(1)
    counts = split_pile(inputs, args.output_dir, args.split, args.shard_docs, args.domain_field, args.text_field)
    for domain, c in sorted(counts.items()):
        print(f"{domain:<24}{c['documents']:>12,} documents {c['bytes']:>16,} bytes")


if __name__ == "__main__":
    main()
