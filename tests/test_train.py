"""The train entry end to end: files written, resume, gin overrides, bad input."""

import json
import os
import subprocess
import sys

import jax
import pytest

from doremi_jax import cli
from doremi_jax.train import __main__ as train_main

from conftest import REPO
from helpers import damage_checkpoint

TINY_RUN = ["--gin_file=gin/runs/reference.gin", "--gin_file=gin/models/tiny.gin",
            "--gin.BATCH_SIZE=8", "--gin.SEQUENCE_LENGTH=64", "--gin.TrainConfig.eval_tokens_per_domain=512"]


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "doremi_jax.train", *args], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=600,
    )


def test_train_writes_outputs_and_resumes(tmp_path):
    workdir = str(tmp_path / "r")
    first = run_cli(*TINY_RUN, "--gin.TRAIN_STEPS=10", f"--workdir={workdir}")
    assert first.returncode == 0, first.stderr[-2000:]
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 11))
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert "10" in os.listdir(os.path.join(workdir, "checkpoints"))
    config = open(os.path.join(workdir, "config.gin")).read()
    assert "TrainConfig.train_steps = 10" in config or "TRAIN_STEPS = 10" in config
    second = run_cli(*TINY_RUN, "--gin.TRAIN_STEPS=20", f"--workdir={workdir}")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from step 10" in second.stdout
    assert "20" in os.listdir(os.path.join(workdir, "checkpoints"))
    steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl")) if '"loss"' in line]
    assert steps == list(range(1, 21))


