"""Kills anywhere in a pipeline's life (start-up, compile, restore, steps, checkpoint
writes, final evaluations, summary/weights/report writes), at named points and at random
times: the resumed run's every file equals an uninterrupted run's."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO
from helpers import final_state, metric_rows

pytestmark = pytest.mark.slow  # subprocess runs: see pytest.ini for the fast tier


PIPELINE = ["--gin_file=gin/experiments/demo.gin", "--gin_file=gin/models/tiny.gin", "--gin.BATCH_SIZE=8",
            "--gin.SEQUENCE_LENGTH=64", "--gin.TRAIN_STEPS=8", "--gin.WARMUP_STEPS=2",
            "--gin.TrainConfig.eval_tokens_per_domain=512", "--gin.TrainConfig.checkpoint_every=2",
            "--gin.TrainConfig.tensorboard=False", "--gin.run_pipeline.max_rounds=1", "--gin.run_pipeline.main_seeds=[]",
            "--gin.main/TrainConfig.eval_every=4", "--gin.main/DownstreamConfig.max_examples=4",
            "--gin.main/DownstreamConfig.prompt_length=48", "--gin.main/DownstreamConfig.max_new_tokens=4"]


def run_pipeline_until(workdir, data_dir, kill_after_s, fault=None):
    """Start the pipeline entry on the corpus in `data_dir` (with DOREMI_FAULT=`fault`:
    killed at that named point); SIGKILL it after `kill_after_s` seconds unless it ends
    first. Returns its exit code."""
    env = {**os.environ, "DOREMI_FAULT": fault} if fault else None
    args = [*PIPELINE, f"--gin.DATA_DIR={data_dir!r}", f"--workdir={workdir}"]
    proc = subprocess.Popen([sys.executable, "-m", "doremi_jax.pipeline", *args],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        proc.wait(timeout=kill_after_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=60)
    err = proc.stderr.read()
    assert proc.returncode in (0, -signal.SIGKILL), err[-2000:]
    return proc.returncode


@pytest.fixture(scope="module")
def clean_pipeline(tmp_path_factory, demo_dir):
    """One uninterrupted pipeline run, its corpus and its length, for every kill test to
    match. Paths are data, not gin source: the workdir and the corpus's folder hold a
    space and a quote (pasted into a stage's gin unquoted, they would break every stage)."""
    import shutil

    root = tmp_path_factory.mktemp("pipeline")
    data_dir = str(root / "the corpus's copy")
    shutil.copytree(demo_dir, data_dir)
    workdir = str(root / "clean run's dir")
    start = time.perf_counter()
    assert run_pipeline_until(workdir, data_dir, 900) == 0
    return workdir, data_dir, time.perf_counter() - start


# What differs between two runs of one experiment by design: the step a run (re)started
# at and how many batches its prefetcher built; the stages' fingerprints (they hash the
# folders a stage reads, its reference's), and the folder itself.
PER_START = ("start_step", "prefetch")
PER_FOLDER = ("fingerprint", "pipeline_stage")


def every_output(workdir):
    """Every file of a pipeline's workdir but the checkpoints (compared as parameters):
    metrics rows (eval and downstream rows included), summaries less what is per start,
    eval.json, report.md, weights, records and plots, with the workdir's path replaced."""
    out = {}
    for root, dirs, files in os.walk(workdir):
        dirs[:] = [d for d in dirs if not d.startswith("checkpoints")]
        for name in files:
            path = os.path.join(root, name)
            key = os.path.relpath(path, workdir)
            if name == "summary.json":
                out[key] = {k: v for k, v in json.load(open(path)).items() if k not in PER_START}
            elif name in ("run.json", "stage.json"):
                out[key] = {k: v for k, v in json.load(open(path)).items() if k not in PER_FOLDER}
            elif name == "metrics.jsonl":
                out[key] = metric_rows(root)
            elif name.endswith(".png"):
                out[key] = os.path.getsize(path) > 0
            elif name.endswith(".gin"):  # gin wraps and quotes a long path by its length:
                # compared without layout, quotes and the folder's name
                layout = re.compile(r"""[\s'"()\\]""")
                out[key] = layout.sub("", open(path).read()).replace(layout.sub("", workdir), "<workdir>")
            else:
                out[key] = open(path, "rb").read().replace(workdir.encode(), b"<workdir>")
    for stage in ("round_1/reference", "round_1/proxy", "main_doremi", "main_baseline"):
        params, _ = final_state(os.path.join(workdir, stage))
        out[f"{stage}/params"] = [np.asarray(x).tobytes() for x in jax.tree.leaves(params)]
    return out


# In the order a run meets them: the second checkpoint write of the reference (in
# flight), the metrics truncation of the resumed reference, after its final evaluation
# rows (before summary.json), between its summary.json and stage.json, and during the
# report (its plots written, report.md not yet).
NAMED_POINTS = ["checkpoint_save@2", "metrics_truncation", "after_final_eval", "before_stage_record", "report"]


def test_kills_at_named_points_then_every_file_as_unkilled(clean_pipeline, tmp_path):
    clean, data_dir, _ = clean_pipeline
    killed = str(tmp_path / "killed run's dir")
    for point in NAMED_POINTS:
        assert run_pipeline_until(killed, data_dir, 900, fault=point) == -signal.SIGKILL, f"{point} was not reached"
    assert run_pipeline_until(killed, data_dir, 900) == 0
    got, want = every_output(killed), every_output(clean)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key] == want[key], key


def test_random_kills_over_the_pipelines_life_then_identical_results(clean_pipeline, tmp_path):
    """Kill times drawn uniformly over the measured length of an uninterrupted run; the
    seed (DOREMI_KILL_SEED, default: the clock) is printed so a failure replays."""
    seed = int(os.environ.get("DOREMI_KILL_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    clean, data_dir, length = clean_pipeline
    # Three attempts, each killed at a time drawn over the whole run's length; one that
    # ends first counts as finished, and the attempts after it land in a rerun's
    # start-up, skips and report writes. The uninterrupted run compiled with a cold
    # compilation cache; when a warm run ends before every kill, the schedule is drawn
    # again, in a fresh folder, over that warm run's length.
    for attempt in range(2):
        killed = str(tmp_path / f"killed run's dir {attempt}")
        schedule, finished_in = [], None
        for _ in range(3):
            kill_at = rng.uniform(0.5, length)
            start = time.perf_counter()
            code = run_pipeline_until(killed, data_dir, kill_at)
            if code == 0 and not schedule:
                finished_in = time.perf_counter() - start
            schedule.append(f"{'killed' if code else 'finished before'} {kill_at:.2f} s")
        print(f"DOREMI_KILL_SEED={seed}: {schedule} (uninterrupted run {length:.1f} s)")
        if any(s.startswith("killed") for s in schedule) or finished_in is None:
            break
        length = finished_in
    assert any(s.startswith("killed") for s in schedule)
    if run_pipeline_until(killed, data_dir, 900) != 0:
        pytest.fail(f"DOREMI_KILL_SEED={seed}: the final run failed")
    got, want = every_output(killed), every_output(clean)
    assert sorted(got) == sorted(want), f"DOREMI_KILL_SEED={seed}, kills {schedule}"
    for key in want:
        assert got[key] == want[key], f"{key}: DOREMI_KILL_SEED={seed}, kills {schedule}"
