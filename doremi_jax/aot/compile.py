"""Lower and compile a stage's real steps against compile-only devices, and measure them.

The steps are the trainer's own (`setup.jit_step`, `perplexity.jit_eval_step`) with the
stage's model, batch, sequence length, mesh, sharding rules and remat policy, lowered
against shapes (`setup.abstract_state`): no parameter is ever materialised. From the
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
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from doremi_jax import hardware, sharding
from doremi_jax.aot import hlo, kernels
from doremi_jax.data import sampler
from doremi_jax.eval import perplexity
from doremi_jax.models import TransformerConfig, model_flops_per_step
from doremi_jax.train import loop, memory, setup
from doremi_jax.train.mixture import MixtureMethod
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
    model: TransformerConfig
    mesh: sharding.MeshConfig
    optimizer: OptimizerConfig
    config: loop.TrainConfig
    method: MixtureMethod  # the trainer's plug-in (train/mixture.py)
    runs: int = 1  # how many runs of this kind the experiment trains (rounds, both main models, seeds)
    # Each run on one host's chips (RegMix's small runs, shared out between the hosts).
    one_host: bool = False
    side_by_side: int = 1  # runs trained at once (one per host, when one_host)


@dataclasses.dataclass
class StepReport:
    stage: str
    step: str  # the plug-in's step (lm_step, doremi_step) | eval_step
    chips: int
    # Per chip: arguments, outputs, aliased, temporaries, code, total; or, when XLA
    # refused the program for lack of HBM, the total it asked for and its message.
    memory: dict[str, Any]
    hbm_bytes: float
    model_flops: float  # per chip per step (the benchmark's count; 0 for the eval step)
    compiler_flops: float  # per chip per step, XLA's count of the loop-free program
    hbm_traffic_bytes: float  # per chip per step, XLA's "bytes accessed"
    collectives: dict[str, dict[str, float]]  # kind -> count, bytes, traffic per chip per step
    unknown_loops: int
    estimate_bytes: float | None = None  # the trainer's own estimate (train steps)
    # Of compiler_flops: the Pallas kernels' FLOPs, counted from their shapes
    # (aot/kernels.py), which XLA's cost analysis cannot see.
    kernel_flops: float = 0.0

    @property
    def fits(self) -> bool:
        return "compile_error" not in self.memory and self.memory["total"] <= self.hbm_bytes


def abstract_batch(mesh, rows: int, length: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes of a global batch as the sampler makes it, split over the batch axes."""
    spec = sharding.batch_sharding(mesh)
    return {
        name: jax.ShapeDtypeStruct(
            (rows, length), jnp.float32 if name == "decoder_loss_weights" else jnp.int32, sharding=spec
        )
        for name in sampler.FEATURES
    }


def _lowered(plan: StagePlan, model_cfg: TransformerConfig, mesh, step: str, num_domains: int,
             reference_cfg: TransformerConfig | None = None):
    """The jitted step of `plan` for `model_cfg` (and, for a step with a reference, the reference
    `reference_cfg`, by default the stage's own), lowered against shapes."""
    rules = plan.mesh.rules
    tx = make_optimizer(plan.optimizer, plan.config.train_steps)
    state, state_shardings, param_shardings = setup.abstract_state(model_cfg, tx, num_domains, mesh, rules, plan.method)
    rows = (plan.config.eval_batch_size or plan.config.batch_size) if step == "eval_step" else plan.config.batch_size
    batch = abstract_batch(mesh, rows, plan.config.sequence_length)
    model = model_cfg.make()
    with sharding.activate(mesh, rules):
        if step == "eval_step":
            return perplexity.jit_eval_step(model, mesh, param_shardings, num_domains).lower(state.params, batch)
        args = (model, tx, plan.method, num_domains, plan.config.microbatches, mesh, state_shardings)
        if not plan.method.needs_reference:
            return setup.jit_step(*args).lower(state, batch)
        reference_cfg = reference_cfg or plan.method.reference_model or plan.model
        ref_params, ref_shardings = setup.abstract_params(reference_cfg, mesh, rules)
        fn = setup.jit_step(*args, reference=(reference_cfg.make(), ref_shardings))
        return fn.lower(state, batch, ref_params)


