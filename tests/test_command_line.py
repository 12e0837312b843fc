"""A user's corpus from the command line: the pipeline's `--gin` flags reach every stage,
the Pile experiment starts as the TPU launcher runs it, and config mistakes stop before
anything is written."""

import json
import os
import shlex
import socket
import subprocess
import sys

import pytest

from conftest import REPO
from doremi_jax import cli, pipeline
from doremi_jax.train import __main__ as train_main
from helpers import assert_png, write_corpus, write_three_domain_corpus

# Shrinks any experiment to seconds a stage, on top of its own files and bindings.
SHRINK = ["--gin_file=gin/models/tiny.gin", "--gin.BATCH_SIZE=8", "--gin.SEQUENCE_LENGTH=64",
          "--gin.WARMUP_STEPS=1", "--gin.TrainConfig.eval_tokens_per_domain=512",
          "--gin.run_pipeline.max_rounds=1", "--gin.run_pipeline.main_seeds=[]"]
# What a CPU host's first screen must not show (TensorFlow/CUDA/absl start-up noise).
NOISE = ("oneDNN", "cuInit", "cudart", "cuda drivers", "absl::InitializeLog", "TF-TRT")


def run_entry(entry, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", f"doremi_jax.{entry}", *args], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=900,
    )


def snapshot(folder):
    """Every file under `folder` with its size and modification time."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = (os.path.getsize(path), os.path.getmtime(path))
    return out


def summary(workdir, stage):
    return json.load(open(os.path.join(workdir, stage, "summary.json")))


@pytest.mark.slow
def test_pipeline_on_a_folder_corpus_from_the_command_line(tmp_path):
    data = write_three_domain_corpus(str(tmp_path / "corpus"))
    workdir = str(tmp_path / "w")
    args = ["--gin_file=gin/experiments/demo.gin", *SHRINK, f"--gin.DATA_DIR='{data}'", "--gin.CORPUS='mine'",
            "--gin.TRAIN_STEPS=6", "--gin.main/DownstreamConfig.prompt_length=48",
            "--gin.main/DownstreamConfig.max_examples=8", f"--workdir={workdir}"]
    first = run_entry("pipeline", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    stages = ["round_1/reference", "round_1/proxy", "main_doremi", "main_baseline"]
    for stage in stages:
        s = summary(workdir, stage)
        assert s["domains"] == ["easy", "learnable", "noise"] and s["step"] == 6, stage
    # Every stage's first line says what it trains on.
    firsts = [line for line in first.stdout.splitlines() if " run on corpus " in line]
    assert len(firsts) == 4
    for line in firsts:
        assert f"corpus 'mine' (DATA_DIR '{data}', 3 domains: easy, learnable, noise" in line
        assert "6 steps x batch 8 x 64 tokens" in line
    assert not [n for n in NOISE if n in first.stderr + first.stdout], first.stderr[:2000]

    # One proxy-only override: the proxy and what follows from it retrain, nothing else;
    # and a main model with Online Data Mixing joins the comparison.
    before = {s: os.path.getmtime(os.path.join(workdir, s, "summary.json")) for s in stages}
    second = run_entry("pipeline", *args, "--gin.proxy/DoReMi.learning_rate=0.25", "--gin.run_pipeline.methods=['odm']")
    assert second.returncode == 0, second.stderr[-3000:]
    after = {s: os.path.getmtime(os.path.join(workdir, s, "summary.json")) for s in stages}
    assert after["round_1/reference"] == before["round_1/reference"]
    assert after["round_1/proxy"] > before["round_1/proxy"]
    assert after["main_doremi"] > before["main_doremi"]
    assert after["main_baseline"] == before["main_baseline"]
    proxy_gin = open(os.path.join(workdir, "round_1/proxy/config.gin")).read()
    assert "DoReMi.learning_rate = 0.25" in proxy_gin
    assert "0.25" not in open(os.path.join(workdir, "main_doremi/config.gin")).read()
    odm = summary(workdir, "main_odm")
    assert odm["domains"] == ["easy", "learnable", "noise"] and odm["step"] == 6
    assert "train.method = @OnlineDataMixing()" in open(os.path.join(workdir, "main_odm/config.gin")).read()
    evaluation = json.load(open(os.path.join(workdir, "eval.json")))
    assert evaluation["odm"]["odm"] == odm["eval"] and evaluation["odm"]["weights"] == odm["average_domain_weights"]
    report = open(os.path.join(workdir, "report.md")).read()
    assert "## Main models: Online Data Mixing vs baseline weights" in report and "| domain | baseline log-ppl | ODM log-ppl |" in report
    assert_png(os.path.join(workdir, "odm_rates.png"))


@pytest.mark.slow
def test_pile_experiment_as_the_tpu_launcher_runs_it(tmp_path):
    from doremi_jax.data import vocab

    docs = {d: english(40, 40 * i) for i, d in enumerate(("ArXiv", "Github", "Pile-CC"))}
    data = write_corpus(str(tmp_path / "pile"), docs)
    spm = vocab.train_sentencepiece([t for ts in docs.values() for t in ts], 384, str(tmp_path / "spm"))
    home, root = tmp_path / "home", tmp_path / "runs"
    home.mkdir()
    os.symlink(REPO, home / "doremi_jax")  # where `setup` copies the checkout on every host
    launch = subprocess.run(
        ["bash", os.path.join(REPO, "launch", "tpu_vm.sh"), "--dry-run", "run", "pipeline", "pile120m",
         "--gin_file=gin/experiments/pile_120m.gin", f"--gin.DATA_DIR='{data}'", f"--gin.SPM_MODEL='{spm}'",
         *SHRINK, "--gin.TRAIN_STEPS=4", "--gin.TrainConfig.microbatches=1", "--gin.TrainConfig.eval_batch_size=8"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "WORKDIR_ROOT": str(root)},
    )
    assert launch.returncode == 0, launch.stderr
    (ssh,) = [shlex.split(line) for line in launch.stdout.strip().splitlines()]
    remote = ssh[7].removeprefix("--command=")
    # The host's command as printed; one local process stands in for the pod (a loopback
    # coordinator, as on CPU), and `wait` keeps the nohup'd job in the foreground.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HOME": str(home), "DOREMI_COORDINATOR": f"127.0.0.1:{port}",
           "DOREMI_NUM_PROCESSES": "1", "DOREMI_PROCESS_ID": "0"}
    done = subprocess.run(["bash", "-c", remote + " wait"], cwd=home, env=env, timeout=900)
    assert done.returncode == 0
    workdir = root / "pile120m"
    log = (workdir / "log.txt").read_text()
    assert (workdir / "report.md").exists(), log[-3000:]
    for stage in ("round_1/reference", "round_1/proxy", "main_doremi", "main_baseline"):
        s = summary(workdir, stage)
        assert s["domains"] == ["ArXiv", "Github", "Pile-CC"] and s["step"] == 4
    assert "corpus 'pile'" in log and "vocabulary spm-" in log
    run = json.load(open(workdir / "round_1/reference/run.json"))
    assert run["vocabulary"] == vocab.SentencePieceVocabulary(spm).fingerprint and run["vocab_size"] == 384


# --- Config mistakes: exit code, one line, nothing in the workdir changed.

TINY_RUN = ["--gin_file=gin/runs/main.gin", "--gin_file=gin/models/tiny.gin", "--gin.BATCH_SIZE=8",
            "--gin.SEQUENCE_LENGTH=64", "--gin.TrainConfig.eval_tokens_per_domain=512", "--gin.TRAIN_STEPS=2"]


def test_a_corpus_with_a_test_split_from_the_command_line(tmp_path):
    """train and evaluate on a written folder corpus with a test split: validation and
    test scored and kept apart, the periodic curve on test, every scored document's
    figures; a test split in some domains only is a one-line error."""
    data = write_corpus(str(tmp_path / "corpus"), {d: english(20, 20 * i) for i, d in enumerate(("a", "b"))},
                        validation_fraction=0.2, test_fraction=0.2)
    gin = ["--gin_file=gin/runs/reference.gin", "--gin_file=gin/data/folder.gin",
           *[a for a in SHRINK if "run_pipeline" not in a], f"--gin.DATA_DIR='{data}'"]
    workdir = str(tmp_path / "run")
    done = run_entry("train", *gin, "--gin.TRAIN_STEPS=4", "--gin.TrainConfig.eval_every=2", f"--workdir={workdir}")
    assert done.returncode == 0, done.stderr[-3000:]
    s = json.load(open(os.path.join(workdir, "summary.json")))
    assert s["test"]["log_perplexity"] != s["eval"]["log_perplexity"]
    assert json.load(open(os.path.join(workdir, "test_results.json"))) == s["test"]
    assert json.load(open(os.path.join(workdir, "eval_results.json"))) == s["eval"]
    documents = json.load(open(os.path.join(workdir, "held_out_documents.json")))
    for split, key in (("validation", "eval"), ("test", "test")):
        for d in ("a", "b"):
            figures = documents[split][d]
            assert sum(figures["tokens"]) == s[key]["tokens"][d] and len(figures["tokens"]) == s[key]["documents"][d]
            assert sum(figures["loss"]) / sum(figures["tokens"]) == pytest.approx(s[key]["log_perplexity"][d], rel=1e-5)
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "test/log_perplexity/average" in r] == [2, 4]
    assert [r["step"] for r in rows if "eval/log_perplexity/average" in r] == [4]
    evaluated = run_entry("evaluate", *gin, f"--workdir={workdir}")
    assert evaluated.returncode == 0 and "validation:" in evaluated.stdout and "test:" in evaluated.stdout, \
        evaluated.stderr[-2000:]

    os.remove(os.path.join(data, "b", "test.jsonl"))
    refused = run_entry("train", *gin, "--gin.TRAIN_STEPS=4", f"--workdir={tmp_path / 'other'}")
    assert refused.returncode == 1
    one_line_error(refused.stderr.strip().splitlines()[-1] + "\n", "['a'] have a test split and ['b'] do not")
    assert not os.path.exists(tmp_path / "other" / "run.json")


def in_process(main, args, capsys):
    """Run an entry in this process; returns (exit code, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


def train(args, capsys):
    return in_process(lambda a: cli.main(train_main.run, a), args, capsys)


def one_line_error(err, *needles):
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


def english(n, offset=0):
    """Real English documents (standard-library docstrings, as the demo corpus uses)."""
    from doremi_jax.data import demo

    _, prose = demo._code_and_prose()
    return [p[:600] for p in prose[offset:offset + n]]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    texts = {d: english(30, 30 * i) for i, d in enumerate(("a", "b", "c"))}
    return write_corpus(str(root / "one"), texts), write_corpus(str(root / "two"), texts)


@pytest.fixture(scope="module")
def finished(corpora, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("finished") / "run")
    cli.main(train_main.run, [*TINY_RUN, f"--gin.DATA_DIR='{corpora[0]}'", f"--workdir={workdir}"])
    return workdir


def test_a_misspelt_macro_names_the_fix(tmp_path, corpora, capsys):
    workdir = tmp_path / "w"
    code, err = train([*TINY_RUN, "--gin.TRAIN_STEP=5", f"--workdir={workdir}"], capsys)
    assert code == 2
    one_line_error(err, "TRAIN_STEP", "did you mean TRAIN_STEPS")
    assert not workdir.exists()
    experiment = ["--gin_file=gin/experiments/demo.gin", f"--gin.DATA_DIR='{corpora[0]}'"]
    for bad in ("--gin.TRAIN_STEP=5", "--gin.main/TRAIN_STEP=5", "--gin.proxy/DoReMi.lerning_rate=2"):
        code, err = in_process(pipeline.main, [*experiment, bad, f"--workdir={workdir}"], capsys)
        assert code == 2, bad
        one_line_error(err, bad.split("=")[0].removeprefix("--gin.").split(".")[-1])
        assert not workdir.exists()
    # A macro one stage uses (the proxy's REFERENCE_DIR) is known to the pipeline; one no
    # stage of this experiment declares (the Pile's SPM_MODEL) is not.
    code, err = in_process(pipeline.main, [*experiment, "--gin.REFERENCE_DIR='x'", "--gin.SPM_MODEL='x'",
                                           f"--workdir={workdir}"], capsys)
    assert code == 2
    one_line_error(err, "macro(s) SPM_MODEL")
    assert "REFERENCE_DIR" not in err.split("known macros")[0]
    assert not workdir.exists()


def test_a_required_macro_unset_on_the_pipeline(tmp_path, corpora, capsys):
    workdir = tmp_path / "w"
    code, err = in_process(pipeline.main, ["--gin_file=gin/experiments/pile_120m.gin", f"--gin.DATA_DIR='{corpora[0]}'",
                                           f"--workdir={workdir}"], capsys)
    assert code == 2
    one_line_error(err, "required macro(s) not set: SPM_MODEL (--gin.SPM_MODEL=...)")
    assert not workdir.exists()


@pytest.mark.parametrize("change, field", [
    ("--gin.DATA_DIR='{two}'", "data_dir"),
    ("--gin.BATCH_SIZE=16", "batch_size"),
    ("--gin.SEQUENCE_LENGTH=32", "sequence_length"),
    ("--gin.SEED=1", "seed"),
    ("--gin.LEARNING_RATE=0.01", "learning_rate"),
    ("--gin.MIXTURE_WEIGHTS='uniform'", "sampling_weights"),
    ("--gin.DataConfig.vocabulary='sentencepiece'", "vocabulary"),
])
def test_resuming_another_run_is_refused(finished, corpora, tmp_path, capsys, change, field):
    args = [*TINY_RUN, f"--gin.DATA_DIR='{corpora[0]}'", change.format(two=corpora[1])]
    if field == "vocabulary":
        from doremi_jax.data import vocab

        args.append(f"--gin.DataConfig.spm_model='{vocab.train_sentencepiece(english(90), 384, str(tmp_path / 's'))}'")
    before = snapshot(finished)
    code, err = train([*args, f"--workdir={finished}"], capsys)
    assert code == 1
    one_line_error(err, "holds another run", f"'{field}'", "--gin.train.overwrite=True")
    assert snapshot(finished) == before


def test_a_proxy_refuses_a_reference_with_another_vocabulary_of_the_same_size(tmp_path, corpora, capsys):
    from doremi_jax.data import vocab

    spm = [vocab.train_sentencepiece(english(90, 90 * i), 384, str(tmp_path / f"spm{i}")) for i in range(2)]
    assert vocab.SentencePieceVocabulary(spm[0]).fingerprint != vocab.SentencePieceVocabulary(spm[1]).fingerprint
    data = [f"--gin.DATA_DIR='{corpora[0]}'", "--gin.DataConfig.vocabulary='sentencepiece'"]
    reference = str(tmp_path / "ref")
    code, err = train(["--gin_file=gin/runs/reference.gin", *TINY_RUN[1:], *data,
                       f"--gin.DataConfig.spm_model='{spm[0]}'", f"--workdir={reference}"], capsys)
    assert code == 0, err
    proxy = tmp_path / "proxy"
    code, err = train(["--gin_file=gin/runs/proxy.gin", *TINY_RUN[1:], *data, f"--gin.DataConfig.spm_model='{spm[1]}'",
                       f"--gin.REFERENCE_DIR='{reference}'", f"--workdir={proxy}"], capsys)
    assert code == 1
    one_line_error(err, "was trained on domains", "vocabulary spm-")
    assert snapshot(proxy) == {}


def test_the_memory_estimate_fails_before_the_workdir_is_claimed(tmp_path, corpora, capsys):
    workdir = tmp_path / "m"
    data = f"--gin.DATA_DIR='{corpora[0]}'"
    code, err = train([*TINY_RUN, data, "--gin.TrainConfig.device_memory_gib=1e-6", f"--workdir={workdir}"], capsys)
    assert code == 1
    one_line_error(err, "exceeds TrainConfig.device_memory_gib")
    assert snapshot(workdir) == {}
    # Following its advice (remat) in the same workdir is not "another run".
    code, err = train([*TINY_RUN, data, "--gin.TransformerConfig.remat_policy='full'", f"--workdir={workdir}"], capsys)
    assert code == 0, err
    assert json.load(open(workdir / "run.json"))["model"]["remat_policy"] == "full"


def test_every_entry_answers_help_and_starts_without_tpu_probe_noise(tmp_path):
    for entry in ("train", "evaluate", "pipeline", "bench", "aot"):
        out = run_entry(entry, "--help")
        assert out.returncode == 0, (entry, out.stderr[-2000:])
        assert out.stdout.startswith(f"`python -m doremi_jax.{entry}") and "--gin.NAME=VALUE" in out.stdout, entry
    # libtpu (the test extra installs it) on a host without a TPU: jax is not left to
    # probe for one, so a refused start is its one line and nothing else.
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    out = subprocess.run([sys.executable, "-m", "doremi_jax.evaluate", "--gin_file=gin/runs/reference.gin",
                          "--gin_file=gin/models/tiny.gin", f"--workdir={tmp_path / 'none'}"],
                         cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 1 and out.stderr == f"error: no run to evaluate in '{tmp_path / 'none'}' (no run.json)\n"
