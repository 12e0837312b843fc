"""The paper's one-shot generative tasks as seqio Tasks over TFDS (imports tensorflow).

    doremi_oneshot_trivia_qa, doremi_oneshot_natural_questions_open,
    doremi_oneshot_web_questions, doremi_oneshot_squad_v2, doremi_oneshot_lambada

Each evaluation example is one solved example of the task's shot split (a different
one per question, by a fixed permutation: `shot_order`), a blank line, then the question; `inputs` is that prompt, `targets` the first gold
answer and `answers` every gold answer. Importing this module registers them, so a
T5X project can evaluate with them too (`postprocess_fn` returns the gold answers of
a target and the first line of a prediction; `metric_fns` is exact match).
The trainer never imports this module; `eval/downstream.py` does when a TFDS task is
asked for. Scoring (answer normalization, exact match) lives in `data/scoring.py`.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from doremi_jax.data import tensorflow_runtime

tf = tensorflow_runtime.tensorflow()  # before seqio, which imports it with all its start-up noise
import seqio  # noqa: E402

from doremi_jax.data import scoring
from doremi_jax.data.scoring import Example
from doremi_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class OneShotSpec:
    tfds_name: str  # with the version seqio requires
    shot_split: str
    eval_split: str
    metric: str  # a key of scoring.METRICS


SPECS = {
    "trivia_qa": OneShotSpec("trivia_qa/unfiltered.nocontext:1.1.0", "train", "validation", "exact_match"),
    "natural_questions_open": OneShotSpec("natural_questions_open:1.0.0", "train", "validation", "exact_match"),
    "web_questions": OneShotSpec("web_questions:1.0.0", "train", "test", "exact_match"),
    "squad_v2": OneShotSpec("squad/v2.0:3.0.0", "train", "validation", "exact_match"),
    "lambada": OneShotSpec("lambada:1.0.0", "validation", "test", "first_word"),
}


def task_name(name: str) -> str:
    return f"doremi_oneshot_{name}"


def _question_answer(question, answers):
    return tf.strings.join(["Q: ", question, "\nA:"]), answers


def _format(name: str, ex: dict):
    """(prompt without the shot, gold answers as a string vector) of one TFDS example."""
    if name == "trivia_qa":
        answers = tf.concat([[ex["answer"]["value"]], ex["answer"]["aliases"]], axis=0)
        return _question_answer(ex["question"], answers)
    if name == "natural_questions_open":
        return _question_answer(ex["question"], ex["answer"])
    if name == "web_questions":
        return _question_answer(ex["question"], ex["answers"])
    if name == "squad_v2":
        prompt = tf.strings.join(
            ["Title: ", ex["title"], "\nBackground: ", ex["context"], "\nQ: ", ex["question"], "\nA:"]
        )
        return prompt, ex["answers"]["text"]  # empty for an unanswerable question
    if name == "lambada":
        passage = tf.strings.strip(ex["passage"])
        context = tf.strings.regex_replace(passage, r"(?s)\s*\S+$", "")
        target = tf.strings.regex_replace(passage, r"(?s)^.*\s", "")
        return context, tf.reshape(target, [1])
    raise KeyError(name)


def _shot_text(name: str, ex: dict) -> str:
    """A solved example, as it precedes a question."""
    prompt, answers = _format(name, ex)
    prompt = prompt.numpy().decode("utf-8")
    answers = [a.decode("utf-8") for a in answers.numpy()]
    answer = answers[0] if answers else scoring.UNANSWERABLE
    return f"{prompt} {answer}\n\n"


# Each question gets its own solved example, drawn (by a fixed permutation, so every run
# and host sees the same prompts) from the first SHOT_POOL examples of the shot split,
# as GPT-3-style few-shot evaluation draws its examples per question.
SHOT_POOL = 512
SHOT_SEED = 0


def shot_order(pool: int, seed: int = SHOT_SEED) -> np.ndarray:
    """Which pool example precedes question i: order[i % pool]."""
    return np.random.default_rng(seed).permutation(pool)


def oneshot_preprocessor(dataset, *, name: str, source: seqio.DataSource):
    """Prepend a solved example of the shot split to every question, a different one per
    question (`shot_order` over the first SHOT_POOL shot examples)."""
    spec = SPECS[name]
    pool = [_shot_text(name, ex) for ex in source.get_dataset(split=spec.shot_split, shuffle=False).take(SHOT_POOL)]
    if not pool:
        raise InputError(f"one-shot task {name!r}: the {spec.shot_split!r} split has no example to show")
    shots = tf.constant(pool)
    order = tf.constant(shot_order(len(pool)), tf.int64)

    def fmt(index, ex):
        prompt, answers = _format(name, ex)
        answers = tf.cast(answers, tf.string)
        first = tf.cond(tf.size(answers) > 0, lambda: answers[0], lambda: tf.constant(scoring.UNANSWERABLE))
        shot = tf.gather(shots, tf.gather(order, index % len(pool)))
        return {"inputs": tf.strings.join([shot, prompt]), "targets": first, "answers": answers}

    return dataset.enumerate().map(fmt, num_parallel_calls=tf.data.AUTOTUNE)


def postprocess(output, example=None, is_target=False):
    """T5X: a target becomes its gold answers, a prediction its first line."""
    if is_target:
        return [a.decode("utf-8") if isinstance(a, bytes) else a for a in example["answers"]]
    return scoring.first_line(output)


def _metric(name: str):
    fn = scoring.METRICS[SPECS[name].metric]

    def metric(targets, predictions):
        return {SPECS[name].metric: 100.0 * float(np.mean([fn(p, t) for t, p in zip(targets, predictions)]))}

    return metric


def register(data_dir: str | None = None, vocabulary: seqio.Vocabulary | None = None) -> list[str]:
    """(Re)register every one-shot task; returns their names."""
    vocabulary = vocabulary or seqio.ByteVocabulary()
    features = {
        "inputs": seqio.Feature(vocabulary, add_eos=False),
        "targets": seqio.Feature(vocabulary, add_eos=False),
    }
    names = []
    for name, spec in SPECS.items():
        source = seqio.TfdsDataSource(tfds_name=spec.tfds_name, tfds_data_dir=data_dir)
        seqio.TaskRegistry.remove(task_name(name))
        seqio.TaskRegistry.add(
            task_name(name),
            source=source,
            preprocessors=[
                functools.partial(oneshot_preprocessor, name=name, source=source),
                seqio.preprocessors.tokenize,
            ],
            output_features=features,
            postprocess_fn=postprocess,
            metric_fns=[_metric(name)],
        )
        names.append(task_name(name))
    return names


def examples(name: str, max_examples: int, data_dir: str | None = None) -> list[Example]:
    """The first `max_examples` evaluation examples of a task, as prompts and answers."""
    if name not in SPECS:
        raise InputError(f"unknown one-shot task {name!r}; expected one of {sorted(SPECS)} or 'cloze'")
    register(data_dir)
    task = seqio.get_mixture_or_task(task_name(name))
    ds = task.get_dataset(None, split=SPECS[name].eval_split, shuffle=False, use_cached=False, num_epochs=1,
                           try_in_mem_cache=False)
    out = []
    for ex in ds.take(max_examples).as_numpy_iterator():
        out.append(Example(
            ex["inputs_pretokenized"].decode("utf-8"),
            tuple(a.decode("utf-8") for a in ex["answers"]),
            name,
        ))
    return out


register()
