"""Two CPU processes x 4 devices (jax.distributed, gloo) equal one process x 8 devices."""

import json
import os
import socket
import subprocess

import jax
import numpy as np
import pytest

from doremi_jax import checkpoints, cli, sharding
from doremi_jax.train import __main__ as train_main
from doremi_jax.train import setup

from conftest import REPO
from helpers import TINY

pytestmark = pytest.mark.slow  # subprocess runs: see pytest.ini for the fast tier

COMMON = ["--gin_file=gin/models/tiny.gin", "--gin.BATCH_SIZE=8", "--gin.SEQUENCE_LENGTH=64",
          "--gin.TrainConfig.eval_tokens_per_domain=512"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_process(args):
    with pytest.raises(SystemExit) as e:
        cli.main(train_main.run, args)
        raise SystemExit(0)
    assert e.value.code == 0


def trajectory(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return np.asarray([[r[k] for k in sorted(r) if k.startswith("domain_weights/")] + [r["loss"]] for r in rows if "loss" in r])


def test_two_processes_equal_one(tmp_path):
    ref, single, multi = (str(tmp_path / n) for n in ("ref", "single", "multi"))
    in_process(["--gin_file=gin/runs/reference.gin", *COMMON, "--gin.TRAIN_STEPS=4", f"--workdir={ref}"])
    proxy = ["--gin_file=gin/runs/proxy.gin", *COMMON, "--gin.TRAIN_STEPS=6", f"--gin.REFERENCE_DIR='{ref}'"]
    in_process([*proxy, f"--workdir={single}"])
    out = subprocess.run(
        ["bash", "launch/multiprocess_cpu.sh", "-n", "2", "-d", "4", "-p", str(free_port()), "train", *proxy, f"--workdir={multi}"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # Process 0 alone wrote metrics: one line per step, not two.
    a, b = trajectory(single), trajectory(multi)
    assert a.shape == b.shape == (6, 5)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    w1 = json.load(open(os.path.join(single, "domain_weights.json")))
    w2 = json.load(open(os.path.join(multi, "domain_weights.json")))
    assert w2 == pytest.approx(w1, abs=1e-6)
    # Final parameters of both runs, restored from their orbax checkpoints.
    mesh_cfg = sharding.MeshConfig(data=-1)
    abstract = setup.abstract_params(TINY, sharding.make_mesh(mesh_cfg), mesh_cfg.rules)[0]
    p1 = checkpoints.restore_params(os.path.join(single, "checkpoints"), abstract)
    p2 = checkpoints.restore_params(os.path.join(multi, "checkpoints"), abstract)
    for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-5)


def test_regmix_small_runs_are_shared_out_between_hosts(tmp_path):
    """Two processes: every DoReMi stage and main model spans both; RegMix's small runs
    go one per host (run i on host i mod 2, on its own 4 devices), and both hosts read
    every run's result for the fit."""
    from test_command_line import SHRINK

    workdir = str(tmp_path / "pipeline")
    out = subprocess.run(
        ["bash", "launch/multiprocess_cpu.sh", "-n", "2", "-d", "4", "-p", str(free_port()), "pipeline",
         "--gin_file=gin/experiments/compare_demo.gin", *SHRINK, "--gin.TRAIN_STEPS=4",
         "--gin.regmix/TRAIN_STEPS=6", "--gin.RegMixConfig.runs=4", "--gin.run_pipeline.methods=['regmix']",
         "--gin.main/DownstreamConfig.tasks=[]",
         "--gin.TrainConfig.tensorboard=False", f"--workdir={workdir}"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
    )
    # Both processes' last lines: a failure in one shows up as the other's shutdown error.
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]

    def processes(stage):
        return json.load(open(os.path.join(workdir, stage, "summary.json")))["processes"]

    assert [processes(f"regmix/run_{i:03d}") for i in range(4)] == [[0], [1], [0], [1]]
    for stage in ("round_1/reference", "round_1/proxy", "main_doremi", "main_baseline", "main_regmix"):
        assert processes(stage) == [0, 1], stage
    runs = json.load(open(os.path.join(workdir, "regmix", "runs.json")))["runs"]
    assert [r["run"] for r in runs] == [0, 1, 2, 3] and all(np.isfinite(r["target_loss"]) for r in runs)
    for i, run in enumerate(runs):  # each host's run is its own, on its own mixture
        summary = json.load(open(os.path.join(workdir, f"regmix/run_{i:03d}", "summary.json")))
        assert summary["step"] == 6 and summary["sampling_weights"] == pytest.approx(run["mixture"], abs=1e-6)
        # Alone on a host a run keeps no checkpoint (checkpoints.Checkpointer); the main runs do.
        assert not os.path.exists(os.path.join(workdir, f"regmix/run_{i:03d}", "checkpoints"))
    assert os.listdir(os.path.join(workdir, "main_regmix", "checkpoints"))
