"""`python -m doremi_jax.pipeline --gin_file=gin/experiments/demo.gin --workdir=DIR`.

Iterated DoReMi end to end, each stage a run of the one trainer in its own folder:

    round_k/reference  on α_ref,k (round 1: natural or uniform; then ᾱ_{k-1})
    round_k/proxy      Group DRO against round_k/reference  -> ᾱ_k
    ... until ‖ᾱ_k − α_ref,k‖∞ < tolerance or max_rounds
    main_doremi        the main model on the final ᾱ
    main_baseline      the same model, steps, batch and seed on the baseline weights

then evaluation of both and a report (domain_weights.json, rounds.json, eval.json,
report.md with PNG plots). Rerunning resumes: a finished stage whose configuration
(and whose inputs) did not change is skipped; a changed stage and every stage after it
is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Sequence

import jax
import numpy as np

from doremi_jax import cli, config, fileio, report, sharding
from doremi_jax.data import weights as weights_lib
from doremi_jax.train import loop


def _fingerprint(upstream: str) -> str:
    """Hash of the parsed stage config (less its workdir) and of what it depends on."""
    text = re.sub(r"^MODEL_DIR = .*$", "", config.config_str(), flags=re.M)
    return hashlib.sha256((text + "|" + upstream).encode()).hexdigest()[:16]


def _file_hash(path: str) -> str:
    with fileio.open_file(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


class Stage:
    """One trainer run of the pipeline, skipped when already done with the same inputs."""

    def __init__(self, workdir: str, name: str, gin_files: Sequence[str], bindings: Sequence[str], upstream: str):
        self.name = name
        self.workdir = os.path.join(workdir, name)
        self.gin_files, self.bindings, self.upstream = list(gin_files), list(bindings), upstream
        self.record = os.path.join(self.workdir, "stage.json")

    def run(self) -> tuple[dict, str]:
        """Train (or skip); returns the run summary and this stage's fingerprint."""
        config.parse(self.gin_files, [f"MODEL_DIR = '{self.workdir}'", *self.bindings])
        fingerprint = _fingerprint(self.upstream)
        previous = {}
        if fileio.exists(self.record):
            previous = json.loads(fileio.read_text(self.record))
        if previous.get("fingerprint") == fingerprint and previous.get("done"):
            print(f"[{self.name}] done with the same configuration: skipped", flush=True)
            return json.loads(fileio.read_text(os.path.join(self.workdir, "summary.json"))), fingerprint
        changed = bool(previous) and previous.get("fingerprint") != fingerprint
        if changed:
            print(f"[{self.name}] configuration or inputs changed: retraining", flush=True)
        fileio.makedirs(self.workdir)
        _write_json(self.record, {"fingerprint": fingerprint, "done": False})
        summary = config.train_with_gin(self.workdir, self.gin_files, self.bindings, overwrite=changed)
        if summary.get("stopped") == "preempted":
            raise SystemExit(0)  # the next start resumes this stage where it stopped
        _write_json(self.record, {"fingerprint": fingerprint, "done": True})
        return summary, fingerprint


def _write_json(path: str, data: Any) -> None:
    """Atomic, process 0 only (config.write_file)."""
    config.write_file(path, json.dumps(data, indent=2) + "\n")


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
) -> dict[str, Any]:
    """Run every stage; returns eval.json's content. Stage gin files and bindings are
    lists, as on a train command line; the pipeline adds the weights and folders that
    link the stages (REFERENCE_WEIGHTS, REFERENCE_DIR, MIXTURE_WEIGHTS)."""
    fileio.makedirs(workdir)
    common = list(common_bindings)
    rounds, reference_weights, upstream = [], initial_reference_weights, "start"
    domains: list[str] = []
    for k in range(1, max_rounds + 1):
        ref = Stage(
            workdir, f"round_{k}/reference", reference_gin,
            [*common, *reference_bindings, f"REFERENCE_WEIGHTS = '{reference_weights}'"], upstream,
        )
        ref_summary, upstream = ref.run()
        proxy = Stage(
            workdir, f"round_{k}/proxy", proxy_gin,
            [*common, *proxy_bindings, f"REFERENCE_DIR = '{ref.workdir}'"], upstream,
        )
        proxy_summary, upstream = proxy.run()
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
        })
        print(f"round {k}: ‖ᾱ − α_ref‖∞ = {change:.4f} (tolerance {tolerance})", flush=True)
        reference_weights = os.path.join(proxy.workdir, "domain_weights.json")
        upstream = _file_hash(reference_weights) + upstream
        if change < tolerance:
            break

    final = os.path.join(workdir, "domain_weights.json")
    weights_lib.write_weights(final, domains, [rounds[-1]["average_domain_weights"][d] for d in domains])
    _write_json(os.path.join(workdir, "rounds.json"), rounds)

    main_upstream = _file_hash(final)
    doremi_stage = Stage(workdir, "main_doremi", main_gin, [*common, *main_bindings, f"MIXTURE_WEIGHTS = '{final}'"], main_upstream)
    doremi_summary, _ = doremi_stage.run()
    baseline_stage = Stage(workdir, "main_baseline", main_gin, [*common, *main_bindings, f"MIXTURE_WEIGHTS = '{baseline_weights}'"], "baseline")
    baseline_summary, _ = baseline_stage.run()

    baseline = _weights_of(baseline_stage.workdir, domains)
    evaluation = report.compare(doremi_stage.workdir, baseline_stage.workdir, doremi_summary, baseline_summary)
    evaluation["baseline_weights"] = dict(zip(domains, baseline.tolist()))
    evaluation["doremi_weights"] = rounds[-1]["average_domain_weights"]
    _write_json(os.path.join(workdir, "eval.json"), evaluation)
    if jax.process_index() == 0:
        report.write_report(workdir, rounds, evaluation, doremi_stage.workdir, baseline_stage.workdir)
        print(report.weights_table(domains, baseline, rounds[-1]["average_domain_weights"]))
        print(report.eval_table(evaluation))
        if evaluation.get("downstream"):
            print(report.downstream_table(evaluation["downstream"]))
        print(f"report: {os.path.join(workdir, 'report.md')}", flush=True)
    return evaluation


def _weights_of(stage_workdir: str, domains: Sequence[str]) -> np.ndarray:
    """The weights a finished stage sampled its data by (from its summary.json)."""
    sampled = json.loads(fileio.read_text(os.path.join(stage_workdir, "summary.json")))["sampling_weights"]
    return np.asarray([sampled[d] for d in domains])


def main(argv=None) -> None:
    def run(files, bindings, rest):
        workdir = cli.require_workdir(rest)
        sharding.initialize_distributed()
        config.register()
        pipeline = config.add_configurable("run_pipeline", run_pipeline)
        config.parse(files, bindings)
        loop.check_writable(workdir)
        config.write_file(os.path.join(workdir, "pipeline.gin"), config.config_str())
        pipeline(fileio.absolute(workdir))

    cli.main(run, argv)


if __name__ == "__main__":
    main()
