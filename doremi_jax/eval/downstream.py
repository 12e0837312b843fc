"""Downstream accuracy of a model by greedy decoding: the local cloze task and the
paper's one-shot tasks (exact match), for the trainer's periodic evaluation and
`python -m doremi_jax.evaluate --fewshot`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np

from doremi_jax.data import scoring
from doremi_jax.eval import cloze, decoding
from doremi_jax.data.scoring import Example
from doremi_jax.errors import InputError

CLOZE = "cloze"
# The one-shot TFDS tasks of data/oneshot_tasks.py (named here so that a bad name fails
# before anything imports tensorflow or writes a file).
ONESHOT_TASKS = ("trivia_qa", "natural_questions_open", "web_questions", "squad_v2", "lambada")


def check_tasks(tasks) -> None:
    unknown = [t for t in tasks if t != CLOZE and t not in ONESHOT_TASKS]
    if unknown:
        raise InputError(f"DownstreamConfig.tasks: unknown task(s) {unknown}; expected {[CLOZE, *ONESHOT_TASKS]}")


@dataclasses.dataclass(frozen=True)
class DownstreamConfig:
    """Which tasks and how many examples; bound in gin (DownstreamConfig.tasks = ['cloze'])."""

    tasks: tuple[str, ...] = ()  # 'cloze' and/or one-shot tasks (data/oneshot_tasks.py SPECS)
    max_examples: int = 128  # per task; for cloze, per domain
    batch_size: int = 32
    prompt_length: int = 96
    max_new_tokens: int = 16
    tfds_data_dir: str | None = None
    seed: int = 0


def task_examples(cfg: DownstreamConfig, corpus, vocab) -> dict[str, list[Example]]:
    out = {}
    for task in cfg.tasks:
        if task == CLOZE:
            out[task] = cloze.cloze_examples(
                corpus.streams[corpus.verdict_split], corpus.domains, vocab, cfg.max_examples, cfg.seed
            )
        else:
            from doremi_jax.data import oneshot_tasks  # tensorflow and seqio: only when asked for

            out[task] = oneshot_tasks.examples(task, cfg.max_examples, cfg.tfds_data_dir)
        if not out[task]:
            raise InputError(f"downstream task {task!r} has no examples")
    return out


def metric_of(task: str) -> str:
    if task == CLOZE:
        return "first_word"
    from doremi_jax.data import oneshot_tasks

    return oneshot_tasks.SPECS[task].metric


def score(task: str, examples: Sequence[Example], generations: Sequence[str]) -> dict[str, Any]:
    """Accuracy of a task, and per group (domain) for the cloze task."""
    fn = scoring.METRICS[metric_of(task)]
    correct = np.asarray([fn(g, ex.answers) for ex, g in zip(examples, generations)], bool)
    result: dict[str, Any] = {"accuracy": float(correct.mean()), "examples": int(correct.size)}
    if task == CLOZE:
        groups = np.asarray([ex.group for ex in examples])
        result["per_domain"] = {g: float(correct[groups == g].mean()) for g in sorted(set(groups))}
    return result


class DownstreamEvaluator:
    """Prompts built once per run; `evaluator(params)` decodes them all and scores."""

    def __init__(self, cfg: DownstreamConfig, model_cfg, mesh, rules, param_shardings, corpus, vocab):
        self.cfg, self.vocab = cfg, vocab
        self.examples = task_examples(cfg, corpus, vocab)
        self.prompts = {task: [vocab.encode(ex.prompt) for ex in exs] for task, exs in self.examples.items()}
        newline = vocab.encode("\n")  # a stop token only where one id decodes to exactly "\n"
        stop_ids = [vocab.eos_id]
        if len(newline) == 1 and vocab.decode(newline) == "\n":
            stop_ids.append(int(newline[0]))
        self.generator = decoding.Generator(
            model_cfg, mesh, rules, param_shardings,
            decoding.DecodeConfig(cfg.batch_size, cfg.prompt_length, cfg.max_new_tokens), stop_ids,
        )
        for task, exs in self.examples.items():
            logging.info("downstream task %s: %d examples", task, len(exs))

    def __call__(self, params) -> dict[str, dict[str, Any]]:
        results = {}
        for task, exs in self.examples.items():
            generations = [self.vocab.decode(t) for t in self.generator(params, self.prompts[task])]
            results[task] = score(task, exs, generations)
        return results


def scalars(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Flat metrics for metrics.jsonl / TensorBoard: downstream/<task>[/<domain>]."""
    out = {}
    for task, r in results.items():
        out[f"downstream/{task}"] = r["accuracy"]
        for domain, acc in r.get("per_domain", {}).items():
            out[f"downstream/{task}/{domain}"] = acc
    return out
