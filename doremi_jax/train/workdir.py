"""A run's workdir: its identity (run.json) checked before anything is written, the
writable check, the reference run it reads, and the evaluation files it writes."""

from __future__ import annotations

import json
import logging
import os

import numpy as np

from doremi_jax import checkpoints, fileio, hosts
from doremi_jax.train import setup


class TrainingError(RuntimeError):
    pass


# Every scored held-out document's loss and tokens, per split (`write_eval`).
DOCUMENTS_FILE = "held_out_documents.json"

RUN_OUTPUTS = (
    "checkpoints", "tensorboard", "metrics.jsonl", "domain_weights.json", "main_mixture.gin", "eval_results.json",
    "test_results.json", DOCUMENTS_FILE,
    "downstream_results.json", "summary.json",
)


# What an evaluation of a finished run must agree on; a training run must agree on all.
EVAL_IDENTITY = ("model", "domains", "vocabulary")


# Identity fields added after workdirs existed without them: compared only when the
# workdir's run.json has them, so that those runs stay resumable.
ADDED_LATER = ("optimizer", "train", "packing", "corpus_contents")


def check_identity(workdir: str, identity: dict, overwrite: bool, eval_only: bool = False) -> None:
    """Refuse a workdir holding another run (a different corpus or its contents,
    vocabulary, batch, sequence length, seed, optimizer or mixture), naming each
    difference; with overwrite, start afresh. Nothing is written before this check."""
    path = os.path.join(workdir, "run.json")
    if fileio.exists(path):
        previous = json.loads(fileio.read_text(path))
        keys = EVAL_IDENTITY if eval_only else set(previous) | set(identity)
        keys = [k for k in sorted(keys) if k in previous or k not in ADDED_LATER]
        changed = [k for k in keys if previous.get(k) != identity.get(k)]
        if overwrite and changed:
            logging.warning("overwrite=True: removing the previous run in %s", workdir)
            if hosts.primary():
                for name in RUN_OUTPUTS:
                    fileio.remove(os.path.join(workdir, name))
            sync_hosts("overwrite")
        elif changed:
            differences = "; ".join(_differences(previous, identity, changed))
            raise TrainingError(
                f"workdir {workdir!r} holds another run (differs in {changed}: {differences}); resume with its settings, "
                "start over with --gin.train.overwrite=True, or use a new workdir (with "
                f"--gin.train.load_parameters_from=\"{workdir!r}\" it starts from this run's parameters)"
            )


def write_identity(workdir: str, identity: dict) -> None:
    """run.json, once the run's checkpoint (if any) has restored: a start refused by its
    checkpoint leaves the workdir's record as it was."""
    if hosts.primary():
        fileio.write_text_atomic(os.path.join(workdir, "run.json"), json.dumps(identity, indent=2, sort_keys=True))


def _differences(previous: dict, current: dict, keys, limit: int = 3) -> list[str]:
    """'optimizer.name: 'adamw' in the workdir, 'adafactor' now' for the first few
    differing leaves under `keys`."""
    found: list[str] = []

    def walk(name, old, new):
        if isinstance(old, dict) and isinstance(new, dict):
            for k in sorted(set(old) | set(new)):
                walk(f"{name}.{k}", old.get(k), new.get(k))
        elif old != new:
            found.append(f"{name}: {_short(old)} in the workdir, {_short(new)} now")

    for key in keys:
        walk(key, previous.get(key), current.get(key))
    return found[:limit] + [f"{len(found) - limit} more"] if len(found) > limit else found


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def sync_hosts(name: str) -> None:
    """A barrier across the run's processes (no-op on one host)."""
    hosts.sync(name)


def check_writable(workdir: str) -> None:
    try:
        fileio.makedirs(workdir)
        probe = os.path.join(workdir, f".write-probe-{os.getpid()}")
        fileio.write_text_atomic(probe, "")
        fileio.remove(probe)
    except OSError as e:
        raise TrainingError(f"workdir {workdir!r} is not writable: {e.strerror or e}") from None


