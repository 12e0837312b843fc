"""`python -m doremi_jax.aot --search`: per stage, the sharding, remat policy and
microbatches with the best roofline bound that fits, as gin bindings to paste.

The grid is bounded and printed before anything compiles: every sharding file of
`gin/sharding/` x every remat policy, and for each pair the fewest microbatches that
fit (1, 2, 4, ... up to MAX_MICROBATCHES; more microbatches only repeat the weights'
all-gathers and shrink the matmuls, so the first that fits is the pair's best). Each
candidate is the stage's train step compiled as `aot` compiles it (memory, XLA's FLOPs
and bytes, collectives, the roofline bound); the evaluation step is not searched.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
from typing import Any

from doremi_jax import config, sharding
from doremi_jax.errors import InputError
from doremi_jax.aot.compile import StagePlan, compile_stage, roofline
from doremi_jax.models.transformer import REMAT_POLICIES
from doremi_jax.train import loop

SHARDING_DIR = os.path.join(config.REPO_ROOT, "gin", "sharding")
MAX_MICROBATCHES = 16
_MESH_FIELDS = ("data", "fsdp", "tensor", "rules")


def sharding_files() -> list[str]:
    return sorted(glob.glob(os.path.join(SHARDING_DIR, "*.gin")))


def mesh_of(path: str, base: sharding.MeshConfig) -> sharding.MeshConfig:
    """The MeshConfig a sharding file binds, with `base`'s DCN axis (the slices)."""
    config.parse([path], [], check_macros=False)
    values = config.call_arguments("MeshConfig", _MESH_FIELDS)
    return dataclasses.replace(sharding.MeshConfig(**values), dcn_data=base.dcn_data)


def grid(plan: StagePlan) -> list[tuple[str, sharding.MeshConfig, str, list[int]]]:
    """(sharding file, its mesh, remat policy, microbatches in the order tried)."""
    counts = [m for m in (2**i for i in range(int(math.log2(MAX_MICROBATCHES)) + 1))
              if plan.config.batch_size % m == 0]
    policies = {}  # one name per policy ("minimal" is "dots")
    for name, policy in REMAT_POLICIES.items():
        policies.setdefault(policy, name)
    return [(os.path.relpath(path, config.REPO_ROOT), mesh_of(path, plan.mesh), remat, counts)
            for path in sharding_files() for remat in policies.values()]


def search_stage(plan: StagePlan, devices: list, chip, num_domains: int, log=print) -> dict[str, Any]:
    """Compile the grid's candidates for `plan` on `devices`; every row, and the best."""
    rows = []
    candidates = grid(plan)
    log(f"[{plan.name}] search: {len(candidates)} (sharding x remat) pairs, microbatches "
        f"{candidates[0][3]} tried fewest first: at most {sum(len(c[3]) for c in candidates)} compiles")
    for path, mesh, remat, counts in candidates:
        for microbatches in counts:
            candidate = dataclasses.replace(
                plan, mesh=mesh, model=dataclasses.replace(plan.model, remat_policy=remat),
                config=dataclasses.replace(plan.config, microbatches=microbatches),
            )
            row = {"sharding": path, "remat_policy": remat, "microbatches": microbatches}
            try:
                report = compile_stage(candidate, devices, chip, num_domains, train_only=True)[0]
            except (loop.TrainingError, InputError) as e:  # shapes the mesh cannot split
                row.update(fits=False, error=str(e).splitlines()[0])
                rows.append(row)
                log(f"  {path} remat={remat} microbatches={microbatches}: {row['error']}")
                break
            roof = roofline(report, chip)
            row.update(fits=report.fits, memory_gib=report.memory["total"] / 2**30, step_s=roof["step_s"],
                       mfu=roof["mfu"], bound_by=roof["bound_by"])
            rows.append(row)
            log(f"  {path} remat={remat} microbatches={microbatches}: {row['memory_gib']:.1f} GiB "
                + (f"fits, {roof['step_s']:.4f} s ({roof['bound_by']}), MFU <= {roof['mfu']:.0%}"
                   if report.fits else "does not fit"))
            if report.fits:
                break
    fitting = [r for r in rows if r["fits"]]
    best = max(fitting, key=lambda r: r["mfu"]) if fitting else None
    return {"stage": plan.name, "rows": rows, "best": best}


def bindings(best: dict[str, Any]) -> list[str]:
    """The best candidate as gin bindings (its sharding file goes in the stage's gin list)."""
    return [f"TrainConfig.microbatches = {best['microbatches']}",
            f"TransformerConfig.remat_policy = '{best['remat_policy']}'"]


def format_result(result: dict[str, Any]) -> str:
    best = result["best"]
    if best is None:
        return f"[{result['stage']}] nothing in the grid fits"
    return (f"[{result['stage']}] best: {best['sharding']} with {bindings(best)} "
            f"({best['memory_gib']:.1f} GiB, {best['step_s']:.4f} s a step, MFU <= {best['mfu']:.0%})")
