"""Lower and compile a stage's real steps against compile-only devices, and measure them.

The steps are the trainer's own (`loop.jit_step`, `perplexity.jit_eval_step`) with the
stage's model, batch, sequence length, mesh, sharding rules and remat policy, lowered
against shapes (`loop.abstract_state`): no parameter is ever materialised. From the
executable: memory per chip (XLA's memory analysis), the collectives it runs per step
(`hlo.collectives`), and XLA's FLOP and HBM byte counts.

XLA's cost analysis counts a loop body once, and a TPU program has loops of two kinds:
a scanned stack of layers and the SPMD partitioner's windowed einsums (FSDP's
all-gathers overlapped with the matmuls). So FLOPs and bytes come from a second compile
of the same step without loops (layers unrolled, windowed einsums off): the same math,
counted whole. Memory and collectives come from the program that would run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from doremi_jax import bench, dro, hardware, sharding
from doremi_jax.aot import hlo
from doremi_jax.data import sampler
from doremi_jax.eval import perplexity
from doremi_jax.models import Transformer, TransformerConfig
from doremi_jax.train import loop
from doremi_jax.train.state import OptimizerConfig, make_optimizer

# Compiler options of the cost-only compile (libtpu flags; the program that would run
# keeps its defaults).
_NO_WINDOWED_EINSUM = {
    "xla_tpu_enable_windowed_einsum_for_all_gather": False,
    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False,
}


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """One kind of run of an experiment, as its gin configures it."""

    name: str  # reference | proxy | main | train
    run: str  # lm | doremi
    model: TransformerConfig
    mesh: sharding.MeshConfig
    optimizer: OptimizerConfig
    config: loop.TrainConfig
    doremi: loop.DroConfig
    runs: int = 1  # how many runs of this kind the experiment trains (rounds, both main models, seeds)


@dataclasses.dataclass
class StepReport:
    stage: str
    step: str  # lm_step | doremi_step | eval_step
    chips: int
    memory: dict[str, int]  # per chip: arguments, outputs, aliased, temporaries, code, total
    hbm_bytes: float
    model_flops: float  # per chip per step (the benchmark's count; 0 for the eval step)
    compiler_flops: float  # per chip per step, XLA's count of the loop-free program
    hbm_traffic_bytes: float  # per chip per step, XLA's "bytes accessed"
    collectives: dict[str, dict[str, float]]  # kind -> count, bytes, traffic per chip per step
    unknown_loops: int
    estimate_bytes: float | None = None  # the trainer's own estimate (train steps)

    @property
    def fits(self) -> bool:
        return self.memory["total"] <= self.hbm_bytes


def abstract_batch(mesh, rows: int, length: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes of a global batch as the sampler makes it, split over the batch axes."""
    spec = sharding.batch_sharding(mesh)
    return {
        name: jax.ShapeDtypeStruct(
            (rows, length), jnp.float32 if name == "decoder_loss_weights" else jnp.int32, sharding=spec
        )
        for name in sampler.FEATURES
    }


def _lowered(plan: StagePlan, model_cfg: TransformerConfig, mesh, step: str, num_domains: int):
    """The jitted step of `plan` for `model_cfg`, lowered against shapes."""
    rules = plan.mesh.rules
    tx = make_optimizer(plan.optimizer, plan.config.train_steps)
    weight_tx = dro.multiplicative_weights(plan.doremi.learning_rate, plan.doremi.smoothing)
    state, state_shardings, param_shardings = loop.abstract_state(model_cfg, tx, num_domains, mesh, rules, weight_tx)
    batch = abstract_batch(mesh, plan.config.batch_size, plan.config.sequence_length)
    model = Transformer(model_cfg)
    with sharding.activate(mesh, rules):
        if step == "eval_step":
            return perplexity.jit_eval_step(model, mesh, param_shardings, num_domains).lower(state.params, batch)
        args = (model, tx, weight_tx, num_domains, plan.doremi, plan.config.microbatches, mesh, state_shardings)
        if step == "lm_step":
            return loop.jit_step(*args).lower(state, batch)
        reference_cfg = _reference_model(plan, model_cfg)
        ref_params, ref_shardings = loop.abstract_params(reference_cfg, mesh, rules)
        fn = loop.jit_step(*args, reference=(Transformer(reference_cfg), ref_shardings))
        return fn.lower(state, batch, ref_params)


