"""Preprocessing throughput on Beam's DirectRunner, and the input's rows per second.

    python benchmarks/data_pipeline.py --megabytes 64 --workers 1 2 --root /tmp/data_pipeline

1. Writes a jsonl corpus of about `--megabytes` MB of English-like text (4 input files,
   4 domains named in `meta/source`), then runs `python -m doremi_jax.data.preprocess`
   (byte vocabulary, 1% held out) once per worker count on the multi-processing
   DirectRunner, each into a fresh folder: wall time, input MB/s and MB/s per worker
   (Beam's start-up included, as a user pays it).
2. Builds batches (16 rows of 128 tokens, uniform weights) from the same corpus read
   three ways: the Beam shards by window (`data/shards.py`, grain), the same tokens as a
   memory-mapped `.tokens.npy` per domain, and as arrays in memory; rows/s, median of 5
   rounds of 50 batches.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

WORDS = ("the of and to in is was for on that with as by at from his her which data model "
         "loss domain weight mixture token train proxy reference step batch river mountain city").split()


def write_corpus(folder: str, megabytes: float, files: int = 4, seed: int = 0) -> int:
    rng = random.Random(seed)
    os.makedirs(folder, exist_ok=True)
    per_file, total = int(megabytes * 2**20 / files), 0
    for f in range(files):
        written = 0
        with open(os.path.join(folder, f"part-{f}.jsonl"), "w") as out:
            while written < per_file:
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(50, 800)))
                line = json.dumps({"text": text, "meta": {"source": f"domain{rng.randrange(4)}"}}) + "\n"
                out.write(line)
                written += len(line)
        total += written
    return total


def preprocess(inputs: str, out: str, workers: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "doremi_jax.data.preprocess", f"--input={inputs}/*.jsonl", f"--output_dir={out}",
         "--domain_field=meta/source", "--validation_fraction=0.01", f"--direct_num_workers={workers}",
         "--direct_running_mode=multi_processing"],
        cwd=REPO, check=True, capture_output=True,
    )
    return time.perf_counter() - start


def rows_per_second(streams, rounds: int = 5, batches: int = 50) -> float:
    from doremi_jax.data.sampler import MixtureSampler

    sampler = MixtureSampler(streams, 128, seed=0)
    weights = np.full(len(streams), 1 / len(streams))
    rates = []
    for r in range(rounds):
        t = time.perf_counter()
        for step in range(batches):
            sampler.batch(r * batches + step, range(16), weights)
        rates.append(16 * batches / (time.perf_counter() - t))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=float, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--root", default="/tmp/data_pipeline")
    args = parser.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)
    inputs = os.path.join(args.root, "inputs")
    size = write_corpus(inputs, args.megabytes)
    result = {"input_mb": size / 2**20, "preprocess": []}
    out = None
    for w in args.workers:
        out = os.path.join(args.root, f"out_{w}")
        wall = preprocess(inputs, out, w)
        result["preprocess"].append({"workers": w, "wall_s": wall, "mb_per_s": size / 2**20 / wall,
                                     "mb_per_s_per_worker": size / 2**20 / wall / w})

    from doremi_jax.data import corpus as corpus_lib, streams as streams_lib, vocab as vocab_lib

    vocab = vocab_lib.make_vocabulary("byte")
    sharded = corpus_lib.load_corpus(out, vocab, splits=("train",)).streams["train"]
    memmapped, in_memory = [], []
    for i, s in enumerate(sharded):
        tokens = np.asarray(s.tokens[0:s.num_tokens], np.int32)
        path = os.path.join(args.root, f"mm{i}.npy")
        np.save(path, tokens)
        memmapped.append(streams_lib.TokenStream(np.load(path, mmap_mode="r"), s.doc_starts, s.num_bytes))
        in_memory.append(streams_lib.TokenStream(tokens, s.doc_starts, s.num_bytes))
    result["rows_per_s"] = {
        "beam_shards_by_window": rows_per_second(sharded),
        "memory_mapped_npy": rows_per_second(memmapped),
        "in_memory": rows_per_second(in_memory),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
