"""Which DoReMi settings help at the demo's scale: main models over three seeds.

    python benchmarks/small_scale_rule.py --root /tmp/small_scale_rule

Runs the demo pipeline (`gin/experiments/demo.gin`, three main seeds, no downstream
task) once per setting: one or two rounds, η (DoReMi.learning_rate) 1, 0.3 and 0.1, and
stratified proxy batches. The reference and the baseline main models do not depend on
these settings: they are trained in the first setting's workdir and copied into the
others, where the pipeline skips them (a stage's fingerprint leaves its folder out).
Prints, per setting, the DoReMi weights and the paired change against the baseline
(mean ± standard deviation over seeds) of the average and worst-case log-perplexity,
and the domains improved beyond the spread; then one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--gin_file=gin/experiments/demo.gin", "--gin.run_pipeline.main_seeds=[0, 1, 2]",
          "--gin.main/DownstreamConfig.tasks=[]", "--gin.run_pipeline.max_rounds=1"]
SETTINGS = {
    "1 round, eta 1": [],
    "2 rounds, eta 1": ["--gin.run_pipeline.max_rounds=2"],
    "1 round, eta 0.3": ["--gin.proxy/DoReMi.learning_rate=0.3"],
    "1 round, eta 0.1": ["--gin.proxy/DoReMi.learning_rate=0.1"],
    "1 round, eta 1, stratified": ["--gin.proxy/DataConfig.stratified=True"],
}
SHARED = ["round_1/reference", "main_baseline_seed0", "main_baseline_seed1", "main_baseline_seed2"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="/tmp/small_scale_rule")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    args = parser.parse_args()
    results = {}
    first = None
    for name in args.settings:
        workdir = os.path.join(args.root, name.replace(" ", "_").replace(",", ""))
        if first is not None:
            for stage in SHARED:
                if not os.path.exists(os.path.join(workdir, stage)):
                    shutil.copytree(os.path.join(first, stage), os.path.join(workdir, stage))
        done = subprocess.run([sys.executable, "-m", "doremi_jax.pipeline", *COMMON, *SETTINGS[name],
                               f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        first = first or workdir
        evaluation = json.load(open(os.path.join(workdir, "eval.json")))
        seeds = evaluation["across_seeds"]
        results[name] = {
            "weights": evaluation["doremi_weights"],
            "average": {k: seeds["average"][k]["mean"] for k in ("baseline", "doremi")},
            "average_change": {k: seeds["average"]["change"][k] for k in ("mean", "std")},
            "worst_change": {k: seeds["worst"]["change"][k] for k in ("mean", "std")},
            "improved_beyond_spread": seeds["improved"],
            "worse_beyond_spread": seeds["worse"],
            "retrained": [line.split("]")[0][1:] for line in done.stdout.splitlines()
                          if line.startswith("[") and " run on corpus " in line],
        }
        print(name, json.dumps(results[name]), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