def in_process(args, capsys):
    """Run the entry in this process; returns (exit code, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(train_main.run, args)
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


def test_a_second_run_of_one_shape_traces_no_step_again(tmp_path, capsys):
    """A pipeline trains many stages of one shape in one process (the main seeds, RegMix's
    small runs): the second reuses the first's jitted steps (`jit_cache`), so it traces
    neither its train nor its eval step, and the one change that alters the program (the
    step budget, inside the learning-rate schedule) does trace again."""
    traced = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            traced.append(kwargs.get("fun_name"))

    # Three layers: a shape no other test in this file compiles.
    args = [*TINY_RUN, "--gin.TRAIN_STEPS=2", "--gin.TransformerConfig.num_layers=3"]
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        runs = []
        for name, extra in (("a", "--gin.TrainConfig.seed=0"), ("b", "--gin.TrainConfig.seed=1"),
                            ("c", "--gin.TRAIN_STEPS=3")):
            traced.clear()
            code, err = in_process([*args, extra, f"--workdir={tmp_path / name}"], capsys)
            assert code == 0, err
            runs.append(list(traced))
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert "lm_step" in runs[0] and "eval_step" in runs[0], runs[0]
    assert "lm_step" not in runs[1] and "eval_step" not in runs[1] and "init_fn" not in runs[1], runs[1]
    assert "lm_step" in runs[2], runs[2]


def test_gin_override_reaches_the_model(tmp_path, capsys):
    workdir = str(tmp_path / "o")
    code, err = in_process([*TINY_RUN, "--gin.TRAIN_STEPS=2", "--gin.TransformerConfig.num_layers=1", f"--workdir={workdir}"], capsys)
    assert code == 0, err
    assert json.load(open(os.path.join(workdir, "run.json")))["model"]["num_layers"] == 1


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("done") / "run")
    with pytest.raises(SystemExit) as e:
        cli.main(train_main.run, [*TINY_RUN, "--gin.TRAIN_STEPS=2", f"--workdir={workdir}"])
        raise SystemExit(0)
    assert e.value.code == 0
    return workdir


BAD = [
    (["--gin.NoSuchThing.x=1"], 2, "gin:"),
    (["--gin_file=gin/models/missing.gin"], 2, "gin file 'gin/models/missing.gin' not found"),
    (["--gin.BATCH_SIZE=12"], 1, "BATCH_SIZE=12 is not divisible by the 8 data-parallel devices"),
    (["--gin.SEQUENCE_LENGTH=4096"], 1, "SEQUENCE_LENGTH=4096 exceeds the model's max_length=256"),
    (["--gin.MeshConfig.data=3"], 1, "needs 3 devices, but 8 are available"),
    (["--gin.REFERENCE_WEIGHTS='/nonexistent/w.json'"], 1, "weights file '/nonexistent/w.json' does not exist"),
    (["--gin.DATA_DIR='/nonexistent/data'"], 1, "DATA_DIR '/nonexistent/data' does not exist"),
    (["--gin.TransformerConfig.vocab_size=100"], 1, "vocabulary has 259 ids but TransformerConfig.vocab_size=100"),
]


@pytest.mark.parametrize("extra, code, message", BAD)
def test_bad_input_is_one_clear_line(tmp_path, capsys, extra, code, message):
    workdir = tmp_path / "w"
    got, err = in_process([*TINY_RUN, "--gin.TRAIN_STEPS=2", *extra, f"--workdir={workdir}"], capsys)
    assert got == code, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_workdir_of_another_experiment_is_refused_and_kept(finished_run, capsys):
    before = {f: os.path.getmtime(os.path.join(finished_run, f)) for f in os.listdir(finished_run)}
    code, err = in_process([*TINY_RUN, "--gin.TRAIN_STEPS=2", "--gin.TransformerConfig.num_layers=3", f"--workdir={finished_run}"], capsys)
    assert code == 1 and "holds another run (differs in ['model']: model.num_layers: 2 in the workdir, 3 now)" in err
    after = {f: os.path.getmtime(os.path.join(finished_run, f)) for f in os.listdir(finished_run)}
    assert before == after


def files_of(folder):
    return {os.path.relpath(os.path.join(root, name), folder): os.path.getmtime(os.path.join(root, name))
            for root, _, names in os.walk(folder) for name in names}


def test_resuming_with_another_optimizer_is_refused_and_moves_nothing(finished_run, capsys):
    """The resume that once set good checkpoints aside and trained again from step 0."""
    before = files_of(finished_run)
    code, err = in_process([*TINY_RUN, "--gin.TRAIN_STEPS=20", "--gin.OptimizerConfig.name='adafactor'",
                            f"--workdir={finished_run}"], capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert "differs in ['optimizer']: optimizer.name: 'adamw' in the workdir, 'adafactor' now" in err
    assert "--gin.train.overwrite=True" in err and f"--gin.train.load_parameters_from=\"'{finished_run}'\"" in err
    assert files_of(finished_run) == before and not os.path.exists(finished_run + "/checkpoints_unreadable")


def test_a_new_run_starts_from_another_runs_parameters(finished_run, tmp_path, capsys):
    """The way on after that refusal: the parameters go on under another optimizer (at a
    learning rate and weight decay of 0, one step leaves them as they were)."""
    import jax
    import numpy as np

    from doremi_jax import checkpoints, sharding
    from doremi_jax.train import setup
    from helpers import TINY

    workdir = str(tmp_path / "adafactor")
    code, err = in_process([*TINY_RUN, "--gin.TRAIN_STEPS=1", "--gin.OptimizerConfig.name='adafactor'",
                            "--gin.LEARNING_RATE=0.0", "--gin.OptimizerConfig.weight_decay=0.0",
                            f"--gin.train.load_parameters_from='{finished_run}'",
                            f"--workdir={workdir}"], capsys)
    assert code == 0, err
    mesh_cfg = sharding.MeshConfig(data=-1)
    abstract = setup.abstract_params(TINY, sharding.make_mesh(mesh_cfg), mesh_cfg.rules)[0]
    before = checkpoints.restore_params(os.path.join(finished_run, "checkpoints"), abstract)
    after = checkpoints.restore_params(os.path.join(workdir, "checkpoints"), abstract)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert json.load(open(os.path.join(workdir, "summary.json")))["start_step"] == 0


def test_a_checkpoint_that_cannot_be_read_is_retried_then_stops_the_run(finished_run, capsys, monkeypatch):
    from doremi_jax import checkpoints, faults

    monkeypatch.setattr(checkpoints, "BACKOFF_S", 0.01)
    monkeypatch.setattr(faults, "_visits", {})
    monkeypatch.setenv("DOREMI_FAULT", "checkpoint_read:ioerror")
    before = files_of(finished_run)
    code, err = in_process([*TINY_RUN, "--gin.TRAIN_STEPS=4", f"--workdir={finished_run}"], capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert "step 2 could not be read after 5 tries" in err and "nothing was moved" in err
    assert faults._visits["checkpoint_read"] == 5
    assert files_of(finished_run) == before


def test_proxy_needs_its_reference(tmp_path, capsys):
    proxy = ["--gin_file=gin/runs/proxy.gin", "--gin_file=gin/models/tiny.gin", "--gin.BATCH_SIZE=8", "--gin.TRAIN_STEPS=2"]
    code, err = in_process([*proxy, f"--workdir={tmp_path / 'p1'}"], capsys)
    assert code == 2 and "REFERENCE_DIR" in err
    code, err = in_process([*proxy, f"--gin.REFERENCE_DIR='{tmp_path / 'nothing'}'", f"--workdir={tmp_path / 'p2'}"], capsys)
    assert code == 1 and "reference model: no checkpoint folder" in err
    # The reference is checked before the proxy writes its run identity or checkpoints.
    assert not (tmp_path / "p2" / "run.json").exists() and not (tmp_path / "p2" / "checkpoints").exists()


def test_reference_of_another_shape_is_refused(finished_run, tmp_path, capsys):
    proxy = ["--gin_file=gin/runs/proxy.gin", "--gin_file=gin/models/tiny.gin", "--gin.BATCH_SIZE=8",
             "--gin.TRAIN_STEPS=2", "--gin.TransformerConfig.embed_dim=32", f"--gin.REFERENCE_DIR='{finished_run}'"]
    code, err = in_process([*proxy, f"--workdir={tmp_path / 'p'}"], capsys)
    assert code == 1 and "has shape (384, 64), the model expects (384, 32)" in err


def test_unwritable_workdir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = in_process([*TINY_RUN, f"--workdir={blocker / 'run'}"], capsys)
    assert code == 1 and "is not writable" in err


def test_evaluate_reproduces_the_final_evaluation(finished_run, capsys):
    from doremi_jax import evaluate

    trained = json.load(open(os.path.join(finished_run, "eval_results.json")))
    os.remove(os.path.join(finished_run, "eval_results.json"))
    with pytest.raises(SystemExit) as e:
        cli.main(evaluate.run, [*TINY_RUN, f"--workdir={finished_run}"])
        raise SystemExit(0)
    assert e.value.code == 0
    out = capsys.readouterr().out
    again = json.load(open(os.path.join(finished_run, "eval_results.json")))
    assert again["log_perplexity"] == pytest.approx(trained["log_perplexity"], rel=1e-6)
    assert f"{again['average']:.4f}" in out and "worst (" in out and "bits/byte" in out


def test_evaluate_without_a_run(tmp_path, capsys):
    from doremi_jax import evaluate

    with pytest.raises(SystemExit) as e:
        cli.main(evaluate.run, [*TINY_RUN, f"--workdir={tmp_path / 'none'}"])
    assert e.value.code == 1 and "no run to evaluate" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("experiment", ["demo", "pile_280m_to_8b", "pile_120m", "compare_demo", "compare_demo_search", "compare_pile_120m"])
def test_experiment_files_parse_with_their_stage_files(experiment):
    from doremi_jax import config, pipeline
    from doremi_jax.models import param_count

    pipeline.register()
    config.parse([f"gin/experiments/{experiment}.gin"], [])
    import gin

    stages = {k: gin.query_parameter(f"run_pipeline.{k}_gin") for k in ("reference", "proxy", "main")}
    from doremi_jax import methods

    regmix = methods.get("regmix") if experiment.startswith("compare") else None
    sizes = {}
    for stage, files in stages.items():
        config.parse(files, ["DATA_DIR = 'x'", "SPM_MODEL = 'x'", "REFERENCE_DIR = 'x'", "MODEL_DIR = 'x'"])
        sizes[stage] = param_count(config.configurable("TransformerConfig")())
    assert sizes["reference"] == sizes["proxy"] <= sizes["main"]
    if experiment == "pile_280m_to_8b":
        assert round(sizes["proxy"] / 1e6, -1) == 280 and round(sizes["main"] / 1e9) == 8
    if regmix is not None:  # RegMix's small runs: no larger than the proxy
        config.parse(list(regmix.gin_files), [*regmix.bindings, "DATA_DIR = 'x'", "SPM_MODEL = 'x'", "MODEL_DIR = 'x'"])
        assert param_count(config.configurable("TransformerConfig")()) <= sizes["proxy"]


def test_corrupted_reference_checkpoint(finished_run, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken_ref"
    shutil.copytree(finished_run, broken)
    damage_checkpoint(broken / "checkpoints" / "2")
    proxy = ["--gin_file=gin/runs/proxy.gin", "--gin_file=gin/models/tiny.gin", "--gin.BATCH_SIZE=8",
             "--gin.TRAIN_STEPS=2", f"--gin.REFERENCE_DIR='{broken}'"]
    code, err = in_process([*proxy, f"--workdir={tmp_path / 'p'}"], capsys)
    assert code == 1 and "reference model: checkpoint" in err and "is unreadable" in err
    assert err.count("\n") == 1
