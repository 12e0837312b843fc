"""The stages an experiment's gin trains, as StagePlans, without reading any data.

A pipeline experiment (`gin/experiments/*.gin`, binding `run_pipeline.*`) gives the
kinds: each method's own stages (DoReMi's reference and proxy, one run each per round;
RegMix's small runs, each on one host's chips when they are shared out between hosts),
main (the fixed-mixture main models of every method and the baseline, per seed) and
main_<method> for a method whose main models train with a plug-in of their own (ODM):
each parsed exactly as the pipeline parses it, command line included (`--gin.main/...`
reaches only the main models). Any other gin is one trainer run. Macros that only name
inputs (DATA_DIR, SPM_MODEL, REFERENCE_DIR) may stay unset: nothing is read.
"""

from __future__ import annotations

from typing import Sequence

from doremi_jax import config, methods as methods_lib, pipeline, sharding
from doremi_jax.aot.compile import StagePlan
from doremi_jax.methods import Context
from doremi_jax.models import TransformerConfig
from doremi_jax.stages import StageFactory
from doremi_jax.train import loop
from doremi_jax.train.mixture import FIXED_MIXTURE
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
        method=args.get("method", FIXED_MIXTURE),
        runs=runs,
        one_host=one_host,
    )


def plans(files: Sequence[str], bindings: Sequence[str]) -> tuple[list[StagePlan], str]:
    """The stage plans of the command line's gin, and what it is (`pipeline` or `train`)."""
    pipeline.register()
    command_line = pipeline.command_line_of(files, bindings)
    config.parse(files, [], (), command_line.pipeline_bindings(), check_macros=False, fill_required=PLACEHOLDER)
    experiment = {
        name: config.query(f"run_pipeline.{name}")
        for name in ("reference_gin", "proxy_gin", "main_gin", "common_bindings", "reference_bindings",
                     "proxy_bindings", "main_bindings", "max_rounds", "main_seeds", "search_seeds", "methods",
                     "initial_reference_weights")
    }
    if experiment["reference_gin"] is None and experiment["main_gin"] is None:
        config.parse([], [], files, bindings, fill_required=PLACEHOLDER)
        return [_plan("train", 1)], "train"

    def listed(name, default=()):
        value = experiment[name]
        return tuple(default if value is None else value)

    options = {name: value for name, value in experiment.items() if value is not None}
    chosen = [methods_lib.get(name) for name in (methods_lib.PRIMARY, *dict.fromkeys(listed("methods")))]
    factory = StageFactory(PLACEHOLDER, listed("main_gin", ("gin/runs/main.gin",)), listed("common_bindings"),
                           listed("main_bindings"), command_line, methods_lib.settings_names())
    ctx = Context(PLACEHOLDER, factory, "natural", options)
    searches = max(1, len(experiment["search_seeds"] or ()))  # each repeats the searches' stages
    seeds = max(1, len(experiment["main_seeds"] or ()))
    out = []
    for name, stage, runs, one_host in pipeline.topology(ctx, chosen, searches, seeds):
        stage.parse(check_macros=True, fill_required=PLACEHOLDER)
        out.append(_plan(name, runs, one_host))
    return out, "pipeline"
