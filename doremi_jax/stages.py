"""The pipeline's stages: each a run of the one trainer in its own folder, skipped when
already done with the same inputs, and what links them (gin files and bindings per kind,
the command line's share, fingerprints, records). No mixture method is named here: a
method's folder builds the stages it needs from a `StageFactory`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from doremi_jax import config, fileio
from doremi_jax.faults import fault_point
from doremi_jax.models import model_flops_per_step
from doremi_jax.train.mixture import FIXED_MIXTURE

MAIN = "main"  # the kind of every main model (`--gin.main/NAME=VALUE` reaches them all)


@dataclasses.dataclass(frozen=True)
class CommandLine:
    """The pipeline's `--gin_file`s and `--gin.NAME=VALUE` bindings, for the stages.

    Files and unscoped bindings apply to every stage; a binding scoped by a stage kind
    (one of `scopes`), `--gin.proxy/DoReMi.learning_rate=0.5` or `--gin.main/TRAIN_STEPS=300`,
    only to the stages of that kind (`main` is every main model), which receive it
    unscoped. They come after each stage's own gin, so the command line has the last word.
    """

    files: tuple[str, ...] = ()
    bindings: tuple[str, ...] = ()
    scopes: tuple[str, ...] = (MAIN,)

    def for_stage(self, kind: str) -> tuple[list[str], list[str]]:
        bindings = []
        for binding in self.bindings:
            scope, name = self.scope_of(binding)
            if scope is None and not name.startswith("run_pipeline."):
                bindings.append(binding)
            elif scope == kind:
                bindings.append(name)
        return list(self.files), bindings

    def pipeline_bindings(self) -> list[str]:
        """The bindings the pipeline itself reads (those not scoped to a stage)."""
        return [b for b in self.bindings if self.scope_of(b)[0] is None]

    def scope_of(self, binding: str) -> tuple[str | None, str]:
        key = binding.split("=", 1)[0].strip()
        scope, _, _ = key.partition("/")
        if "/" in key and scope in self.scopes:
            return scope, binding.split("/", 1)[1]
        return None, binding


def file_hash(path: str) -> str:
    with fileio.open_file(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def write_json(path: str, data: Any) -> None:
    """Atomic, process 0 only (config.write_file)."""
    config.write_file(path, json.dumps(data, indent=2) + "\n")


class Stage:
    """One trainer run of the pipeline, skipped when already done with the same inputs.

    Its gin: the stage's own files and bindings (from the experiment, plus the links
    the pipeline adds), then the command line's for its kind. Its fingerprint hashes
    that parsed config (less its folder and the pipeline's own knobs) and what it
    depends on; a run in the folder with another fingerprint is replaced, one with the
    same fingerprint resumed.
    """

    def __init__(self, workdir: str, name: str, kind: str, gin_files: Sequence[str], bindings: Sequence[str],
                 command_line: CommandLine, upstream: str, unfingerprinted: Sequence[str] = ()):
        self.name, self.kind = name, kind
        self.workdir = os.path.join(workdir, name)
        self.gin_files, self.bindings, self.upstream = list(gin_files), list(bindings), upstream
        self.user_files, self.user_bindings = command_line.for_stage(kind)
        self.record = os.path.join(self.workdir, "stage.json")
        self.unfingerprinted = tuple(unfingerprinted)

    def parse(self, check_macros: bool = True, fill_required: str | None = None) -> list[str]:
        return config.parse(
            self.gin_files, self.bindings, self.user_files, self.user_bindings,
            check_macros=check_macros, model_dir=self.workdir, fill_required=fill_required,
        )

    def fingerprint(self) -> str:
        """What the stage's run depends on: its parsed config (less the pipeline's own
        knobs: run_pipeline's and the methods' settings) and its inputs."""
        self.parse()
        exclude = ("run_pipeline", *self.unfingerprinted)
        return hashlib.sha256(f"{config.fingerprint(exclude)}|{self.upstream}".encode()).hexdigest()[:16]

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
        write_json(self.record, {"fingerprint": fingerprint, "done": True})
        return summary, fingerprint

    def _finished(self) -> bool:
        """summary.json is the run's last file, written once it has finished (or was
        preempted, which it says)."""
        path = os.path.join(self.workdir, "summary.json")
        return fileio.exists(path) and json.loads(fileio.read_text(path)).get("stopped") != "preempted"

    def summary(self) -> dict:
        """The finished stage's summary.json (written by whichever host trained it)."""
        return json.loads(fileio.read_text(os.path.join(self.workdir, "summary.json")))

    def flops(self, summary: Mapping) -> float:
        """Training FLOPs the finished stage spent (the model count of its step x its steps)."""
        self.parse(check_macros=False)
        args = config.call_arguments("train", ("model", "config", "method"))
        model, cfg = args["model"], args["config"]
        method = args.get("method", FIXED_MIXTURE)
        per_step = model_flops_per_step(model, cfg.batch_size, cfg.sequence_length)
        return per_step[method.step_name] * int(summary["step"])


