"""`python -m doremi_jax.pipeline --gin_file=gin/experiments/demo.gin --workdir=DIR`.

The mixture methods' searches, then the main models, each stage a run of the one
trainer in its own folder (`stages.py`):

    DoReMi's rounds    round_k/reference, round_k/proxy  -> ᾱ   (`methods/doremi/`)
    each other method's search (`run_pipeline.methods`: RegMix's small runs, ...)
    main_doremi        the main model on the final ᾱ
    main_baseline      the same model, steps, batch and seed on the baseline weights
    main_<method>      the same, on each other method's mixture

then evaluation of all of them (per seed with `run_pipeline.main_seeds`) and a report
(domain_weights.json, rounds.json, eval.json, report.md with PNG plots). Rerunning
resumes: a finished stage whose configuration (and whose inputs) did not change is
skipped; a changed stage and every stage after it is redone. The pipeline names no
method: it iterates the registry (`doremi_jax/methods`).

The command line's `--gin_file`s and `--gin.NAME=VALUE` flags reach every stage after
its own gin (`stages.CommandLine`); `--gin.proxy/NAME=VALUE` (or `reference/`, `main/`,
`regmix/`: a stage kind) only the stages of that kind. Every stage's gin is parsed
before anything is written.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from doremi_jax import cli, comparison, config, configurables, fileio, methods as methods_lib, report, sharding
from doremi_jax.methods import Context, Found, Method
from doremi_jax.methods.base import mean_mixture
from doremi_jax.stages import MAIN, CommandLine, Stage, StageFactory, check_command_line, weights_of, write_json
from doremi_jax.train import workdir as workdir_lib


def run_pipeline(
    workdir: str,
    reference_gin: Sequence[str] = ("gin/runs/reference.gin",),
    proxy_gin: Sequence[str] = ("gin/runs/proxy.gin",),
    main_gin: Sequence[str] = ("gin/runs/main.gin",),
    common_bindings: Sequence[str] = (),
    reference_bindings: Sequence[str] = (),
    proxy_bindings: Sequence[str] = (),
    main_bindings: Sequence[str] = (),
    initial_reference_weights: str = "natural",
    baseline_weights: str = "natural",
    max_rounds: int = 1,
    tolerance: float = 1e-3,
    main_seeds: Sequence[int] = (),
    search_seeds: Sequence[int] = (),
    methods: Sequence[str] = (),
    command_line: CommandLine = CommandLine(),
    config_text: str | None = None,
) -> dict[str, Any]:
    """Run every stage; returns eval.json's content. Stage gin files and bindings are
    lists, as on a train command line; the pipeline adds the weights and folders that
    link the stages (REFERENCE_WEIGHTS, REFERENCE_DIR, MIXTURE_WEIGHTS), and
    `command_line` (the entry's `--gin_file`s and `--gin.` flags) comes after them.
    `config_text` (the pipeline's parsed gin) is written to workdir/pipeline.gin once
    every stage's gin has parsed. The reference and proxy arguments and the rounds'
    (`initial_reference_weights`, `max_rounds`, `tolerance`) are DoReMi's
    (`methods/doremi/`). `main_seeds`: with two or more, every main model is trained
    once per seed (folders main_doremi_seed<s>, main_baseline_seed<s>, ...) and the
    verdicts (eval.json "verdicts", `report.judge`) pair them by seed; empty (default),
    one of each with the runs' own SEED. `methods`: more main models beside DoReMi's and
    the baseline's, on the same steps, batch and seeds, each compared with the baseline
    and all of them side by side (eval.json "comparison", report.md): any registered
    method (`doremi_jax.methods.names()`: uniform, odm, regmix, temperature, and any a
    gin file imports). `search_seeds`: with two or more, the searches (DoReMi's rounds,
    RegMix's small runs and their random mixtures) are repeated once per seed, each in
    search_seed<s>/ with TrainConfig.seed = s, and main seed i trains on search i mod
    S's mixture: the paired intervals then cover the search's own variance, not only
    the main runs'. The top domain_weights.json is the searches' mean, and eval.json
    "search" (report.md "The search's own variance") their spread. Empty (default): one
    search on the stages' seed."""
    others = [m for m in methods_lib.names() if m != methods_lib.PRIMARY]
    unknown = sorted(set(methods) - set(others))
    if unknown:
        raise config.ConfigError(f"run_pipeline.methods: unknown {unknown}; expected some of {others}")
    searches = [int(s) for s in search_seeds] if len(search_seeds) > 1 else [None]
    seeds = [int(x) for x in main_seeds] if len(main_seeds) > 1 else [None]
    if len(searches) > 1 and (len(seeds) < len(searches) or len(set(searches)) < len(searches)):
        raise config.ConfigError(
            f"run_pipeline.search_seeds={list(search_seeds)}: each search needs its own main seeds "
            f"(run_pipeline.main_seeds={list(main_seeds)} has {len(set(main_seeds))}), and the seeds must differ")
    chosen = [methods_lib.get(name) for name in (methods_lib.PRIMARY, *dict.fromkeys(methods))]
    command_line = dataclasses.replace(command_line, scopes=(MAIN, *methods_lib.stage_kinds()))
    stages = StageFactory(workdir, tuple(main_gin), tuple(common_bindings), tuple(main_bindings), command_line,
                          methods_lib.settings_names())
    ctx = Context(workdir, stages, baseline_weights, dict(
        reference_gin=tuple(reference_gin), proxy_gin=tuple(proxy_gin), reference_bindings=tuple(reference_bindings),
        proxy_bindings=tuple(proxy_bindings), initial_reference_weights=initial_reference_weights,
        max_rounds=max_rounds, tolerance=tolerance))

    # Every stage's configuration is checked before anything is written.
    for method in chosen:
        method.check(ctx)
    check_command_line([stage for _, stage, _, _ in topology(ctx, chosen)], command_line)
    workdir_lib.check_writable(workdir)
    if config_text is not None:
        config.write_file(os.path.join(workdir, "pipeline.gin"), config_text)

    found: dict[str, dict[int | None, Found]] = {m.name: {} for m in chosen}  # method -> search seed -> mixture
    for search in searches:
        for method in chosen:
            found[method.name][search] = method.search(ctx, search)
    domains = next((list(f.mixture) for by_search in found.values() for f in by_search.values() if f.mixture),
                   None) or ctx.training_tokens[0]

    pairs: dict[str, list[dict]] = {m.name: [] for m in chosen}  # method -> per main seed, against the baseline
    main_flops = 0.0
    for i, seed in enumerate(seeds):
        suffix = "" if seed is None else f"_seed{seed}"
        search = searches[i % len(searches)]
        for j, method in enumerate(chosen):
            mixture = found[method.name][search]
            stage = stages.main(f"main_{method.name}{suffix}", mixture.weights, mixture.upstream, seed,
                                trainer=method.main_trainer)
            summary, _ = stage.run()
            if j == 0:  # the pipeline's method, then the baseline of this seed
                main_flops = stage.flops(summary)
                baseline_stage = stages.main(f"main_baseline{suffix}", baseline_weights, "baseline", seed)
                baseline_summary, _ = baseline_stage.run()
            pair = report.compare(stage.workdir, baseline_stage.workdir, summary, baseline_summary, method.name,
                                  method.label)
            pair["seed"] = seed
            if search is not None:
                pair["search_seed"] = search
            if j > 0:
                pair["workdir"] = stage.workdir
                pair["weights"] = summary.get("average_domain_weights") or summary["sampling_weights"]
            pairs[method.name].append(pair)

    primary, rest = chosen[0], chosen[1:]
    first = pairs[primary.name][0]
    evaluation = dict(first)  # the first seed's figures, plus the verdicts over every seed
    baseline = weights_of(first["workdirs"]["baseline"], domains)
    evaluation["baseline_weights"] = dict(zip(domains, baseline.tolist()))
    for method in chosen:
        evaluation.update(method.combine(ctx, found[method.name], domains))
    evaluation["verdicts"] = report.judge(pairs[primary.name])
    if len(seeds) > 1:
        evaluation["per_seed"] = pairs[primary.name]
    for method in rest:
        evaluation[method.name] = dict(pairs[method.name][0], verdicts=report.judge(pairs[method.name]))
    if len(searches) > 1:
        evaluation["search"] = _search_spread(chosen, found, searches, domains)
    if rest:
        weights = {"baseline": evaluation["baseline_weights"],
                   primary.name: mean_mixture(found[primary.name], domains),
                   **{m.name: pairs[m.name][0]["weights"] for m in rest}}
        evaluation["comparison"] = comparison.build(
            pairs, {primary.name: evaluation["verdicts"], **{m.name: evaluation[m.name]["verdicts"] for m in rest}},
            weights, {m.name: sum(f.flops for f in found[m.name].values()) for m in chosen}, main_flops,
            {m.name: m.cost for m in chosen},
        )
    # eval.json names the runs' folders relative to the pipeline's workdir: the same
    # experiment in another folder (or a resumed copy) writes the same file.
    portable = _relative_paths(evaluation, workdir)
    write_json(os.path.join(workdir, "eval.json"), portable)
    if jax.process_index() == 0:
        report.write_report(
            workdir, evaluation, primary.report(workdir, evaluation, found[primary.name], domains),
            [line for m in rest for line in m.report(workdir, evaluation, found[m.name], domains)],
        )
        print(report.split_note(evaluation["split"]))
        print(_weights_table(domains, evaluation["baseline_weights"], weights_of_all(evaluation, chosen, found, domains)))
        print(report.verdicts_table(evaluation["verdicts"]))
        for method in rest:
            print(report.verdicts_table(evaluation[method.name]["verdicts"]))
        if evaluation.get("comparison"):
            print(comparison.table(evaluation["comparison"]))
        print(f"report: {os.path.join(workdir, 'report.md')}", flush=True)
    return portable


def topology(ctx: Context, chosen: Sequence[Method], searches: int = 1,
             seeds: int = 1) -> list[tuple[str, Stage, int, bool]]:
    """One stage of each kind the experiment trains, as (name, stage, how many runs,
    whether each runs on one host's chips): each method's own stages (once per search),
    the main models on fixed rates (the baseline and every method without a plug-in of
    its own, once per main seed) and main_<method> for a method whose main models train
    with its plug-in. The run parses them before anything is written; `aot` compiles them."""
    kinds = [(name, stage, runs * searches, one_host)
             for method in chosen for name, stage, runs, one_host in method.stages(ctx)]
    fixed = 1 + sum(not m.main_trainer for m in chosen)
    kinds.append((MAIN, ctx.stages.main(f"main_{chosen[0].name}", ctx.baseline_weights, ""), fixed * seeds, False))
    kinds += [(f"main_{m.name}", ctx.stages.main(f"main_{m.name}", ctx.baseline_weights, "", trainer=m.main_trainer),
               seeds, False) for m in chosen if m.main_trainer]
    return kinds


def weights_of_all(evaluation: Mapping[str, Any], chosen: Sequence[Method], found, domains) -> dict[str, dict]:
    """Each method's mixture by label: the searches' mean, or what its main model sampled."""
    out = {}
    for method in chosen:
        mixture = mean_mixture(found[method.name], domains)
        if mixture is None and method.name in evaluation:
            mixture = evaluation[method.name].get("weights")
        if mixture:
            out[method.label] = mixture
    return out


def _weights_table(domains: Sequence[str], baseline: Mapping[str, float], mixtures: Mapping[str, Mapping]) -> str:
    lines = ["| domain | baseline | " + " | ".join(mixtures) + " |", "|---|" + "---:|" * (len(mixtures) + 1)]
    lines += [f"| {d} | {baseline[d]:.4f} | " + " | ".join(f"{w[d]:.4f}" for w in mixtures.values()) + " |"
              for d in domains]
    return "\n".join(lines)


def _search_spread(chosen: Sequence[Method], found, searches: Sequence[int], domains: Sequence[str]) -> dict[str, Any]:
    """Each search's mixture per searched method, with the mean and the sample std over searches."""
    out: dict[str, Any] = {"seeds": list(searches)}
    for method in chosen:
        if not method.searched:
            continue
        weights = {s: found[method.name][s].mixture for s in searches}
        table = np.asarray([[weights[s][d] for d in domains] for s in searches])
        out[method.name] = {
            "label": method.label,
            "weights": {str(s): weights[s] for s in searches},
            "mean": dict(zip(domains, table.mean(axis=0).tolist())),
            "std": dict(zip(domains, table.std(axis=0, ddof=1).tolist())),
        }
    return out


def _relative_paths(value: Any, root: str) -> Any:
    """`value` with every path under `root` written relative to it."""
    if isinstance(value, dict):
        return {k: _relative_paths(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative_paths(v, root) for v in value]
    if isinstance(value, str) and value.startswith(root.rstrip("/") + "/"):
        return os.path.relpath(value, root)
    return value


def register():
    """The pipeline's own configurable (run_pipeline) beside the library's and the methods'."""
    configurables.register()
    return config.add_configurable("run_pipeline", run_pipeline)


def command_line_of(files: Sequence[str], bindings: Sequence[str]) -> CommandLine:
    """The entry's gin for the stages, scoped by every registered method's stage kinds."""
    return CommandLine(tuple(files), tuple(bindings), (MAIN, *methods_lib.stage_kinds()))


def main(argv=None) -> None:
    def run(files, bindings, rest):
        workdir = fileio.absolute(cli.require_workdir(rest))
        sharding.initialize_distributed()
        pipeline = register()
        command_line = command_line_of(files, bindings)
        # The pipeline's own knobs (run_pipeline.*); the stages' macros are checked per stage.
        config.parse(files, [], (), command_line.pipeline_bindings(), check_macros=False)
        pipeline(workdir, command_line=command_line, config_text=config.config_str())

    cli.main(run, argv)


if __name__ == "__main__":
    main()