def _loop_free_costs(plan: StagePlan, mesh, step: str, num_domains: int) -> tuple[float, float, float]:
    """XLA's FLOPs and bytes of `step` compiled without loops. A scanned stack is costed
    from unrolled stacks of one and two layers (layers are identical, so the cost is
    affine in depth): compiling 32 unrolled layers of an 8B model would take many
    minutes on a small host; two layers take seconds."""
    # Microbatches are a scan too: cost one microbatch's step and count it per microbatch
    # (a plug-in's exact accumulation, DoReMi's, adds one forward over the batch). The optimizer
    # update is then counted per microbatch too: a small overcount (for the 280M stage,
    # 8 x 0.6 GB of bytes against 1 TB per step).
    repeats, extra_flops = 1, 0.0
    if step != "eval_step" and plan.config.microbatches > 1:
        repeats = plan.config.microbatches
        config = dataclasses.replace(plan.config, batch_size=plan.config.batch_size // repeats, microbatches=1)
        if plan.method.forward_before_accumulating:
            extra_flops = model_flops_per_step(
                plan.model, plan.config.batch_size, plan.config.sequence_length, causal_savings=False
            )["eval_step"] / mesh.size
        plan = dataclasses.replace(plan, config=config)

    def cost(layers: int, reference_layers: int):
        model = dataclasses.replace(plan.model, num_layers=layers, scan_layers=False)
        ref = plan.method.reference_model or plan.model
        ref = dataclasses.replace(ref, num_layers=reference_layers, scan_layers=False)
        compiled = _compile(_lowered(plan, model, mesh, step, num_domains, ref), compiler_options=_NO_WINDOWED_EINSUM)
        return np.asarray(_costs(compiled, compiled.as_text(), plan.model.pallas_block_size))

    depth = plan.model.num_layers
    with_reference = plan.method.needs_reference and step != "eval_step"
    ref_depth = (plan.method.reference_model or plan.model).num_layers if with_reference else depth
    if not plan.model.scan_layers:
        total = cost(depth, ref_depth)
    else:
        base = cost(1, 1)
        if ref_depth == depth:
            total = base + (depth - 1) * (cost(2, 2) - base)
        else:
            total = base + (depth - 1) * (cost(2, 1) - base) + (ref_depth - 1) * (cost(1, 2) - base)
    return float(total[0]) * repeats + extra_flops, float(total[1]) * repeats, float(total[2]) * repeats


def _costs(compiled, text: str, pallas_block_size: int) -> tuple[float, float, float]:
    """FLOPs, HBM bytes and, of the FLOPs, the Pallas kernels' (which XLA's analysis
    cannot see; counted from their shapes in the program's HLO `text` and added)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
        analysis = analysis[0]
    extra = kernels.attention_kernels(text, pallas_block_size)
    return (float(analysis.get("flops", 0.0)) + extra.flops, float(analysis.get("bytes accessed", 0.0)) + extra.extra_bytes,
            extra.flops)


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
    # A step with a reference forward (DoReMi's proxy) costs more than the LM step; any
    # other plug-in's step is the LM step plus a few vector operations.
    return [plan.method.step_name, "eval_step"]


def _compile(lowered, **options):
    """XLA's compile, never the persistent cache's: a program for compile-only devices
    cannot be loaded back (there is no client to run it), and the figures are the
    compiler's own."""
    # jax decides once per process whether the cache is used; reset_cache makes it decide
    # again, without the cache here and with it (if enabled) for the next program.
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        return lowered.compile(**options)
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)
        compilation_cache.reset_cache()


