"""The stages an experiment's gin trains, as StagePlans, without reading any data.

A pipeline experiment (`gin/experiments/*.gin`, binding `run_pipeline.*`) gives the
kinds: reference and proxy (one run each per round), main (the DoReMi and baseline
models and the fixed mixtures of `run_pipeline.methods`, per seed), main_odm (Online
Data Mixing's main models: another step) and regmix (RegMix's small runs, each on one
host's chips when they are shared out between hosts), each parsed exactly as the
pipeline parses it, command line included (`--gin.main/...` reaches only the main
models). Any other gin is one
trainer run. Macros that only name inputs (DATA_DIR, SPM_MODEL, REFERENCE_DIR) may
stay unset: nothing is read.
"""

from __future__ import annotations

from typing import Sequence

from doremi_jax import config, pipeline, sharding
from doremi_jax.aot.compile import StagePlan
from doremi_jax.models import TransformerConfig
from doremi_jax.train import loop, methods
from doremi_jax.train.state import OptimizerConfig

PLACEHOLDER = "unused-by-aot"
_TRAIN_ARGS = ("method", "model", "mesh", "optimizer", "config")


def _plan(name: str, runs: int, one_host: bool = False) -> StagePlan:
    args = config.call_arguments("train", _TRAIN_ARGS)
    return StagePlan(
        name=name,
        model=args.get("model", TransformerConfig()),
        mesh=args.get("mesh", sharding.MeshConfig()),
        optimizer=args.get("optimizer", OptimizerConfig()),
        config=args.get("config", loop.TrainConfig()),
        method=args.get("method", methods.FIXED_MIXTURE),
        runs=runs,
        one_host=one_host,
    )


def plans(files: Sequence[str], bindings: Sequence[str]) -> tuple[list[StagePlan], str]:
    """The stage plans of the command line's gin, and what it is (`pipeline` or `train`)."""
    pipeline.register()
    command_line = pipeline.CommandLine(tuple(files), tuple(bindings))
    config.parse(files, [], (), command_line.pipeline_bindings(), check_macros=False, fill_required=PLACEHOLDER)
    experiment = {
        name: config.query(f"run_pipeline.{name}")
        for name in ("reference_gin", "proxy_gin", "main_gin", "common_bindings", "reference_bindings",
                     "proxy_bindings", "main_bindings", "max_rounds", "main_seeds", "search_seeds", "methods")
    }
    regmix = config.call_arguments("run_pipeline", ("regmix",)).get("regmix", pipeline.RegMixConfig())
    if experiment["reference_gin"] is None and experiment["main_gin"] is None:
        config.parse([], [], files, bindings, fill_required=PLACEHOLDER)
        return [_plan("train", 1)], "train"

    def listed(name, default=()):
        value = experiment[name]
        return tuple(default if value is None else value)

    factory = pipeline.StageFactory(
        PLACEHOLDER, listed("reference_gin", ("gin/runs/reference.gin",)), listed("proxy_gin", ("gin/runs/proxy.gin",)),
        listed("main_gin", ("gin/runs/main.gin",)), listed("common_bindings"), listed("reference_bindings"),
        listed("proxy_bindings"), listed("main_bindings"), command_line,
        tuple(regmix.gin_files), tuple(regmix.bindings),
    )
    searches = max(1, len(experiment["search_seeds"] or ()))  # each repeats the rounds and small runs
    rounds = int(experiment["max_rounds"] or 1) * searches
    seeds = max(1, len(experiment["main_seeds"] or ()))
    methods = set(listed("methods"))
    fixed_mains = 2 + len(methods & {"uniform", "regmix"})  # DoReMi, baseline, and these
    kinds = [
        ("reference", factory.reference(1, "natural", ""), rounds, False),
        ("proxy", factory.proxy(1, PLACEHOLDER, ""), rounds, False),
        ("main", factory.main("main", "natural", "", None), fixed_mains * seeds, False),
    ]
    if "odm" in methods:
        kinds.append(("main_odm", factory.main("main_odm", "natural", "", None, method=pipeline.ODM), seeds, False))
    if "regmix" in methods:
        kinds.append(("regmix", factory.regmix_run(0, "uniform", ""), regmix.runs * searches, regmix.spread_over_hosts))
    out = []
    for name, stage, runs, one_host in kinds:
        config.parse(stage.gin_files, stage.bindings, stage.user_files, stage.user_bindings,
                     fill_required=PLACEHOLDER)
        out.append(_plan(name, runs, one_host))
    return out, "pipeline"
