"""What the prefetch thread buys: training steps/s with batches built ahead or on demand.

    python benchmarks/input_overlap.py --root /tmp/input_overlap

Preprocesses a small jsonl corpus into Beam shards (`data_pipeline.py`'s synthetic text,
4 domains), so batches are read by window through grain as at scale, then trains the tiny
model on it from the command line (`python -m doremi_jax.train`, batch 64 x 128) with a
fixed mixture (`gin/runs/reference.gin`) and with live rates (`gin/runs/odm.gin`: the
rates of step t+1 are known only after step t), each with `TrainConfig.prefetch` 0 and 2.
Per run: the median tokens/s of the progress lines after the first (compilation), and
the rows the prefetcher rebuilt (live rates). Also the input alone: rows/s of the
sampler over the shards, against the rows/s the step consumes.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import data_pipeline  # noqa: E402


def train(data: str, workdir: str, run_gin: str, prefetch: int, steps: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "doremi_jax.train", f"--gin_file={run_gin}", "--gin_file=gin/data/folder.gin",
         "--gin_file=gin/models/tiny.gin", f"--gin.DATA_DIR='{data}'", f"--gin.TRAIN_STEPS={steps}",
         "--gin.BATCH_SIZE=64", "--gin.SEQUENCE_LENGTH=128", "--gin.TrainConfig.log_every=20",
         "--gin.TrainConfig.eval_tokens_per_domain=512", "--gin.TrainConfig.tensorboard=False",
         "--gin.TrainConfig.checkpoint_every=100000", f"--gin.TrainConfig.prefetch={prefetch}",
         f"--workdir={workdir}"],
        cwd=REPO, capture_output=True, text=True,
    )
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    rates = [float(m.group(1).replace(",", "")) for m in re.finditer(r"loss \S+ ([\d,]+) tokens/s", done.stdout)]
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    return {"tokens_per_s": statistics.median(rates[1:]), "prefetch_rows": summary["prefetch"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=float, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--root", default="/tmp/input_overlap")
    args = parser.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)
    inputs, data = os.path.join(args.root, "inputs"), os.path.join(args.root, "shards")
    data_pipeline.write_corpus(inputs, args.megabytes)
    data_pipeline.preprocess(inputs, data, 1)

    from doremi_jax.data import corpus as corpus_lib, vocab as vocab_lib

    streams = corpus_lib.load_corpus(data, vocab_lib.make_vocabulary("byte"), splits=("train",)).streams["train"]
    result = {"input_rows_per_s": data_pipeline.rows_per_second(streams), "runs": []}
    for name, gin_file in (("fixed", "gin/runs/reference.gin"), ("live (odm)", "gin/runs/odm.gin")):
        for prefetch in (0, 2):
            run = train(data, os.path.join(args.root, f"w_{prefetch}_{len(result['runs'])}"), gin_file, prefetch,
                        args.steps)
            run.update(rates=name, prefetch=prefetch, step_rows_per_s=run["tokens_per_s"] / 128)
            result["runs"].append(run)
            print(json.dumps(run), flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
