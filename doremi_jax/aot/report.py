"""The ahead-of-time report: a table per step, the experiment's cost, and JSON."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from doremi_jax import hardware
from doremi_jax.aot.compile import StagePlan, StepReport, roofline

GiB = 2**30
SECONDS_PER_DAY = 86_400


def to_json(plans: Sequence[StagePlan], reports: Sequence[StepReport], chips: dict[str, hardware.Chip],
            topologies: dict[str, str]) -> dict[str, Any]:
    stages = []
    total_days = total_compute_days = 0.0
    for plan in plans:
        chip = chips[plan.name]
        steps = []
        for r in (r for r in reports if r.stage == plan.name):
            entry = dataclasses.asdict(r)
            entry["fits"] = r.fits
            entry["roofline"] = roofline(r, chip)
            if r.estimate_bytes:
                entry["estimate_over_compiled"] = r.estimate_bytes / max(r.memory["total"], 1)
            steps.append(entry)
        train = steps[0]
        steps_run = plan.config.train_steps * plan.runs
        # Runs side by side (one per host) take the time of the longest queue of them.
        steps_in_turn = plan.config.train_steps * -(-plan.runs // plan.side_by_side)
        days = train["roofline"]["step_s"] * steps_in_turn / SECONDS_PER_DAY
        compute_days = train["roofline"]["compute_s"] * steps_in_turn / SECONDS_PER_DAY
        total_days += days
        total_compute_days += compute_days
        stages.append({
            "stage": plan.name,
            "topology": topologies[plan.name],
            "chip": chip.name,
            "chips": train["chips"],
            "run": plan.method.name,
            "train_steps": plan.config.train_steps,
            "runs": plan.runs,
            "batch_size": plan.config.batch_size,
            "sequence_length": plan.config.sequence_length,
            "mesh": {"data": plan.mesh.data, "fsdp": plan.mesh.fsdp, "tensor": plan.mesh.tensor,
                     "dcn_data": plan.mesh.dcn_data},
            "remat_policy": plan.model.remat_policy,
            "microbatches": plan.config.microbatches,
            "attention": plan.model.attention_implementation,
            "steps": steps,
            "days": days,  # at the roofline estimate
            "compute_days": compute_days,  # at the bf16 peak: a strict lower bound
            "chip_days": train["roofline"]["step_s"] * steps_run / SECONDS_PER_DAY * train["chips"],
            "side_by_side": plan.side_by_side,
        })
    return {
        "stages": stages,
        "days": total_days,
        "compute_days": total_compute_days,
        "fits": all(s["fits"] for st in stages for s in st["steps"]),
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"{'stage/step':<22}{'topology':>12}{'chips':>6}{'mem GiB':>9}{'HBM':>6}{'fits':>13}"
        f"{'est/XLA':>8}{'TFLOP/chip':>11}{'XLA/model':>10}{'  collectives (count, GiB/step)':<42}"
        f"{'step s':>10}{'bound':>8}{'MFU':>7}{'MFU<=':>7}",
    ]
    for stage in result["stages"]:
        for s in stage["steps"]:
            mem = s["memory"]["total"] / GiB
            coll = ", ".join(
                f"{k.replace('collective-', 'c')} {int(v['count'])} {v['bytes'] / GiB:.2f}"
                for k, v in s["collectives"].items()
            ) or "none"
            ratio = s["compiler_flops"] / s["model_flops"] if s["model_flops"] else float("nan")
            est = s.get("estimate_over_compiled")
            roof = s["roofline"]
            mfu = f"{roof['mfu']:.0%}" if s["model_flops"] else "-"
            mfu_bound = f"{roof['mfu_compute_bound']:.0%}" if s["model_flops"] else "-"
            est_text = f"{est:.2f}" if est else "-"
            ratio_text = f"{ratio:.2f}" if s["model_flops"] else "-"
            lines.append(
                f"{stage['stage'] + '/' + s['step']:<22}{stage['topology']:>12}{s['chips']:>6}{mem:>9.2f}"
                f"{s['hbm_bytes'] / GiB:>6.0f}{'FITS' if s['fits'] else 'DOES NOT FIT':>13}"
                f"{est_text:>8}{s['compiler_flops'] / 1e12:>11.3f}"
                f"{ratio_text:>10}  {coll:<40}"
                f"{roof['step_s']:>10.4f}{roof['bound_by']:>8}"
                f"{mfu:>7}{mfu_bound:>7}"
            )
    lines.append("")
    for stage in result["stages"]:
        for s in stage["steps"]:
            if s.get("kernel_flops"):
                lines.append(
                    f"{stage['stage']}/{s['step']}: {s['kernel_flops'] / 1e12:.3f} of its TFLOP/chip are Pallas "
                    "attention kernels', counted from their shapes (XLA's cost analysis sees none inside a "
                    "kernel; aot/kernels.py)"
                )
    for stage in result["stages"]:
        lines.append(
            f"{stage['stage']}: {stage['runs']} run(s) x {stage['train_steps']} steps on {stage['topology']} "
            f"({stage['chips']} chips): {stage['days']:.2f} days at the roofline estimate "
            f"({stage['chip_days']:.1f} chip-days), >= {stage['compute_days']:.2f} at the bf16 peak"
        )
    lines.append(
        f"whole experiment: {result['days']:.2f} days at the roofline estimate, >= {result['compute_days']:.2f} "
        "at the bf16 peak (evaluation excluded)"
    )
    return "\n".join(lines)
