"""`python -m doremi_jax.aot`: an experiment's steps compiled for a TPU topology on this host.

Compile-only TPU devices come from libtpu (the test extra installs it); nothing runs on
a TPU and no parameter is materialised.
"""

import json
import math
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from doremi_jax import hardware, sharding
from doremi_jax.aot import compile as aot_compile, hlo, topology
from doremi_jax.models import TransformerConfig, model_flops_per_step
from doremi_jax.train import loop, setup
from doremi_jax.train.state import OptimizerConfig
from doremi_jax.methods.doremi.trainer import DoReMi
from doremi_jax.train.mixture import FixedMixture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGY = "v5p:2x2x2"  # 8 chips on 2 hosts

RULES = {
    "data": sharding.MeshConfig(data=-1, fsdp=1, tensor=1, rules=tuple(
        (name, ("data", "fsdp") if name == "activation_batch" else None) for name, _ in sharding.DEFAULT_RULES)),
    "fsdp": sharding.MeshConfig(data=1, fsdp=-1, tensor=1, rules=tuple(
        (name, "fsdp" if name == "embed" else (("data", "fsdp") if name == "activation_batch" else None))
        for name, _ in sharding.DEFAULT_RULES)),
    "tensor": sharding.MeshConfig(data=1, fsdp=-1, tensor=2),  # FSDP x tensor (the default rules)
}
# Big enough that matmuls dominate XLA's count (its element-wise FLOPs are a few % here).
MODEL = TransformerConfig(vocab_size=512, embed_dim=256, num_layers=2, num_heads=4, head_dim=64, mlp_dim=1024,
                          max_length=128, dtype="bfloat16")


def run_aot(*args):
    return subprocess.run([sys.executable, "-m", "doremi_jax.aot", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=900)


def aot_in_process(args, capsys):
    """The entry in this process (its start-up is most of a failing call's time): the
    exit code and stderr."""
    from doremi_jax import cli
    from doremi_jax.aot import __main__ as aot_main

    with pytest.raises(SystemExit) as e:
        cli.main(aot_main.run, args)
    return e.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def devices():
    return topology.devices(TOPOLOGY)


def _plan(mesh_cfg, run="lm"):
    return aot_compile.StagePlan(
        name="proxy" if run == "doremi" else "main", model=MODEL, mesh=mesh_cfg,
        optimizer=OptimizerConfig(), config=loop.TrainConfig(batch_size=32, sequence_length=128),
        method=DoReMi() if run == "doremi" else FixedMixture(),
    )


@pytest.mark.parametrize("rules", ["data", "fsdp", "tensor"])
def test_steps_compile_for_a_tpu_topology_under_each_sharding(devices, rules):
    """The LM step, the DoReMi step (with its reference forward) and the eval step."""
    devs, chip = devices
    assert chip.name == "v5p" and len(devs) == 8
    lm, doremi = _plan(RULES[rules]), _plan(RULES[rules], run="doremi")
    reports = aot_compile.compile_stage(lm, devs, chip, num_domains=4)
    reports.append(aot_compile.compile_stage(doremi, devs, chip, num_domains=4)[0])
    assert [r.step for r in reports] == ["lm_step", "eval_step", "doremi_step"]
    mesh = sharding.make_mesh(lm.mesh, devs)
    params, _ = setup.abstract_params(MODEL, mesh, lm.mesh.rules)
    whole = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    per_chip = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(params))
    assert per_chip == whole if rules == "data" else per_chip < whole / 3
    lm_step, evaluation, doremi_step = reports
    # Per chip: a train step's arguments hold the params and AdamW's two moments as
    # sharded (an eighth of the whole under FSDP, all of it replicated under data), the
    # DoReMi step the reference's params too (TPU layouts pad small arrays: +25%).
    for step, copies in ((lm_step, 3), (doremi_step, 4), (evaluation, 1)):
        assert copies * per_chip <= step.memory["arguments"] < 1.25 * copies * per_chip + 2**20, step.step
        assert 0 < step.memory["total"] < chip.hbm_bytes and step.fits
    for step in (lm_step, doremi_step):
        # XLA's FLOPs against the model count of what XLA executes (dense attention
        # scores), per chip; the DoReMi step's reference forward is in both.
        executed = model_flops_per_step(MODEL, 32, 128, causal_savings=False)[step.step] / 8
        assert step.compiler_flops == pytest.approx(executed, rel=0.05), step.step
        assert step.model_flops == model_flops_per_step(MODEL, 32, 128)[step.step] / 8
        if rules != "data":
            assert sum(c["count"] for c in step.collectives.values()) >= 1
        roof = aot_compile.roofline(step, chip)
        assert roof["step_s"] >= step.compiler_flops / chip.bf16_flops_per_s
        assert 0 < roof["mfu"] <= roof["mfu_compute_bound"] <= 1
    assert doremi_step.compiler_flops > 1.2 * lm_step.compiler_flops  # the reference forward