def compile_stage(plan: StagePlan, devices: list, chip: hardware.Chip, num_domains: int,
                  train_only: bool = False) -> list[StepReport]:
    """Compile `plan`'s train and eval steps (or only the train step) for `devices`; one
    report per step."""
    mesh = sharding.make_mesh(plan.mesh, devices)
    dp = sharding.data_parallel_size(mesh)
    cfg = plan.config
    try:
        loop.check_shapes(cfg, plan.model, dp, devices="chips")
    except loop.TrainingError as e:
        raise loop.TrainingError(f"[{plan.name}] {e}") from None
    flops = model_flops_per_step(plan.model, cfg.batch_size, cfg.sequence_length)
    flops["eval_step"] *= (cfg.eval_batch_size or cfg.batch_size) / cfg.batch_size
    reports = []
    for step in stage_steps(plan)[:1 if train_only else None]:
        estimate = None
        if step != "eval_step":
            estimate = sum(memory.memory_estimate(
                plan.model, mesh, plan.mesh.rules, plan.optimizer.name, cfg.batch_size // cfg.microbatches,
                cfg.sequence_length, plan.method.needs_reference,
            ).values())
        try:
            compiled = _compile(_lowered(plan, plan.model, mesh, step, num_domains))
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            # XLA refuses a program over the chip's HBM; its message carries the figure.
            reports.append(_does_not_fit(plan, step, len(devices), chip, str(e), flops, estimate))
            continue
        text = compiled.as_text()
        if " while(" in text:
            compiler_flops, traffic, kernel_flops = _loop_free_costs(plan, mesh, step, num_domains)
        else:
            compiler_flops, traffic, kernel_flops = _costs(compiled, text, plan.model.pallas_block_size)
        found, unknown = hlo.collectives(text)
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
            kernel_flops=kernel_flops,
        ))
    return reports


_NEEDED = re.compile(r"required for [^(]*\(([\d.]+)([KMGT])\)[^(]*\(([\d.]+)([KMGT])\)")
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _does_not_fit(plan, step, chips, chip, message, flops, estimate) -> StepReport:
    """The report of a step XLA would not compile for lack of HBM, with its figures."""
    first = message.strip().splitlines()[0]
    m = _NEEDED.search(first)
    needed = float(m.group(1)) * _UNITS[m.group(2)] if m else math.nan
    available = float(m.group(3)) * _UNITS[m.group(4)] if m else chip.hbm_bytes
    return StepReport(
        stage=plan.name, step=step, chips=chips,
        memory={"total": needed, "compile_error": first.split(":", 1)[-1].strip()},
        hbm_bytes=available, model_flops=flops.get(step, 0.0) / chips, compiler_flops=math.nan,
        hbm_traffic_bytes=math.nan, collectives={}, unknown_loops=0, estimate_bytes=estimate,
    )


def roofline(report: StepReport, chip: hardware.Chip) -> dict[str, Any]:
    """A roofline estimate of the step time from the datasheet: the slowest of the
    compute (XLA's FLOPs at the bf16 peak), the HBM traffic (XLA's bytes accessed) at
    its bandwidth and the collectives' ICI traffic at the chip's bidirectional ICI
    bandwidth, as if they overlapped perfectly; and the MFU at that time. The compute
    time alone is a strict lower bound (`compute_s`, `mfu_compute_bound`); XLA counts
    the bytes of every fused op's operands and results, which can exceed what reaches
    HBM, so an HBM-bound estimate may be pessimistic."""
    if "compile_error" in report.memory:
        return {"compute_s": math.nan, "hbm_s": math.nan, "ici_s": math.nan, "step_s": math.nan,
                "bound_by": "-", "mfu": math.nan, "mfu_compute_bound": math.nan}
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
        "mfu": report.model_flops / (step_s * chip.bf16_flops_per_s) if report.model_flops else math.nan,
        "mfu_compute_bound": report.model_flops / (max(compute, 1e-12) * chip.bf16_flops_per_s),
    }
