"""The launch scripts' dry runs print the exact commands they would run."""

import os
import shlex
import subprocess

from conftest import REPO


def dry(script, *args, env=None):
    out = subprocess.run(
        ["bash", os.path.join(REPO, "launch", script), "--dry-run", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.strip().splitlines()]


def test_tpu_vm_create_setup_delete():
    env = {"TPU_NAME": "pod", "ZONE": "us-east5-a", "ACCELERATOR_TYPE": "v5p-64"}
    (create,) = dry("tpu_vm.sh", "create", env=env)
    assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod", "--accelerator-type=v5p-64",
                      "--version=tpu-ubuntu2204-base", "--zone=us-east5-a"]
    scp, install = dry("tpu_vm.sh", "setup", env=env)
    assert scp[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse"] and "--worker=all" in scp
    assert install[4:7] == ["ssh", "pod", "--worker=all"] and "pip install -e ." in install[7]
    (delete,) = dry("tpu_vm.sh", "delete", env=env)
    assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod", "--quiet", "--zone=us-east5-a"]


def test_tpu_vm_run_passes_gin_arguments_to_every_host():
    (ssh,) = dry("tpu_vm.sh", "--name", "v4", "run", "pipeline", "demo", "--gin_file=gin/experiments/demo.gin", "--gin.DATA_DIR='/data/my corpus'")
    assert ssh[4:7] == ["ssh", "v4", "--worker=all"]
    remote = shlex.split(ssh[7].split("&& DOREMI_DISTRIBUTED=1 nohup ")[1].split(" > ")[0])
    assert remote == ["python", "-m", "doremi_jax.pipeline", "--gin_file=gin/experiments/demo.gin",
                      "--gin.DATA_DIR='/data/my corpus'", "--workdir=$HOME/doremi_runs/demo"]


def test_tpu_vm_quotes_the_run_name_for_the_remote_shell(tmp_path):
    """A run name with a space, a quote and a command in it stays one folder name."""
    name = "my run's; touch pwned"
    (ssh,) = dry("tpu_vm.sh", "run", "train", name, "--gin_file=gin/runs/reference.gin")
    remote = ssh[7].removeprefix("--command=")
    # What the remote shell would run, expanded here with a stand-in HOME.
    script = remote.replace("cd doremi_jax && ", "").replace("nohup python", "echo").rstrip(" &")
    out = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "HOME": str(tmp_path)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(tmp_path / "doremi_runs")) == [name] and not (tmp_path / "pwned").exists()
    logged = (tmp_path / "doremi_runs" / name / "log.txt").read_text()
    assert logged.strip().endswith(f"--workdir={tmp_path}/doremi_runs/{name}")
    bad = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu_vm.sh"), "--dry-run", "run", "train;rm", "x"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "is not a doremi_jax module name" in bad.stderr


def test_sweep_expands_the_grid_into_distinct_workdirs():
    lines = dry("tpu_vm.sh", "sweep", "train", "eta", "DoReMi.learning_rate=0.1,1", "DoReMi.smoothing=1e-4,1e-3",
                "--", "--gin_file=gin/runs/proxy.gin")
    remotes = [line[7] for line in lines]
    assert len(remotes) == 4
    workdirs = {r.split("--workdir=")[1].split(" ")[0] for r in remotes}
    assert workdirs == {f"$HOME/doremi_runs/eta/learning_rate_{a}_smoothing_{b}" for a in ("0.1", "1") for b in ("1e-4", "1e-3")}
    for r in remotes:
        assert "--gin_file=gin/runs/proxy.gin" in r and r.count("--gin.DoReMi.") == 2


def test_multiprocess_cpu_and_local():
    procs = dry("multiprocess_cpu.sh", "-n", "3", "-d", "2", "-p", "2222", "train", "--workdir=/tmp/x")
    assert len(procs) == 3
    for i, cmd in enumerate(procs):
        assert cmd == ["env", "JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_force_host_platform_device_count=2",
                       "DOREMI_COORDINATOR=127.0.0.1:2222", "DOREMI_NUM_PROCESSES=3", f"DOREMI_PROCESS_ID={i}",
                       "python", "-m", "doremi_jax.train", "--workdir=/tmp/x"]
    (local,) = dry("local.sh", "train", "runs/r", "--gin_file=gin/runs/reference.gin")
    assert local == ["python", "-m", "doremi_jax.train", "--gin_file=gin/runs/reference.gin", "--workdir=runs/r"]