def _reference_model(plan: StagePlan, model_cfg: TransformerConfig) -> TransformerConfig:
    reference = plan.doremi.reference_model or plan.model
    # The cost-only compile unrolls the proxy; the reference is unrolled with it.
    return dataclasses.replace(reference, scan_layers=model_cfg.scan_layers)


def _costs(compiled) -> tuple[float, float]:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
        analysis = analysis[0]
    return float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0))


def _memory(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    out = {
        "arguments": int(m.argument_size_in_bytes),
        "outputs": int(m.output_size_in_bytes),
        "aliased": int(m.alias_size_in_bytes),  # donated state: counted once
        "temporaries": int(m.temp_size_in_bytes),
        "code": int(m.generated_code_size_in_bytes),
    }
    out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"] + out["code"]
    return out


def stage_steps(plan: StagePlan) -> list[str]:
    return ["doremi_step" if plan.run == "doremi" else "lm_step", "eval_step"]


def compile_stage(plan: StagePlan, devices: list, chip: hardware.Chip, num_domains: int) -> list[StepReport]:
    """Compile `plan`'s train and eval steps for `devices`; one report per step."""
    mesh = sharding.make_mesh(plan.mesh, devices)
    dp = sharding.data_parallel_size(mesh)
    cfg = plan.config
    if cfg.batch_size % (dp * cfg.microbatches):
        raise loop.TrainingError(
            f"[{plan.name}] BATCH_SIZE={cfg.batch_size} is not divisible by the {dp} data-parallel chips"
            + (f" x {cfg.microbatches} microbatches" if cfg.microbatches > 1 else "")
        )
    flops = bench.model_flops_per_step(plan.model, cfg.batch_size, cfg.sequence_length)
    loop_free = dataclasses.replace(plan.model, scan_layers=False)
    reports = []
    for step in stage_steps(plan):
        compiled = _lowered(plan, plan.model, mesh, step, num_domains).compile()
        text = compiled.as_text()
        if plan.model.scan_layers or " while(" in text:
            cost_compiled = _lowered(plan, loop_free, mesh, step, num_domains).compile(
                compiler_options=_NO_WINDOWED_EINSUM
            )
        else:
            cost_compiled = compiled
        compiler_flops, traffic = _costs(cost_compiled)
        found, unknown = hlo.collectives(text)
        estimate = None
        if step != "eval_step":
            estimate = sum(loop.memory_estimate(
                plan.model, mesh, plan.mesh.rules, plan.optimizer.name, cfg.batch_size // cfg.microbatches,
                cfg.sequence_length, plan.run == "doremi",
            ).values())
        reports.append(StepReport(
            stage=plan.name,
            step=step,
            chips=len(devices),
            memory=_memory(compiled),
            hbm_bytes=chip.hbm_bytes,
            model_flops=flops.get(step, 0.0) / len(devices),
            compiler_flops=compiler_flops,
            hbm_traffic_bytes=traffic,
            collectives={k: dataclasses.asdict(v) for k, v in found.items() if v.count},
            unknown_loops=unknown,
            estimate_bytes=estimate,
        ))
    return reports


def roofline(report: StepReport, chip: hardware.Chip) -> dict[str, Any]:
    """A lower bound on the step time from the datasheet: the slowest of the compute
    (XLA's FLOPs at the bf16 peak), the HBM traffic at its bandwidth and the ICI traffic
    of the collectives at the chip's bidirectional ICI bandwidth (as if all overlapped
    perfectly); hence an upper bound on MFU."""
    compute = report.compiler_flops / chip.bf16_flops_per_s
    memory = report.hbm_traffic_bytes / chip.hbm_bytes_per_s
    ici_traffic = sum(c["traffic"] for c in report.collectives.values())
    ici = ici_traffic / chip.ici_bytes_per_s
    step_s = max(compute, memory, ici, 1e-12)
    bound = {"compute": compute, "hbm": memory, "ici": ici}
    return {
        "compute_s": compute,
        "hbm_s": memory,
        "ici_s": ici,
        "step_s": step_s,
        "bound_by": max(bound, key=bound.get),
        "mfu_bound": report.model_flops / (step_s * chip.bf16_flops_per_s) if report.model_flops else math.nan,
    }
