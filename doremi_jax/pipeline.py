"""`python -m doremi_jax.pipeline --gin_file=gin/experiments/demo.gin --workdir=DIR`.

Iterated DoReMi end to end, each stage a run of the one trainer in its own folder:

    round_k/reference  on α_ref,k (round 1: natural or uniform; then ᾱ_{k-1})
    round_k/proxy      Group DRO against round_k/reference  -> ᾱ_k
    ... until ‖ᾱ_k − α_ref,k‖∞ < tolerance or max_rounds
    main_doremi        the main model on the final ᾱ
    main_baseline      the same model, steps, batch and seed on the baseline weights

then evaluation of both (per seed with `run_pipeline.main_seeds`) and a report
(domain_weights.json, rounds.json, eval.json, report.md with PNG plots). Rerunning
resumes: a finished stage whose configuration (and whose inputs) did not change is
skipped; a changed stage and every stage after it is redone.

The command line's `--gin_file`s and `--gin.NAME=VALUE` flags reach every stage after
its own gin (`CommandLine`); `--gin.proxy/NAME=VALUE` (or `reference/`, `main/`) only
the stages of that kind. Every stage's gin is parsed before anything is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Sequence

import jax
import numpy as np

from doremi_jax import cli, comparison, config, fileio, hosts, regmix as regmix_lib, report, sharding
from doremi_jax.data import weights as weights_lib
from doremi_jax.faults import fault_point
from doremi_jax.models import model_flops_per_step
from doremi_jax.train import methods as methods_lib, workdir as workdir_lib


STAGE_SCOPES = ("reference", "proxy", "main", "regmix")
ODM = methods_lib.OnlineDataMixing.__name__  # gin's name for the method
EXTRA_METHODS = ("uniform", "odm", "regmix")  # run_pipeline.methods


@dataclasses.dataclass(frozen=True)
class RegMixConfig:
    """RegMix's small runs and search (Liu et al., 2024; `regmix.py`). The small runs
    are stages of kind `regmix` (`--gin.regmix/NAME=VALUE` reaches only them)."""

    runs: int = 16
    gin_files: tuple[str, ...] = ("gin/runs/regmix.gin",)
    bindings: tuple[str, ...] = ()
    target_domains: tuple[str, ...] = ()  # () : the mean validation loss over all domains
    regressor: str = "auto"  # auto | lightgbm | linear
    seed: int = 0
    # On several hosts, each trains its share of the small runs alone (run i on host
    # i mod hosts, on its own devices) instead of every run on all hosts in turn.
    spread_over_hosts: bool = True
    candidates: int = 100_000
    top: int = 100


@dataclasses.dataclass(frozen=True)
class CommandLine:
    """The pipeline's `--gin_file`s and `--gin.NAME=VALUE` bindings, for the stages.

    Files and unscoped bindings apply to every stage; a binding scoped by a stage kind,
    `--gin.proxy/DoReMi.learning_rate=0.5` or `--gin.main/TRAIN_STEPS=300`, only to
    the stages of that kind (`main` is both main models), which receive it unscoped.
    They come after each stage's own gin, so the command line has the last word.
    """

    files: tuple[str, ...] = ()
    bindings: tuple[str, ...] = ()

    def for_stage(self, kind: str) -> tuple[list[str], list[str]]:
        bindings = []
        for binding in self.bindings:
            scope, name = _stage_scope(binding)
            if scope is None and not name.startswith("run_pipeline."):
                bindings.append(binding)
            elif scope == kind:
                bindings.append(name)
        return list(self.files), bindings

    def pipeline_bindings(self) -> list[str]:
        """The bindings the pipeline itself reads (those not scoped to a stage)."""
        return [b for b in self.bindings if _stage_scope(b)[0] is None]


def _stage_scope(binding: str) -> tuple[str | None, str]:
    key = binding.split("=", 1)[0].strip()
    scope, _, _ = key.partition("/")
    if "/" in key and scope in STAGE_SCOPES:
        return scope, binding.split("/", 1)[1]
    return None, binding


def _file_hash(path: str) -> str:
    with fileio.open_file(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


class Stage:
    """One trainer run of the pipeline, skipped when already done with the same inputs.

    Its gin: the stage's own files and bindings (from the experiment, plus the links
    the pipeline adds), then the command line's for its kind. Its fingerprint hashes
    that parsed config (less its folder and the pipeline's own knobs) and what it
    depends on; a run in the folder with another fingerprint is replaced, one with the
    same fingerprint resumed.
    """

    def __init__(self, workdir: str, name: str, kind: str, gin_files: Sequence[str], bindings: Sequence[str],
                 command_line: CommandLine, upstream: str):
        self.name, self.kind = name, kind
        self.workdir = os.path.join(workdir, name)
        self.gin_files, self.bindings, self.upstream = list(gin_files), list(bindings), upstream
        self.user_files, self.user_bindings = command_line.for_stage(kind)
        self.record = os.path.join(self.workdir, "stage.json")

    def parse(self, check_macros: bool = True) -> list[str]:
        return config.parse(
            self.gin_files, self.bindings, self.user_files, self.user_bindings,
            check_macros=check_macros, model_dir=self.workdir,
        )

    def fingerprint(self) -> str:
        """What the stage's run depends on: its parsed config and its inputs."""
        self.parse()
        return hashlib.sha256(f"{config.fingerprint()}|{self.upstream}".encode()).hexdigest()[:16]

    def is_done(self, fingerprint: str) -> bool:
        previous = json.loads(fileio.read_text(self.record)) if fileio.exists(self.record) else {}
        return previous.get("fingerprint") == fingerprint and bool(previous.get("done"))

    def run(self) -> tuple[dict, str]:
        """Train (or skip); returns the run summary and this stage's fingerprint."""
        fingerprint = self.fingerprint()
        if self.is_done(fingerprint):
            print(f"[{self.name}] done with the same configuration: skipped", flush=True)
            return self.summary(), fingerprint
        run_record = os.path.join(self.workdir, "run.json")
        previous = json.loads(fileio.read_text(run_record)).get("pipeline_stage") if fileio.exists(run_record) else None
        replace = previous is not None and previous != fingerprint
        if replace:
            print(f"[{self.name}] configuration or inputs changed: retraining", flush=True)
        if previous == fingerprint and self._finished():
            # Killed after its summary and before stage.json: the run is complete, and
            # starting it again would only evaluate it a second time.
            summary = self.summary()
        else:
            summary = config.train_with_gin(
                self.workdir, self.gin_files, self.bindings, self.user_files, self.user_bindings,
                overwrite=replace, stage_fingerprint=fingerprint,
            )
        if summary.get("stopped") == "preempted":
            raise SystemExit(0)  # the next start resumes this stage where it stopped
        fault_point("before_stage_record")
        _write_json(self.record, {"fingerprint": fingerprint, "done": True})
        return summary, fingerprint

    def _finished(self) -> bool:
        """summary.json is the run's last file, written once it has finished (or was
        preempted, which it says)."""
        path = os.path.join(self.workdir, "summary.json")
        return fileio.exists(path) and json.loads(fileio.read_text(path)).get("stopped") != "preempted"

    def summary(self) -> dict:
        """The finished stage's summary.json (written by whichever host trained it)."""
        return json.loads(fileio.read_text(os.path.join(self.workdir, "summary.json")))


def _write_json(path: str, data: Any) -> None:
    """Atomic, process 0 only (config.write_file)."""
    config.write_file(path, json.dumps(data, indent=2) + "\n")


@dataclasses.dataclass(frozen=True)
class StageFactory:
    """The stages of an experiment: each kind's gin files and bindings (the experiment's
    common ones, its own, the links the pipeline adds, then the command line's)."""

    workdir: str
    reference_gin: tuple[str, ...]
    proxy_gin: tuple[str, ...]
    main_gin: tuple[str, ...]
    common_bindings: tuple[str, ...] = ()
    reference_bindings: tuple[str, ...] = ()
    proxy_bindings: tuple[str, ...] = ()
    main_bindings: tuple[str, ...] = ()
    command_line: CommandLine = CommandLine()
    regmix_gin: tuple[str, ...] = ("gin/runs/regmix.gin",)
    regmix_bindings: tuple[str, ...] = ()

    def reference(self, k: int, weights: str, upstream: str, search: int | None = None) -> Stage:
        """Round k's reference; with `search` (a search seed), its search's own, seeded by it."""
        return Stage(self.workdir, f"{_search_folder(search)}round_{k}/reference", "reference", self.reference_gin,
                     [*self.common_bindings, *self.reference_bindings, f"REFERENCE_WEIGHTS = {weights!r}",
                      *_seeded(search)],
                     self.command_line, upstream)

    def proxy(self, k: int, reference_dir: str, upstream: str, search: int | None = None) -> Stage:
        return Stage(self.workdir, f"{_search_folder(search)}round_{k}/proxy", "proxy", self.proxy_gin,
                     [*self.common_bindings, *self.proxy_bindings, f"REFERENCE_DIR = {reference_dir!r}",
                      *_seeded(search)],
                     self.command_line, upstream)

    def main(self, name: str, weights: str, upstream: str, seed: int | None = None, method: str = "") -> Stage:
        """A main model on `weights`; with `method` (a mixture method's gin name, such as
        OnlineDataMixing) that method moves the rates from there as it trains."""
        seeded = [] if seed is None else [f"TrainConfig.seed = {seed}", f"DownstreamConfig.seed = {seed}"]
        chosen = [f"train.method = @{method}()"] if method else []
        return Stage(self.workdir, name, "main", self.main_gin,
                     [*self.common_bindings, *self.main_bindings, f"MIXTURE_WEIGHTS = {weights!r}", *chosen, *seeded],
                     self.command_line, upstream)

    def regmix_run(self, i: int, weights: str, upstream: str, search: int | None = None) -> Stage:
        """RegMix's i-th small run, on the mixture in `weights`."""
        return Stage(self.workdir, f"{_search_folder(search)}regmix/run_{i:03d}", "regmix", self.regmix_gin,
                     [*self.common_bindings, *self.regmix_bindings, f"MIXTURE_WEIGHTS = {weights!r}",
                      *_seeded(search)],
                     self.command_line, upstream)


def _search_folder(search: int | None) -> str:
    """Where a search's stages live: the workdir itself for the one search of the stages'
    own seed, search_seed<s>/ for each of `run_pipeline.search_seeds`."""
    return "" if search is None else f"search_seed{search}/"


def _seeded(search: int | None) -> list[str]:
    return [] if search is None else [f"TrainConfig.seed = {search}"]


def _check_command_line(stages: Sequence[Stage], command_line: CommandLine) -> None:
    """Parse every stage's gin before anything runs: unknown names, unset required
    macros and command-line macros that no stage declares or uses fail here."""
    unknown_in: dict[str, list[str]] = {}
    known: set[str] = set()
    for stage in stages:
        unknown = stage.parse(check_macros=False)
        known |= (set(config.macros()) | config.referenced_macros()) - set(unknown)
        unknown_in[stage.kind] = unknown
    scoped = {kind: config.bound_macros(command_line.for_stage(kind)[1]) for kind in STAGE_SCOPES}
    everywhere = set(config.bound_macros(command_line.pipeline_bindings()))
    bad = [n for n in sorted(everywhere) if all(n in u for u in unknown_in.values())]
    bad += [f"{kind}/{n}" for kind in STAGE_SCOPES for n in scoped[kind]
            if n not in everywhere and n in unknown_in.get(kind, ())]
    if bad:
        raise config.ConfigError(config.unknown_macros_message(bad, known))


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
    regmix: RegMixConfig = RegMixConfig(),
    command_line: CommandLine = CommandLine(),
    config_text: str | None = None,
) -> dict[str, Any]:
    """Run every stage; returns eval.json's content. Stage gin files and bindings are
    lists, as on a train command line; the pipeline adds the weights and folders that
    link the stages (REFERENCE_WEIGHTS, REFERENCE_DIR, MIXTURE_WEIGHTS), and
    `command_line` (the entry's `--gin_file`s and `--gin.` flags) comes after them.
    `config_text` (the pipeline's parsed gin) is written to workdir/pipeline.gin once
    every stage's gin has parsed. `main_seeds`: with two or more, every main model is
    trained once per seed (folders main_doremi_seed<s>, main_baseline_seed<s>, ...) and
    the verdicts (eval.json "verdicts", `report.judge`) pair them by seed; empty (default), one of each
    with the runs' own SEED. `methods`: more main models beside DoReMi's and the
    baseline's, on the same steps, batch and seeds, each compared with the baseline and
    all of them side by side (eval.json "comparison", report.md): `uniform` (fixed
    uniform rates), `odm` (Online Data Mixing from `baseline_weights`), `regmix` (the
    mixture RegMix finds with `regmix`'s small runs, stages regmix/run_<i>).
    `search_seeds`: with two or more, the searches (DoReMi's rounds, RegMix's small runs
    and their random mixtures) are repeated once per seed, each in search_seed<s>/ with
    TrainConfig.seed = s, and main seed i trains on search i mod S's mixture: the paired
    intervals then cover the search's own variance, not only the main runs'. The top
    domain_weights.json is the searches' mean, and eval.json "search" (report.md "The
    search's own variance") their spread. Empty (default): one search on the stages' seed."""
    unknown = sorted(set(methods) - set(EXTRA_METHODS))
    if unknown:
        raise config.ConfigError(f"run_pipeline.methods: unknown {unknown}; expected some of {list(EXTRA_METHODS)}")
    searches = [int(s) for s in search_seeds] if len(search_seeds) > 1 else [None]
    seeds = [int(x) for x in main_seeds] if len(main_seeds) > 1 else [None]
    if len(searches) > 1 and (len(seeds) < len(searches) or len(set(searches)) < len(searches)):
        raise config.ConfigError(
            f"run_pipeline.search_seeds={list(search_seeds)}: each search needs its own main seeds "
            f"(run_pipeline.main_seeds={list(main_seeds)} has {len(set(main_seeds))}), and the seeds must differ")
    stages = StageFactory(
        workdir, tuple(reference_gin), tuple(proxy_gin), tuple(main_gin), tuple(common_bindings),
        tuple(reference_bindings), tuple(proxy_bindings), tuple(main_bindings), command_line,
        tuple(regmix.gin_files), tuple(regmix.bindings),
    )
    reference_stage, proxy_stage, main_stage = stages.reference, stages.proxy, stages.main

    # Every stage's configuration is checked before anything is written.
    _check_command_line(
        [reference_stage(1, initial_reference_weights, ""), proxy_stage(1, workdir, ""),
         main_stage("main_doremi", baseline_weights, "")]
        + ([main_stage("main_odm", baseline_weights, "", method=ODM)] if "odm" in methods else [])
        + ([stages.regmix_run(0, "uniform", "")] if "regmix" in methods else []),
        command_line,
    )
    workdir_lib.check_writable(workdir)
    if config_text is not None:
        config.write_file(os.path.join(workdir, "pipeline.gin"), config_text)

    search_flops = {"doremi": 0.0}  # what each method spent choosing its mixture
    found: dict[int | None, dict[str, Any]] = {}  # search seed -> its rounds and mixtures
    for search in searches:
        rounds, ref_summary, flops = _doremi_rounds(stages, search, initial_reference_weights, max_rounds, tolerance)
        domains = list(rounds[-1]["average_domain_weights"])
        search_flops["doremi"] += flops
        weights_file = os.path.join(workdir, _search_folder(search), "domain_weights.json")
        weights_lib.write_weights(weights_file, domains, [rounds[-1]["average_domain_weights"][d] for d in domains])
        _write_json(os.path.join(workdir, _search_folder(search), "rounds.json"), rounds)
        found[search] = {"rounds": rounds, "doremi": weights_file}
        if "regmix" in methods:
            record = run_regmix(stages, regmix, workdir, ref_summary["natural_weights"], domains, search)
            search_flops["regmix"] = search_flops.get("regmix", 0.0) + record["flops"]
            found[search]["regmix"] = record
    rounds = found[searches[0]]["rounds"]
    final_weights = rounds[-1]["average_domain_weights"]
    if len(searches) > 1:  # the searches' mean: what a user trains on, their spread aside
        mean = np.mean([[found[s]["rounds"][-1]["average_domain_weights"][d] for d in domains] for s in searches], axis=0)
        final_weights = dict(zip(domains, (mean / mean.sum()).tolist()))
        weights_lib.write_weights(os.path.join(workdir, "domain_weights.json"), domains, list(final_weights.values()))
        _write_json(os.path.join(workdir, "rounds.json"), rounds)

    def mixture(name: str, search: int | None) -> tuple[str, str, str]:
        """The other methods' mixtures: (weights for MIXTURE_WEIGHTS, upstream, method)."""
        if name == "regmix":
            path = found[search]["regmix"]["weights_file"]
            return path, _file_hash(path), ""
        return {"uniform": ("uniform", "uniform", ""), "odm": (baseline_weights, "odm", ODM)}[name]

    per_seed, extra = [], {m: [] for m in methods}
    main_flops = 0.0
    for i, seed in enumerate(seeds):
        suffix = "" if seed is None else f"_seed{seed}"
        search = searches[i % len(searches)]
        weights_file = found[search]["doremi"]
        doremi_stage = main_stage(f"main_doremi{suffix}", weights_file, _file_hash(weights_file), seed)
        doremi_summary, _ = doremi_stage.run()
        main_flops = _run_flops(doremi_stage, doremi_summary)
        baseline_stage = main_stage(f"main_baseline{suffix}", baseline_weights, "baseline", seed)
        baseline_summary, _ = baseline_stage.run()
        pair = report.compare(doremi_stage.workdir, baseline_stage.workdir, doremi_summary, baseline_summary)
        pair["seed"] = seed
        if search is not None:
            pair["search_seed"] = search
        per_seed.append(pair)
        for m in methods:
            weights, upstream, method = mixture(m, search)
            stage = main_stage(f"main_{m}{suffix}", weights, upstream, seed, method=method)
            summary, _ = stage.run()
            extra[m].append(dict(
                report.compare(stage.workdir, baseline_stage.workdir, summary, baseline_summary, m),
                seed=seed, workdir=stage.workdir, **({} if search is None else {"search_seed": search}),
                weights=summary.get("average_domain_weights") or summary["sampling_weights"],
            ))

    first = per_seed[0]
    evaluation = dict(first)  # the first seed's figures, plus the verdicts over every seed
    baseline = _weights_of(first["workdirs"]["baseline"], domains)
    evaluation["baseline_weights"] = dict(zip(domains, baseline.tolist()))
    evaluation["doremi_weights"] = final_weights
    evaluation["verdicts"] = report.judge(per_seed)
    if len(per_seed) > 1:
        evaluation["per_seed"] = per_seed
    for m, pairs in extra.items():
        evaluation[m] = dict(pairs[0], verdicts=report.judge(pairs))
    if "regmix" in methods:
        record = found[searches[0]]["regmix"]
        evaluation["regmix_search"] = {k: v for k, v in record.items() if k != "weights_file"}
    if len(searches) > 1:
        evaluation["search"] = _search_spread(found, searches, domains)
    if methods:
        weights = {"baseline": evaluation["baseline_weights"], "doremi": evaluation["doremi_weights"],
                   **{m: pairs[0]["weights"] for m, pairs in extra.items()}}
        evaluation["comparison"] = comparison.build(
            {"doremi": per_seed, **extra}, {"doremi": evaluation["verdicts"], **{m: evaluation[m]["verdicts"] for m in extra}},
            weights, search_flops, main_flops,
        )
    # eval.json names the runs' folders relative to the pipeline's workdir: the same
    # experiment in another folder (or a resumed copy) writes the same file.
    portable = _relative_paths(evaluation, workdir)
    _write_json(os.path.join(workdir, "eval.json"), portable)
    if jax.process_index() == 0:
        report.write_report(workdir, rounds, evaluation, first["workdirs"]["doremi"], first["workdirs"]["baseline"])
        print(report.split_note(evaluation["split"]))
        print(report.weights_table(domains, baseline, rounds[-1]["average_domain_weights"]))
        print(report.verdicts_table(evaluation["verdicts"]))
        for m in methods:
            print(report.verdicts_table(evaluation[m]["verdicts"]))
        if evaluation.get("comparison"):
            print(comparison.table(evaluation["comparison"]))
        print(f"report: {os.path.join(workdir, 'report.md')}", flush=True)
    return portable


