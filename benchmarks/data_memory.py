"""Peak memory and start-up of a training process against the size of its corpus.

    python benchmarks/data_memory.py --sizes_gib 1 4 16 --root /tmp/data_memory [--layout shards]

Writes, per size, a two-domain corpus of pre-tokenized `train.tokens.npy` (random byte
ids, an EOS about every 500 tokens; int32, half the size per domain), or with
`--layout shards` the Beam preprocessing's output for the same number of tokens
(ArrayRecord shards of 1 GiB of int32 tokens each, through `preprocess.write_shard`,
documents of 1,400 tokens as the Pile's average, their length files and index.json),
then runs
`python -m doremi_jax.train` on it twice (3 steps of the tiny model): the first start
builds the document index (one chunked pass over the files), the second reads it from
the cache. Prints one JSON line per run: peak RSS of the process (VmHWM: ru_maxrss would
include this parent's high-water mark, which Linux carries across fork and exec), the time
from start to the first step line, and the wall time of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = (
    "import sys\n"
    "from doremi_jax import cli\n"
    "from doremi_jax.train import __main__ as entry\n"
    "cli.main(entry.run, sys.argv[1:])\n"
    "print('PEAK_RSS_KIB', open('/proc/self/status').read().split('VmHWM:')[1].split()[0], flush=True)\n"
)


def write_domain(folder: str, tokens: int, seed: int, chunk: int = 1 << 24) -> None:
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for split, size in (("train", tokens), ("validation", 100_000)):
        out = np.lib.format.open_memmap(os.path.join(folder, f"{split}.tokens.npy"), "w+", np.int32, (size,))
        for start in range(0, size, chunk):
            part = rng.integers(3, 259, min(chunk, size - start)).astype(np.int32)
            part[rng.integers(0, len(part), len(part) // 500)] = 1
            out[start : start + len(part)] = part
        out.flush()
        del out


def write_shards(root: str, domain: str, tokens: int, seed: int, per_shard: int = 2**28) -> None:
    """`tokens` of random byte ids in documents of 1,400 tokens (the Pile's average),
    `per_shard` tokens per shard; an index.json entry is added by `write_index`."""
    from doremi_jax.data import preprocess

    rng = np.random.default_rng(seed)
    # Documents drawn from a pool: serializing is the writer's cost, not the point here.
    pool = [rng.integers(3, 259, 1399) for _ in range(64)]
    shard, left = 0, tokens
    while left > 0:
        n = min(per_shard, left) // 1400 or 1
        preprocess.write_shard(os.path.join(root, domain, f"train-{shard:05d}.array_record"),
                               (pool[i % 64] for i in range(n)))
        left -= n * 1400
        shard += 1
    preprocess.write_shard(os.path.join(root, domain, "validation-00000.array_record"), pool[:8])


def write_index(root: str) -> None:
    """index.json as the preprocessing writes it, from the shards' length files."""
    import glob

    index = {"vocabulary": "byte", "feature": "targets", "domains": {}, "shards": []}
    for lengths in sorted(glob.glob(os.path.join(root, "*", "*.lengths.npy"))):
        shard = os.path.relpath(lengths[: -len(".lengths.npy")], root)
        domain, split = shard.split(os.sep)[0], os.path.basename(shard).split("-")[0]
        counts = np.load(lengths)
        entry = {"domain": domain, "split": split, "shard": shard, "documents": int(counts.size),
                 "tokens": int(counts.sum()), "bytes": int(counts.sum())}
        index["shards"].append(entry)
        totals = index["domains"].setdefault(domain, {}).setdefault(split, {"documents": 0, "tokens": 0, "bytes": 0})
        for k in ("documents", "tokens", "bytes"):
            totals[k] += entry[k]
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump(index, f, indent=1)


def run_training(data_dir: str, workdir: str, cache: str) -> dict:
    args = [
        "--gin_file=gin/runs/reference.gin", "--gin_file=gin/data/folder.gin", "--gin_file=gin/models/tiny.gin",
        f"--gin.DATA_DIR='{data_dir}'", "--gin.TRAIN_STEPS=3", "--gin.BATCH_SIZE=8", "--gin.SEQUENCE_LENGTH=64",
        "--gin.TrainConfig.eval_tokens_per_domain=512", "--gin.TrainConfig.tensorboard=False", f"--workdir={workdir}",
    ]
    env = {**os.environ, "DOREMI_CACHE": cache}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first_step, rss = None, None
    for line in proc.stdout:
        if line.startswith("step ") and first_step is None:
            first_step = time.perf_counter() - t0
        if line.startswith("PEAK_RSS_KIB"):
            rss = int(line.split()[1]) * 1024
    proc.wait()
    if proc.returncode:
        raise SystemExit(proc.stderr.read()[-2000:])
    return {"seconds_to_first_step": first_step, "wall_seconds": time.perf_counter() - t0, "peak_rss_mib": rss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes_gib", type=float, nargs="+", default=[1, 4, 16])
    parser.add_argument("--root", default=None, help="where the corpora are written (removed after each size)")
    parser.add_argument("--layout", choices=("tokens", "shards"), default="tokens")
    args = parser.parse_args()
    root = args.root or tempfile.mkdtemp(prefix="data_memory-")
    for size in args.sizes_gib:
        data = os.path.join(root, f"corpus_{size:g}gib")
        per_domain = int(size * 2**30 / 4 / 2)
        t0 = time.perf_counter()
        for i, domain in enumerate(("a", "b")):
            if args.layout == "shards":
                write_shards(data, domain, per_domain, i)
            else:
                write_domain(os.path.join(data, domain), per_domain, i)
        if args.layout == "shards":
            write_index(data)
        written = time.perf_counter() - t0
        cache = os.path.join(root, f"cache_{size:g}")
        # Shards have no index to build: the length files are the index, read at each start.
        for attempt in ("index built", "index cached") if args.layout == "tokens" else ("first", "second"):
            result = run_training(data, os.path.join(root, f"w_{size:g}_{attempt[-5]}"), cache)
            print(json.dumps({"layout": args.layout, "corpus_gib": size, "start": attempt, "write_s": written,
                              **result}), flush=True)
        shutil.rmtree(data)
        shutil.rmtree(cache, ignore_errors=True)
        for name in os.listdir(root):
            if name.startswith(f"w_{size:g}_"):
                shutil.rmtree(os.path.join(root, name))


if __name__ == "__main__":
    main()