def search_folder(search: int | None) -> str:
    """Where a search's stages live: the workdir itself for the one search of the stages'
    own seed, search_seed<s>/ for each of `run_pipeline.search_seeds`."""
    return "" if search is None else f"search_seed{search}/"


@dataclasses.dataclass(frozen=True)
class StageFactory:
    """The stages of an experiment: a kind's gin files and bindings (the experiment's
    common ones, the kind's own, the links the caller adds, then the command line's).

    `main_gin`/`main_bindings` are every main model's; a method's stages of its own kinds
    (DoReMi's reference and proxy, RegMix's small runs) bring their files and bindings."""

    workdir: str
    main_gin: tuple[str, ...]
    common_bindings: tuple[str, ...] = ()
    main_bindings: tuple[str, ...] = ()
    command_line: CommandLine = CommandLine()
    unfingerprinted: tuple[str, ...] = ()  # gin names of the pipeline's own knobs

    def make(self, kind: str, name: str, gin_files: Sequence[str], bindings: Sequence[str], upstream: str,
             search: int | None = None) -> Stage:
        """A stage of `kind` in folder `name` (within `search`'s folder, seeded by it)."""
        seeded = [] if search is None else [f"TrainConfig.seed = {search}"]
        return Stage(self.workdir, f"{search_folder(search)}{name}", kind, gin_files,
                     [*self.common_bindings, *bindings, *seeded], self.command_line, upstream, self.unfingerprinted)

    def main(self, name: str, weights: str, upstream: str, seed: int | None = None, trainer: str = "") -> Stage:
        """A main model on `weights`; with `trainer` (a trainer plug-in's gin name, such
        as OnlineDataMixing) that plug-in moves the rates from there as it trains."""
        seeded = [] if seed is None else [f"TrainConfig.seed = {seed}", f"DownstreamConfig.seed = {seed}"]
        chosen = [f"train.method = @{trainer}()"] if trainer else []
        return self.make(MAIN, name, self.main_gin,
                         [*self.main_bindings, f"MIXTURE_WEIGHTS = {weights!r}", *chosen, *seeded], upstream)


def check_command_line(stages: Sequence[Stage], command_line: CommandLine) -> None:
    """Parse every stage's gin before anything runs: unknown names, unset required
    macros and command-line macros that no stage declares or uses fail here."""
    unknown_in: dict[str, list[str]] = {}
    known: set[str] = set()
    for stage in stages:
        unknown = stage.parse(check_macros=False)
        known |= (set(config.macros()) | config.referenced_macros()) - set(unknown)
        unknown_in[stage.kind] = unknown
    scoped = {kind: config.bound_macros(command_line.for_stage(kind)[1]) for kind in command_line.scopes}
    everywhere = set(config.bound_macros(command_line.pipeline_bindings()))
    bad = [n for n in sorted(everywhere) if all(n in u for u in unknown_in.values())]
    bad += [f"{kind}/{n}" for kind in command_line.scopes for n in scoped[kind]
            if n not in everywhere and n in unknown_in.get(kind, ())]
    if bad:
        raise config.ConfigError(config.unknown_macros_message(bad, known))


def weights_of(stage_workdir: str, domains: Sequence[str]) -> np.ndarray:
    """The weights a finished stage sampled its data by (from its summary.json)."""
    sampled = json.loads(fileio.read_text(os.path.join(stage_workdir, "summary.json")))["sampling_weights"]
    return np.asarray([sampled[d] for d in domains])