def _doremi_rounds(stages: "StageFactory", search: int | None, initial_reference_weights: str, max_rounds: int,
                   tolerance: float) -> tuple[list[dict], dict, float]:
    """One search's rounds of reference and proxy, until ‖ᾱ − α_ref‖∞ < tolerance or
    max_rounds: the rounds' records, the last reference's summary and the FLOPs spent."""
    rounds, reference_weights, upstream, flops = [], initial_reference_weights, "start", 0.0
    for k in range(1, max_rounds + 1):
        ref = stages.reference(k, reference_weights, upstream, search)
        ref_summary, upstream = ref.run()
        flops += _run_flops(ref, ref_summary)
        proxy = stages.proxy(k, ref.workdir, upstream, search)
        proxy_summary, upstream = proxy.run()
        flops += _run_flops(proxy, proxy_summary)
        domains = proxy_summary["domains"]
        alpha_ref = _weights_of(ref.workdir, domains)
        average = np.asarray([proxy_summary["average_domain_weights"][d] for d in domains])
        change = float(np.max(np.abs(average - alpha_ref)))
        rounds.append({
            "round": k,
            "reference_weights": dict(zip(domains, alpha_ref.tolist())),
            "average_domain_weights": dict(zip(domains, average.tolist())),
            "linf_change": change,
            "proxy_steps": proxy_summary["step"],
            "proxy_stopped": proxy_summary["stopped"],
            "proxy_workdir": proxy.workdir,
            "reference_workdir": ref.workdir,
        })
        which = "" if search is None else f" (search seed {search})"
        print(f"round {k}{which}: ‖ᾱ − α_ref‖∞ = {change:.4f} (tolerance {tolerance})", flush=True)
        reference_weights = os.path.join(proxy.workdir, "domain_weights.json")
        upstream = _file_hash(reference_weights) + upstream
        if change < tolerance:
            break
    return rounds, ref_summary, flops