class Reference:
    """The reference model a step scores against, sharded by the rules: the plug-in picks,
    per step, one of the reference run's saved checkpoints (`reference_checkpoint`; by
    default the latest), and a checkpoint is read only when the pick changes."""

    def __init__(self, method, reference_cfg, domains, vocabulary, mesh, rules, step: int):
        _check_reference_run(method, domains, vocabulary)
        self.method, self.model = method, reference_cfg.make()
        self.abstract, self.shardings = setup.abstract_params(reference_cfg, mesh, rules)
        self.directory = os.path.join(method.reference_workdir, "checkpoints")
        self.saved = checkpoints.saved_steps(self.directory)
        self.step, self.params = None, None
        self.advance(step)

    def advance(self, step: int) -> None:
        """Make `params` the reference the step at `step` scores against."""
        want = self.method.reference_checkpoint(step, self.saved)
        if want is None and self.saved:
            want = self.saved[-1]
        if want is not None and want == self.step:
            return
        try:
            self.params = checkpoints.restore_params(self.directory, self.abstract, want)
        except checkpoints.CheckpointError as e:
            raise TrainingError(f"reference model: {e}") from None
        self.step = want


def _check_reference_run(method, domains, vocabulary) -> None:
    """The reference run exists and was trained on the same domains and vocabulary (by
    fingerprint: two SentencePiece models of one size are still two vocabularies)."""
    reference_workdir = method.reference_workdir
    if not reference_workdir:
        name = type(method).__name__
        raise TrainingError(f"{name} scores against a reference model: set {name}.reference_workdir "
                            "(the reference run's workdir)")
    ref_identity = os.path.join(reference_workdir, "run.json")
    if fileio.exists(ref_identity):
        ref_run = json.loads(fileio.read_text(ref_identity))
        if ref_run.get("domains") != list(domains) or ref_run.get("vocabulary") != vocabulary:
            raise TrainingError(
                f"reference run {reference_workdir!r} was trained on domains "
                f"{ref_run.get('domains')} with vocabulary {ref_run.get('vocabulary')}; "
                f"this run has {list(domains)} with {vocabulary}"
            )


def eval_summary(results) -> dict:
    """summary.json's evaluation: "eval" (validation, what chooses) and, when the
    corpus has a test split, "test" (where results are judged)."""
    out = {"eval": results["validation"].to_json()}
    if "test" in results:
        out["test"] = results["test"].to_json()
    return out


def write_eval(workdir: str, results, downstream=None) -> None:
    """eval_results.json (validation), test_results.json (test, when scored) and
    held_out_documents.json (every scored document's loss and tokens, per split)."""
    for split, name in (("validation", "eval_results.json"), ("test", "test_results.json")):
        if split in results:
            fileio.write_text_atomic(os.path.join(workdir, name), json.dumps(results[split].to_json(), indent=2))
    fileio.write_text_atomic(
        os.path.join(workdir, DOCUMENTS_FILE),
        json.dumps({split: r.documents_json() for split, r in results.items()}),
    )
    if downstream is not None:
        fileio.write_text_atomic(os.path.join(workdir, "downstream_results.json"), json.dumps(downstream, indent=2))


def read_documents(workdir: str, split: str, domains) -> dict | None:
    """A run's held-out documents on `split` as {domain: (loss sums, tokens)}, or None
    when it did not write them (a run from before they were kept)."""
    path = os.path.join(workdir, DOCUMENTS_FILE)
    if not fileio.exists(path):
        return None
    by_split = json.loads(fileio.read_text(path))
    if split not in by_split or not all(d in by_split[split] for d in domains):
        return None
    return {d: (np.asarray(by_split[split][d]["loss"], np.float64), np.asarray(by_split[split][d]["tokens"], np.int64))
            for d in domains}