def test_collectives_are_counted_per_loop_iteration():
    body = """HloModule m, entry_computation_layout={()->()}

%cond (p: (s32[], bf16[8,128])) -> pred[] {
  %p = (s32[], bf16[8,128]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(12)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (p.1: (s32[], bf16[8,128])) -> (s32[], bf16[8,128]) {
  %p.1 = (s32[], bf16[8,128]{1,0}) parameter(0)
  %x = bf16[8,128]{1,0} get-tuple-element(%p.1), index=1
  %ag = bf16[64,128]{1,0} all-gather(%x), replica_groups=[1,8]<=[8], dimensions={0}
  ROOT %t = (s32[], bf16[8,128]{1,0}) tuple(%i, %x)
}

ENTRY %main (a: bf16[8,128]) -> bf16[8,128] {
  %a = bf16[8,128]{1,0} parameter(0)
  %ar = bf16[8,128]{1,0} all-reduce(%a), replica_groups={{0,1,2,3}}, to_apply=%add
  %w = (s32[], bf16[8,128]{1,0}) while(%init), condition=%cond, body=%body
  ROOT %r = bf16[8,128]{1,0} get-tuple-element(%w), index=1
}
"""
    found, unknown = hlo.collectives(body)
    assert unknown == 0
    assert found["all-gather"].count == 12 and found["all-gather"].bytes == 12 * 64 * 128 * 2
    assert found["all-gather"].traffic == pytest.approx(12 * 64 * 128 * 2 * 7 / 8)
    assert found["all-reduce"].count == 1 and found["all-reduce"].traffic == pytest.approx(2 * 8 * 128 * 2 * 3 / 4)


def test_aot_entry_compiles_every_stage_of_an_experiment(tmp_path):
    """The pipeline experiment as a user runs it: reference, proxy (with its reference
    forward) and main, each with its evaluation step, a table and JSON."""
    out = tmp_path / "aot.json"
    result = run_aot(
        "--gin_file=gin/experiments/demo.gin", "--gin_file=gin/models/tiny.gin", "--gin_file=gin/sharding/fsdp.gin",
        "--gin.main/BATCH_SIZE=64", f"--topology={TOPOLOGY}", "--topology=main=v5e:2x4", "--num_domains=4",
        f"--json={out}",
    )
    assert result.returncode == 0, result.stderr
    assert "FITS" in result.stdout and "whole experiment" in result.stdout
    report = json.loads(out.read_text())
    assert [s["stage"] for s in report["stages"]] == ["reference", "proxy", "main"]
    steps = {s["stage"]: [x["step"] for x in s["steps"]] for s in report["stages"]}
    assert steps == {"reference": ["lm_step", "eval_step"], "proxy": ["doremi_step", "eval_step"],
                     "main": ["lm_step", "eval_step"]}
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["main"]["topology"] == "v5e:2x4" and stages["main"]["chip"] == "v5e"
    assert stages["main"]["batch_size"] == 64 and stages["proxy"]["batch_size"] == 16  # scoped binding
    # The demo: one round of reference and proxy, the DoReMi and baseline main models x 3 seeds.
    assert (stages["reference"]["runs"], stages["proxy"]["runs"], stages["main"]["runs"]) == (1, 1, 6)
    for stage in report["stages"]:
        for step in stage["steps"]:
            assert step["fits"] and step["memory"]["total"] > 0
            assert step["roofline"]["step_s"] > 0
    assert report["days"] == pytest.approx(sum(s["days"] for s in report["stages"]))
    assert 0 < report["compute_days"] <= report["days"]