def _search_spread(found: dict, searches: Sequence[int], domains: Sequence[str]) -> dict[str, Any]:
    """Each search's mixture per method, with the mean and the sample std over searches."""
    out: dict[str, Any] = {"seeds": list(searches)}
    per_method = {"doremi": {s: found[s]["rounds"][-1]["average_domain_weights"] for s in searches}}
    if "regmix" in found[searches[0]]:
        per_method["regmix"] = {s: found[s]["regmix"]["weights"] for s in searches}
    for method, weights in per_method.items():
        table = np.asarray([[weights[s][d] for d in domains] for s in searches])
        out[method] = {
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


def run_regmix(stages: "StageFactory", cfg: RegMixConfig, workdir: str, natural_weights: dict[str, float],
               domains: Sequence[str], search: int | None = None) -> dict[str, Any]:
    """RegMix's small runs (stages regmix/run_<i>, each skipped when done), the fit and
    the search; writes regmix/runs.json and regmix/domain_weights.json and returns the
    record (per run mixture and target loss, the fit's held-out rank correlations, the
    chosen regressor, the mixture, the FLOPs spent). With `search` (a search seed), in
    that search's folder, its random mixtures and runs seeded by it too."""
    folder = os.path.join(workdir, _search_folder(search), "regmix")
    seed = cfg.seed + (search or 0)
    natural = np.asarray([natural_weights[d] for d in domains])
    mixtures = regmix_lib.sample_mixtures(natural, cfg.runs, seed)
    target = list(cfg.target_domains) or list(domains)
    missing = sorted(set(target) - set(domains))
    if missing:
        raise config.ConfigError(f"RegMixConfig.target_domains: {missing} not among the corpus's domains {list(domains)}")
    hosts_count, me = jax.process_count(), jax.process_index()
    spread = cfg.spread_over_hosts and hosts_count > 1
    small_runs = []
    for i, mixture in enumerate(mixtures):
        path = os.path.join(folder, "mixtures", f"run_{i:03d}.json")
        weights_lib.write_weights(path, domains, mixture)
        small_runs.append(stages.regmix_run(i, path, _file_hash(path), search))
    for i, stage in enumerate(small_runs):
        if not spread:
            stage.run()
        elif i % hosts_count == me:
            with hosts.alone():
                stage.run()
    if spread:
        # Every host's share must be in the workdir. Waited for through the stages'
        # records rather than a device barrier: one host's share may take far longer
        # than another's (a collective would time out), and a record from an earlier
        # configuration does not count (its fingerprint differs).
        fingerprints = [stage.fingerprint() for stage in small_runs]
        while not all(stage.is_done(f) for stage, f in zip(small_runs, fingerprints)):
            time.sleep(2.0)
    runs, flops = [], 0.0
    for i, (stage, mixture) in enumerate(zip(small_runs, mixtures)):
        summary = stage.summary()
        flops += _run_flops(stage, summary)
        lp = summary["eval"]["log_perplexity"]
        runs.append({"run": i, "mixture": dict(zip(domains, mixture.tolist())),
                     "target_loss": float(np.mean([lp[d] for d in target]))})
    losses = np.asarray([r["target_loss"] for r in runs])
    fit = regmix_lib.fit(mixtures, losses, cfg.regressor)
    counts, budget, max_epochs = _main_budget(stages, domains)
    upper = regmix_lib.bounds(mixtures, counts, budget, max_epochs)
    mixture = regmix_lib.search(fit, natural, seed + 1, cfg.candidates, cfg.top, upper)
    weights_file = os.path.join(folder, "domain_weights.json")
    weights_lib.write_weights(weights_file, domains, mixture)
    corners = fit.predict(np.eye(len(domains)))
    record = {
        "target_domains": target,
        "regressor": fit.regressor,
        "held_out_spearman": fit.held_out_spearman,
        "weights": dict(zip(domains, mixture.tolist())),
        "predicted_target_loss": float(fit.predict(mixture[None])[0]),
        "predicted_corner_loss": dict(zip(domains, corners.tolist())),
        "search_upper_bounds": dict(zip(domains, upper.tolist())),
        "runs": runs,
        "flops": flops,
        "weights_file": weights_file,
    }
    _write_json(os.path.join(folder, "runs.json"), {k: v for k, v in record.items() if k != "weights_file"})
    print(f"RegMix: {len(runs)} runs, {fit.regressor} fit, held-out rank correlation "
          + ", ".join(f"{r} {v:.2f}" for r, v in fit.held_out_spearman.items())
          + "; mixture " + ", ".join(f"{d} {w:.3f}" for d, w in zip(domains, mixture)), flush=True)
    return record


def _main_budget(stages: "StageFactory", domains: Sequence[str]) -> tuple[np.ndarray, float, float]:
    """The corpus's training tokens per domain, and the main run's token budget and
    epoch cap (TrainConfig.max_epochs): the bounds of RegMix's search."""
    from doremi_jax.data import inputs

    stage = stages.main("main_regmix", "uniform", "")
    stage.parse(check_macros=False)
    args = config.call_arguments("train", ("data", "config"))
    cfg = args["config"]
    corpus = inputs.build_corpus(args["data"])
    counts = np.asarray([corpus.token_counts("train")[corpus.domains.index(d)] for d in domains], np.float64)
    return counts, float(cfg.train_steps * cfg.batch_size * cfg.sequence_length), float(cfg.max_epochs)


def _run_flops(stage: "Stage", summary: dict) -> float:
    """Training FLOPs a finished stage spent (the model count per step x its steps)."""
    stage.parse(check_macros=False)
    args = config.call_arguments("train", ("model", "config", "method"))
    model, cfg = args["model"], args["config"]
    method = args.get("method", methods_lib.FIXED_MIXTURE)
    per_step = model_flops_per_step(model, cfg.batch_size, cfg.sequence_length)
    return per_step["doremi_step" if method.needs_reference else "lm_step"] * int(summary["step"])


def _weights_of(stage_workdir: str, domains: Sequence[str]) -> np.ndarray:
    """The weights a finished stage sampled its data by (from its summary.json)."""
    sampled = json.loads(fileio.read_text(os.path.join(stage_workdir, "summary.json")))["sampling_weights"]
    return np.asarray([sampled[d] for d in domains])


def register():
    """The pipeline's own configurables (run_pipeline, RegMixConfig) beside the library's."""
    config.register()
    config.add_configurable("RegMixConfig", RegMixConfig)
    return config.add_configurable("run_pipeline", run_pipeline)


def main(argv=None) -> None:
    def run(files, bindings, rest):
        workdir = fileio.absolute(cli.require_workdir(rest))
        sharding.initialize_distributed()
        pipeline = register()
        command_line = CommandLine(tuple(files), tuple(bindings))
        # The pipeline's own knobs (run_pipeline.*); the stages' macros are checked per stage.
        config.parse(files, [], (), command_line.pipeline_bindings(), check_macros=False)
        pipeline(workdir, command_line=command_line, config_text=config.config_str())

    cli.main(run, argv)


if __name__ == "__main__":
    main()
