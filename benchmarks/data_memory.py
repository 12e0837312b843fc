"""Peak memory and start-up of a training process against the size of its corpus.

    python benchmarks/data_memory.py --sizes_gib 1 4 16 --root /tmp/data_memory

Writes, per size, a two-domain corpus of pre-tokenized `train.tokens.npy` (random byte
ids, an EOS about every 500 tokens; int32, half the size per domain), then runs
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
    args = parser.parse_args()
    root = args.root or tempfile.mkdtemp(prefix="data_memory-")
    for size in args.sizes_gib:
        data = os.path.join(root, f"corpus_{size:g}gib")
        per_domain = int(size * 2**30 / 4 / 2)
        for i, domain in enumerate(("a", "b")):
            write_domain(os.path.join(data, domain), per_domain, i)
        cache = os.path.join(root, f"cache_{size:g}")
        for attempt in ("index built", "index cached"):
            result = run_training(data, os.path.join(root, f"w_{size:g}_{attempt[6]}"), cache)
            print(json.dumps({"corpus_gib": size, "start": attempt, **result}), flush=True)
        shutil.rmtree(data)
        shutil.rmtree(cache, ignore_errors=True)
        for name in os.listdir(root):
            if name.startswith(f"w_{size:g}_"):
                shutil.rmtree(os.path.join(root, name))


if __name__ == "__main__":
    main()