def test_the_comparison_experiment_plans_odm_and_regmix_regmix_on_one_host(tmp_path):
    """compare_demo.gin: the fixed mixtures' main models together, ODM's main models
    (another step) apart, and RegMix's small runs, each on one host's chips of a
    two-host slice (they are shared out between the hosts)."""
    out = tmp_path / "aot.json"
    result = run_aot(
        "--gin_file=gin/experiments/compare_demo.gin", "--gin_file=gin/models/tiny.gin",
        "--topology=v5p:2x2x2", "--num_domains=4", f"--json={out}",
    )
    assert result.returncode == 0, result.stderr
    stages = {s["stage"]: s for s in json.loads(out.read_text())["stages"]}
    assert list(stages) == ["reference", "proxy", "doremi_matched/reference", "doremi_matched/proxy", "regmix", "main",
                            "main_odm"]
    # Three seeds of baseline, DoReMi, uniform, temperature, step-matched DoReMi and RegMix's
    # mixture; of ODM; 16 small runs.
    assert (stages["main"]["runs"], stages["main_odm"]["runs"], stages["regmix"]["runs"]) == (18, 3, 16)
    assert stages["main_odm"]["run"] == "odm" and stages["regmix"]["train_steps"] == 100
    assert stages["regmix"]["chips"] == 4 and stages["main"]["chips"] == 8
    assert stages["regmix"]["topology"].startswith("one host of v5p:2x2x2")
    # Two hosts train two small runs at once: 8 in turn of 16, on 4 chips each.
    regmix = stages["regmix"]
    step_s = regmix["steps"][0]["roofline"]["step_s"]
    assert regmix["side_by_side"] == 2
    assert regmix["days"] == pytest.approx(step_s * 100 * 8 / 86_400)
    assert regmix["chip_days"] == pytest.approx(step_s * 100 * 16 * 4 / 86_400)
    # Not shared out: the small runs are planned on the whole slice, like the main models.
    from doremi_jax.aot import plan as aot_plan

    plans, _ = aot_plan.plans(["gin/experiments/compare_demo.gin", "gin/models/tiny.gin"],
                              ["RegMixConfig.spread_over_hosts = False"])
    assert {p.name: p.one_host for p in plans} == {n: False for n in stages}
    # Two searches: the rounds and the small runs twice; four main seeds of each mixture.
    plans, _ = aot_plan.plans(["gin/experiments/compare_demo_search.gin", "gin/models/tiny.gin"], [])
    assert {p.name: p.runs for p in plans} == {"reference": 2, "proxy": 2, "doremi_matched/reference": 2,
                                                  "doremi_matched/proxy": 2, "main": 24, "main_odm": 4, "regmix": 32}


def test_a_configuration_that_cannot_fit_is_reported_before_anything_runs(tmp_path):
    out = tmp_path / "aot.json"
    result = run_aot(
        "--gin_file=gin/runs/lm.gin", "--gin_file=gin/models/tiny.gin",
        "--gin.TransformerConfig.vocab_size=131072", "--gin.BATCH_SIZE=1024", "--gin.SEQUENCE_LENGTH=256",
        "--topology=v5e:2x2", "--num_domains=4", f"--json={out}",
    )
    assert result.returncode == 1, result.stderr
    assert "DOES NOT FIT" in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: DOES NOT FIT: train/lm_step needs ") and "of 16 GiB" in last
    step = json.loads(out.read_text())["stages"][0]["steps"][0]
    assert not step["fits"] and step["memory"]["total"] > 16 * 2**30


@pytest.mark.parametrize("args, message", [
    (["--topology=v9:2x2"], "unknown TPU 'v9'"),
    ([], "--topology=NAME is required"),
    (["--topology=v5p:2x2x2", "--topology=proxyy=v5p:2x2x1"], "--topology for ['proxyy']"),
    (["--topology=v5p:3x3x3"], "topology 'v5p:3x3x3'"),
    (["--topology=v5p:2x2x1", "--slices=2"], "--slices=2 but the train stage has MeshConfig.dcn_data=1"),
    (["--topology=v5p:2x2x1", "--search", "--stage=proxy"], "--stage ['proxy']: this train has stages ['train']"),
])
def test_bad_topologies_fail_in_one_line(args, message, capsys):
    code, err = aot_in_process(["--gin_file=gin/runs/lm.gin", "--gin_file=gin/models/tiny.gin", *args], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_multislice_mesh_spans_the_slices_over_dcn(tmp_path):
    out = tmp_path / "aot.json"
    result = run_aot("--gin_file=gin/runs/lm.gin", "--gin_file=gin/models/tiny.gin", "--gin_file=gin/sharding/fsdp.gin",
                     "--gin.MeshConfig.dcn_data=2", "--topology=v5p:2x2x1", "--slices=2", "--num_domains=4",
                     f"--json={out}")
    assert result.returncode == 0, result.stderr
    stage = json.loads(out.read_text())["stages"][0]
    assert stage["chips"] == 8 and stage["topology"] == "v5p:2x2x1 x2" and stage["mesh"]["dcn_data"] == 2
    assert stage["steps"][0]["fits"] and stage["steps"][0]["collectives"]


def test_datasheets():
    assert hardware.datasheet_peak("TPU v5 lite") == 197e12
    assert hardware.datasheet_peak("TPU v5") == 459e12
    assert hardware.datasheet_peak("NVIDIA H200") == 989e12
    assert hardware.tpu_chip("v4:4x4x4").hbm_bytes == 32 * 2**30
    assert np.isclose(hardware.tpu_chip("v6e:2x2").bf16_flops_per_s, 918e12)


def test_microbatched_steps_are_costed_per_microbatch(devices):
    """A microbatched step is a loop over microbatches: its FLOPs are those of the whole
    batch, not of one microbatch (XLA's count of the loop body alone)."""
    devs, chip = devices
    whole = aot_compile.compile_stage(_plan(RULES["data"]), devs, chip, num_domains=4)[0]
    plan = _plan(RULES["data"])
    plan = aot_compile.StagePlan(**{**plan.__dict__, "config": loop.TrainConfig(batch_size=32, sequence_length=128,
                                                                                   microbatches=2)})
    split = aot_compile.compile_stage(plan, devs, chip, num_domains=4)[0]
    assert split.compiler_flops == pytest.approx(whole.compiler_flops, rel=0.03)


def test_readme_command_on_the_paper_experiment_shrunk(tmp_path):
    """The README's command for the 280M -> 8B experiment, with the tiny model and short
    rows: the experiment's own stages, bindings and topologies."""
    out = tmp_path / "aot.json"
    result = run_aot(
        "--gin_file=gin/experiments/pile_280m_to_8b.gin", "--gin_file=gin/models/tiny.gin",
        "--gin.SEQUENCE_LENGTH=128", "--gin.BATCH_SIZE=256",
        "--topology=v4:2x2x2", "--topology=main=v4:4x4x4", f"--json={out}",
    )
    assert result.returncode == 0, result.stderr
    stages = {s["stage"]: s for s in json.loads(out.read_text())["stages"]}
    assert stages["main"]["chips"] == 64 and stages["proxy"]["chips"] == 8
    # The experiment's per-stage choices (aot --search's) reach each stage.
    assert {name: s["microbatches"] for name, s in stages.items()} == {"reference": 4, "proxy": 8, "main": 4}
    assert stages["reference"]["train_steps"] == 200_000 and stages["main"]["runs"] == 2
    assert stages["proxy"]["run"] == "doremi" and stages["main"]["run"] == "lm"


def test_sequence_longer_than_the_model_fails_in_one_line(capsys):
    code, err = aot_in_process(["--gin_file=gin/runs/lm.gin", "--gin_file=gin/models/tiny.gin",
                                "--gin.SEQUENCE_LENGTH=4096", "--topology=v5p:2x2x1"], capsys)
    assert code == 1
    assert err.strip() == "error: [train] SEQUENCE_LENGTH=4096 exceeds the model's max_length=256"


@pytest.mark.parametrize("model", ["small", "medium"])
def test_the_trainers_memory_estimate_agrees_with_xla(tmp_path, model):
    """The per-device estimate the trainer prints (and checks against
    TrainConfig.device_memory_gib) is within 0.75x-1.35x of XLA's figure on the shipped
    model files (BENCHMARKS.md: 0.86-1.33 from small to 8B)."""
    out = tmp_path / "aot.json"
    result = run_aot("--gin_file=gin/runs/lm.gin", f"--gin_file=gin/models/{model}.gin", "--gin.BATCH_SIZE=32",
                     "--gin.SEQUENCE_LENGTH=256", "--topology=v5p:2x2x1", "--num_domains=4", f"--json={out}")
    assert result.returncode == 0, result.stderr
    step = json.loads(out.read_text())["stages"][0]["steps"][0]
    assert 0.75 <= step["estimate_over_compiled"] <= 1.35


@pytest.mark.parametrize("name", ["v4:2x2x2", "v5e:2x4", "v5p:2x2x2"])
def test_pallas_attention_compiles_for_each_tpu_generation(name):
    """Splash attention as Mosaic kernels in the TPU program, one per shard (shard_map), under
    FSDP x tensor; its FLOPs, which XLA's analysis cannot see, counted from the kernels'
    shapes: per layer a forward (2 matmuls per block pair), a dq (3) and a dkv kernel (4)."""
    devs, chip = topology.devices(name)
    length, block = 256, 128
    model = TransformerConfig(**{**MODEL.__dict__, "max_length": length, "attention_implementation": "pallas",
                                 "pallas_block_size": block})
    plan = aot_compile.StagePlan(name="main", model=model, mesh=RULES["tensor"], optimizer=OptimizerConfig(),
                                 config=loop.TrainConfig(batch_size=32, sequence_length=length), method=FixedMixture())
    step, evaluation = aot_compile.compile_stage(plan, devs, chip, num_domains=4)
    assert step.fits and evaluation.fits
    rows, heads = 32 // 4, MODEL.num_heads // 2  # per chip: batch over fsdp (4), heads over tensor (2)
    pairs = 3  # of 2 x 2 blocks, those on or below the diagonal
    per_unit = 2 * block * block * MODEL.head_dim * pairs * rows * heads
    assert step.kernel_flops == MODEL.num_layers * (2 + 3 + 4) * per_unit
    assert evaluation.kernel_flops == MODEL.num_layers * 2 * (per_unit * 32 // 32)
    # Everything but attention is XLA's count; attention is the kernels' block-causal work.
    scores = 3 * 4 * 32 * length**2 * MODEL.num_heads * MODEL.head_dim * MODEL.num_layers  # dense, fwd + bwd
    dense = (model_flops_per_step(model, 32, length, causal_savings=False)["lm_step"] - scores) / 8
    assert step.compiler_flops == pytest.approx(dense + step.kernel_flops, rel=0.05)


def test_the_tpu_attention_path_has_no_transposes_or_float32_copies_of_q_k_v():
    """Under the Pallas kernel q, k and v are made heads-first by their matmuls (the
    kernel's layout) and rotated in bfloat16: the TPU program holds no array of them
    length-first (a transpose each way, forward and backward) and none in float32 (the
    rotary in float32 wrote them out of their matmuls at twice the bytes)."""
    devs, _ = topology.devices("v4:2x2x2")
    length = 256
    model = TransformerConfig(**{**MODEL.__dict__, "max_length": length, "attention_implementation": "pallas",
                                 "pallas_block_size": 128})
    plan = aot_compile.StagePlan(name="main", model=model, mesh=RULES["tensor"], optimizer=OptimizerConfig(),
                                 config=loop.TrainConfig(batch_size=32, sequence_length=length), method=FixedMixture())
    mesh = sharding.make_mesh(plan.mesh, devs)
    text = aot_compile._compile(aot_compile._lowered(plan, model, mesh, "lm_step", 4)).as_text()
    # The arrays in HBM: results of instructions outside fusions (a fusion's insides stay on chip).
    computations, _ = hlo._parse(text)
    fused = {callee for lines in computations.values() for line in lines if " fusion(" in line
             for callee in re.findall(r"calls=%([\w.\-]+)", line)}
    arrays = [hlo._split_shape(m.group(2))[0] for name, lines in computations.items() if name not in fused
              for m in map(hlo._INSTRUCTION.match, lines) if m]
    rows, heads, head_dim = 32 // 4, MODEL.num_heads // 2, MODEL.head_dim  # per chip
    assert any(f"bf16[{rows},{heads},{length},{head_dim}]" in a for a in arrays)  # the kernel's operands
    assert not [a for a in arrays if f"[{rows},{length},{heads},{head_dim}]" in a]
    assert not [a for a in arrays if f"f32[{rows},{heads},{length},{head_dim}]" in a]


def test_a_kernel_config_over_several_lines_does_not_end_its_computation():
    """A Mosaic kernel's backend config holds newlines, so an instruction can continue on a
    line starting with "}}": the collectives after it are still counted."""
    text = """HloModule m, entry_computation_layout={()->()}

ENTRY %main (a: bf16[8,128]) -> bf16[64,128] {
  %a = bf16[8,128]{1,0} parameter(0)
  %splash_mha_fwd_segmented_no_residuals.1 = bf16[2,4,256,64]{3,2,1,0} custom-call(%a), custom_call_target="tpu_custom_call", backend_config={"custom_call_config": {"body": "abc
def"
}}, metadata={op_name="attention"}
  ROOT %ag = bf16[64,128]{1,0} all-gather(%a), replica_groups=[1,8]<=[8], dimensions={0}
}
"""
    found, _ = hlo.collectives(text)
    assert found["all-gather"].count == 1
    from doremi_jax.aot import kernels

    cost = kernels.attention_kernels(text, 128)
    assert cost.calls == 1 and cost.flops == 2 * (2 * 128 * 128 * 64) * 3 * 2 * 4


def test_search_prints_the_best_fitting_configuration_as_bindings(tmp_path):
    """The README's `--search` on the paper's experiment (its reference stage), shrunk to the
    tiny model: every sharding file x remat policy, the fewest microbatches that fit
    first; the best by the roofline bound, printed as bindings that `aot` then reproduces."""
    out = tmp_path / "search.json"
    common = ["--gin_file=gin/experiments/pile_280m_to_8b.gin", "--gin_file=gin/models/tiny.gin",
              "--gin.SEQUENCE_LENGTH=128", "--gin.BATCH_SIZE=32", "--topology=v4:2x2x2", "--topology=main=v4:4x4x4",
              "--stage=reference"]
    result = run_aot(*common, "--search", f"--json={out}")
    assert result.returncode == 0, result.stderr
    (stage,) = json.loads(out.read_text())
    rows = stage["rows"]
    pairs = {(r["sharding"], r["remat_policy"]) for r in rows}
    assert pairs == {(f"gin/sharding/{s}.gin", p) for s in ("data_parallel", "fsdp", "fsdp_tensor")
                     for p in ("none", "full", "dots")}
    for pair in pairs:  # microbatches rising, stopping at the first that fits
        tried = [r for r in rows if (r["sharding"], r["remat_policy"]) == pair]
        assert [r["microbatches"] for r in tried] == [2**i for i in range(len(tried))]
        assert not any(r["fits"] for r in tried[:-1])
    best = stage["best"]
    assert best["mfu"] == max(r["mfu"] for r in rows if r["fits"])
    line = next(x for x in result.stdout.splitlines() if x.startswith("[reference] best: "))
    assert best["sharding"] in line and f"TrainConfig.microbatches = {best['microbatches']}" in line
    # The printed configuration, compiled as a user would paste it, gives the same bound.
    again = tmp_path / "again.json"
    result = run_aot(*common, f"--gin_file={best['sharding']}", f"--gin.TrainConfig.microbatches={best['microbatches']}",
                     f"--gin.TransformerConfig.remat_policy='{best['remat_policy']}'", f"--json={again}")
    assert result.returncode == 0, result.stderr
    step = json.loads(again.read_text())["stages"][0]["steps"][0]
    assert step["roofline"]["step_s"] == pytest.approx(best["step_s"], rel=1e-6)
