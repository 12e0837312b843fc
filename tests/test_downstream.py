"""Downstream evaluation: KV-cache decoding, scoring, the cloze task, the one-shot TFDS tasks."""

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from doremi_jax import sharding
from doremi_jax.data.vocab import ByteVocabulary, PAD_ID
from doremi_jax.data import scoring
from doremi_jax.eval import cloze, decoding, downstream
from doremi_jax.models import Transformer
from doremi_jax.train import loop, setup

from helpers import TINY, train_kwargs, write_corpus

VOCAB = ByteVocabulary()


def _sharded_params(cfg, mesh, scale=1.0):
    """Random params, scaled up so that greedy outputs change from token to token."""
    _, shardings = setup.abstract_params(cfg, mesh, sharding.DEFAULT_RULES)
    init = lambda r: jax.tree.map(  # noqa: E731
        lambda x: x * scale, nn.meta.unbox(Transformer(cfg).init(r, jnp.zeros((1, 8), jnp.int32))["params"])
    )
    with sharding.activate(mesh, sharding.DEFAULT_RULES):
        return jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(3)), shardings


@pytest.mark.parametrize("scan", [False, True])
def test_cached_logits_equal_full_forward(scan):
    """Prefill a left-padded prompt, then feed tokens one by one through the cache: every
    step's logits equal those of one forward pass over the whole sequence."""
    cfg = dataclasses.replace(TINY, scan_layers=scan)
    params = nn.meta.unbox(Transformer(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 259, n) for n in (3, 10)]
    arrays = decoding.left_pad(prompts, 10)
    follow = rng.integers(3, 259, (2, 6)).astype(np.int32)
    # Reference: the full sequence (padding, prompt, then `follow`), no cache.
    tokens = np.concatenate([arrays["tokens"], follow], axis=1)
    positions = np.concatenate([arrays["positions"], arrays["positions"][:, -1:] + 1 + np.arange(6)], axis=1)
    segments = np.concatenate([arrays["segment_ids"], np.ones((2, 6), np.int32)], axis=1)
    full = jax.jit(Transformer(cfg).apply)({"params": params}, tokens, positions, segments)

    model = Transformer(cfg, decode=True)
    cache = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 16), jnp.int32))["cache"]
    apply = jax.jit(lambda c, t, p, s: model.apply({"params": params, "cache": c}, t, p, s, mutable=["cache"]))
    logits, v = apply(cache, arrays["tokens"], arrays["positions"], arrays["segment_ids"])
    real = arrays["segment_ids"] == 1
    np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(full[:, :10])[real], atol=2e-5)
    for i in range(6):
        logits, v = apply(v["cache"], follow[:, i:i + 1], positions[:, 10 + i:11 + i], np.ones((2, 1), np.int32))
        np.testing.assert_allclose(np.asarray(logits[:, 0]), np.asarray(full[:, 10 + i]), atol=2e-5)


@pytest.mark.parametrize("scan", [False, True])
def test_greedy_decoding_with_cache_equals_decoding_without(scan):
    """Token for token, on a (data=4, fsdp=2) mesh, prompts of many lengths (one longer
    than the prompt length, so it is cut from the left), more prompts than a batch."""
    cfg = dataclasses.replace(TINY, scan_layers=scan)
    mesh = sharding.make_mesh(sharding.MeshConfig(data=4, fsdp=2, tensor=1))
    params, shardings = _sharded_params(cfg, mesh, scale=4.0)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 259, n) for n in (5, 12, 20, 1, 9, 16, 7, 3, 11)]
    gen = decoding.Generator(cfg, mesh, sharding.DEFAULT_RULES, shardings,
                             decoding.DecodeConfig(batch_size=8, prompt_length=16, max_new_tokens=8), stop_ids=(1,))
    outputs = gen(params, prompts)
    assert len(outputs) == len(prompts)
    # Without a cache: the whole sequence through the model again for every new token
    # (one compiled shape: not-yet-generated slots are padding, which causal attention
    # within segments ignores).
    host_params = jax.device_get(params)
    forward = jax.jit(lambda t, p, s: Transformer(cfg).apply({"params": host_params}, t, p, s))
    arrays = decoding.left_pad(prompts, 16)
    tokens = np.concatenate([arrays["tokens"], np.zeros((9, 8), np.int32)], axis=1)
    positions = np.concatenate([arrays["positions"], arrays["positions"][:, -1:] + 1 + np.arange(8)], axis=1)
    segments = np.concatenate([arrays["segment_ids"], np.zeros((9, 8), np.int32)], axis=1)
    expected = np.full((9, 8), PAD_ID)
    done = np.zeros(9, bool)
    for i in range(8):
        token = np.asarray(jnp.argmax(forward(tokens, positions, segments)[:, 15 + i], axis=-1))
        expected[~done, i] = token[~done]
        done |= token == 1
        tokens[:, 16 + i], segments[:, 16 + i] = token, 1
    np.testing.assert_array_equal(np.stack(outputs), expected)
    distinct = set(expected.ravel().tolist())
    assert len(distinct) > 10  # the comparison is not between constant outputs


def test_decoding_stops_at_a_stop_token():
    mesh = sharding.make_mesh(sharding.MeshConfig())
    params, shardings = _sharded_params(TINY, mesh)
    every_id = tuple(range(TINY.vocab_size))  # whatever comes first stops the row
    gen = decoding.Generator(TINY, mesh, sharding.DEFAULT_RULES, shardings,
                             decoding.DecodeConfig(batch_size=8, prompt_length=8, max_new_tokens=5), every_id)
    outputs = np.stack(gen(params, [np.arange(3, 3 + n) for n in range(1, 9)]))
    assert (outputs[:, 0] != PAD_ID).all() and (outputs[:, 1:] == PAD_ID).all()


def test_left_pad_refuses_an_empty_prompt():
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        decoding.left_pad([np.arange(3), np.zeros(0)], 4)


def test_answer_normalization_and_exact_match():
    assert scoring.normalize_answer("  The  Eiffel-Tower! ") == "eiffeltower"
    assert scoring.exact_match(" the Beatles\nQ: next question", ["Beatles", "The Fab Four"])
    assert not scoring.exact_match("Rolling Stones", ["Beatles"])
    assert scoring.exact_match("an apple.", ["Apple"])
    # SQuAD v2: no gold answer means the question is unanswerable.
    assert scoring.exact_match("unanswerable", []) and scoring.exact_match("\n", [""])
    assert not scoring.exact_match("Paris", [])
    assert scoring.first_word_match(" dog, said the man", ["dog"])
    assert not scoring.first_word_match(" dogs", ["dog"])


def test_cloze_examples_are_document_prefixes_and_deterministic(tmp_path):
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet".split()
    docs = [" ".join(words[(i + j) % 10] for j in range(40)) for i in range(20)]
    root = write_corpus(str(tmp_path / "c"), {"letters": docs}, validation_fraction=0.5)
    os.makedirs(tmp_path / "c" / "binary")
    for split in ("train", "validation"):
        tokens = np.asarray([3, 4, 255, 258, 200, 1] * 50, np.int32)  # bytes that are not UTF-8
        np.save(tmp_path / "c" / "binary" / f"{split}.tokens.npy", tokens)
    from doremi_jax.data import corpus as corpus_lib

    corpus = corpus_lib.load_corpus(root, VOCAB, name="c")
    examples = cloze.cloze_examples(corpus.streams["validation"], corpus.domains, VOCAB, per_domain=7, seed=1)
    assert len(examples) == 7 and {e.group for e in examples} == {"letters"}  # binary has no text
    validation = docs[:10]
    for ex in examples:
        (target,) = ex.answers
        assert target in words and len(ex.prompt) >= 63
        assert any(d.startswith(ex.prompt + " " + target) for d in validation)
    again = cloze.cloze_examples(corpus.streams["validation"], corpus.domains, VOCAB, per_domain=7, seed=1)
    assert again == examples
    other = cloze.cloze_examples(corpus.streams["validation"], corpus.domains, VOCAB, per_domain=7, seed=2)
    assert other != examples
    # An oracle that answers with the target scores 1, one that answers wrongly 0.
    assert downstream.score("cloze", examples, [" " + e.answers[0] + " x" for e in examples])["accuracy"] == 1.0
    assert downstream.score("cloze", examples, [" zzz" for _ in examples])["per_domain"] == {"letters": 0.0}


# --- One-shot TFDS tasks on tfds.testing.mock_data with examples the test writes.

MOCK = {
    "trivia_qa": [
        {"question": f"Who wrote book {i}?", "answer": {"value": f"Author {i}", "aliases": [f"A. {i}", f"Writer {i}"]}}
        for i in range(3)
    ],
    "natural_questions_open": [{"question": f"where is city {i}", "answer": [f"country {i}"]} for i in range(3)],
    "web_questions": [{"question": f"what is thing {i}?", "answers": [f"Thing {i}", f"item {i}"], "url": "u"} for i in range(3)],
    "squad": [
        {"title": f"T{i}", "context": f"Context {i}.", "question": f"Q{i}?", "id": str(i), "is_impossible": i == 1,
         "answers": {"text": [] if i == 1 else [f"span {i}"], "answer_start": [] if i == 1 else [0]},
         "plausible_answers": {"text": [], "answer_start": []}}
        for i in range(3)
    ],
    "lambada": [{"passage": f"the cat number {i} sat on the mat{i}"} for i in range(3)],
}


def _mock_as_dataset(self, split, **kwargs):
    import tensorflow as tf

    rows = [dict(r, question=r["question"] + f" ({split})") if "question" in r else
            dict(r, passage=r["passage"].replace("cat", f"{split} cat")) for r in MOCK[self.name]]
    columns = {k: [r[k] for r in rows] for k in rows[0]}

    def tensor(values):
        if isinstance(values[0], dict):
            return {k: tensor([v[k] for v in values]) for k in values[0]}
        if isinstance(values[0], list):
            return tf.ragged.constant(values, dtype=tf.string if not values[0] or isinstance(
                next((x for v in values for x in v), ""), str) else tf.int32)
        return tf.constant(values)

    return tf.data.Dataset.from_tensor_slices({k: tensor(v) for k, v in columns.items()})


@pytest.fixture
def mock_tfds():
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(as_dataset_fn=_mock_as_dataset):
        yield


# Per task: the solved shot made of shot-split example j, and the first evaluation
# example's question and answers.
EXPECTED = {
    "trivia_qa": (lambda j: f"Q: Who wrote book {j}? (train)\nA: Author {j}",
                  "Q: Who wrote book 0? (validation)\nA:", ("Author 0", "A. 0", "Writer 0")),
    "natural_questions_open": (lambda j: f"Q: where is city {j} (train)\nA: country {j}",
                               "Q: where is city 0 (validation)\nA:", ("country 0",)),
    "web_questions": (lambda j: f"Q: what is thing {j}? (train)\nA: Thing {j}",
                      "Q: what is thing 0? (test)\nA:", ("Thing 0", "item 0")),
    "squad_v2": (lambda j: f"Title: T{j}\nBackground: Context {j}.\nQ: Q{j}? (train)\nA: "
                 + ("unanswerable" if j == 1 else f"span {j}"),
                 "Title: T0\nBackground: Context 0.\nQ: Q0? (validation)\nA:", ("span 0",)),
    "lambada": (lambda j: f"the validation cat number {j} sat on the mat{j}", "the test cat number 0 sat on the",
                ("mat0",)),
}


def expected_prompt(task, i, question):
    """Question i's prompt: the shot the fixed permutation gives it (3 mock shot examples)."""
    from doremi_jax.data import oneshot_tasks as oneshot

    j = int(oneshot.shot_order(3)[i % 3])
    return EXPECTED[task][0](j) + "\n\n" + question


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_oneshot_task_formatting_and_scoring(task, mock_tfds):
    from doremi_jax.data import oneshot_tasks as oneshot

    examples = oneshot.examples(task, max_examples=2)
    assert len(examples) == 2
    assert (examples[0].prompt, examples[0].answers) == (expected_prompt(task, 0, EXPECTED[task][1]), EXPECTED[task][2])
    # Each question its own shot: the two questions are preceded by different examples.
    shots = [ex.prompt.split("\n\n")[0] for ex in examples]
    assert shots[0] != shots[1] and all(s in {EXPECTED[task][0](j) for j in range(3)} for s in shots)
    assert oneshot.examples(task, max_examples=2) == examples  # the same prompts every time
    gold = [ex.answers[0] if ex.answers else "unanswerable" for ex in examples]
    right = [(" " + g + "\n") for g in gold]
    assert downstream.score(task, examples, right)["accuracy"] == 1.0
    assert downstream.score(task, examples, [" wrong answer\n"] * 2)["accuracy"] == 0.0


def test_squad_v2_unanswerable_question(mock_tfds):
    from doremi_jax.data import oneshot_tasks as oneshot

    examples = oneshot.examples("squad_v2", max_examples=3)
    assert examples[1].answers == ()
    assert downstream.score("squad_v2", examples[1:2], [" unanswerable\n"])["accuracy"] == 1.0
    assert downstream.score("squad_v2", examples[1:2], [" span 1\n"])["accuracy"] == 0.0


def test_oneshot_task_through_seqio_as_t5x_would(mock_tfds):
    """The registered task tokenizes through seqio; its postprocessor and metric score
    predictions against every gold answer."""
    import seqio

    from doremi_jax.data import oneshot_tasks as oneshot

    oneshot.register()
    task = seqio.get_mixture_or_task("doremi_oneshot_trivia_qa")
    ex = next(task.get_dataset(None, split="validation", shuffle=False, try_in_mem_cache=False).as_numpy_iterator())
    assert VOCAB.decode(ex["inputs"]) == expected_prompt("trivia_qa", 0, EXPECTED["trivia_qa"][1])
    assert VOCAB.decode(ex["targets"]) == "Author 0"
    targets = [task.postprocess_fn(None, example=ex, is_target=True)]
    assert targets == [["Author 0", "A. 0", "Writer 0"]]
    predictions = [task.postprocess_fn(" writer 0\nQ: more", is_target=False)]
    assert task.metric_fns[0](targets, predictions) == {"exact_match": 100.0}


def test_unknown_task_is_named(mock_tfds):
    from doremi_jax.data import oneshot_tasks as oneshot

    with pytest.raises(ValueError, match="unknown one-shot task 'trivia'"):
        oneshot.examples("trivia", 2)


# --- In the trainer: accuracy against steps, and `evaluate --fewshot`.


@pytest.fixture(scope="module")
def repetitive_run(tmp_path_factory):
    """A tiny model trained on two domains whose next words are predictable."""
    root = tmp_path_factory.mktemp("rep")
    counters = [" ".join(f"The {c} counter is now {i}." for i in range(60)) for c in ("alpha", "beta", "gamma") * 10]
    numbers = [" ".join(f"item {i} costs {i} coins" for i in range(40)) for _ in range(30)]
    data_dir = write_corpus(str(root / "data"), {"counters": counters, "numbers": numbers})
    workdir = str(root / "run")
    kwargs = train_kwargs(data_dir, steps=150, eval_every=75, tensorboard=False)
    summary = loop.train(
        workdir, downstream=downstream.DownstreamConfig(tasks=("cloze",), max_examples=16, batch_size=16,
                                                         prompt_length=64, max_new_tokens=8),
        **kwargs,
    )
    return workdir, summary, data_dir


def test_trainer_scores_cloze_against_steps(repetitive_run):
    workdir, summary, _ = repetitive_run
    cloze_result = summary["downstream"]["cloze"]
    assert cloze_result["examples"] == 32
    # "is now", "The": words the model has learned to predict after 150 steps.
    assert cloze_result["per_domain"]["counters"] > 0.5
    with open(os.path.join(workdir, "downstream_results.json")) as f:
        assert json.load(f) == summary["downstream"]
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    steps = [r["step"] for r in rows if "downstream/cloze" in r]
    assert steps == [75, 150]


def test_evaluate_fewshot_cli(repetitive_run, capsys, tmp_path):
    from doremi_jax import evaluate

    workdir, summary, data_dir = repetitive_run
    gin = tmp_path / "run.gin"
    gin.write_text(
        "include 'gin/runs/lm.gin'\n"
        "TransformerConfig.embed_dim = 64\nTransformerConfig.num_layers = 2\nTransformerConfig.num_heads = 4\n"
        "TransformerConfig.head_dim = 16\nTransformerConfig.mlp_dim = 256\nTransformerConfig.max_length = 128\n"
        f"DATA_DIR = '{data_dir}'\nCORPUS = 'synthetic'\nSEQUENCE_LENGTH = 64\n"
        "TrainConfig.eval_tokens_per_domain = 2048\n"
        "DownstreamConfig.max_examples = 16\nDownstreamConfig.batch_size = 16\n"
        "DownstreamConfig.prompt_length = 64\nDownstreamConfig.max_new_tokens = 8\n"
    )
    import sys
    os.remove(os.path.join(workdir, "downstream_results.json"))  # the file checked below is the entry's
    argv = sys.argv
    try:
        sys.argv = ["evaluate", f"--gin_file={gin}", f"--workdir={workdir}", "--fewshot=cloze"]
        evaluate.cli.main(evaluate.run)
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    assert "cloze" in out and "counters" in out
    with open(os.path.join(workdir, "downstream_results.json")) as f:
        assert json.load(f)["cloze"] == summary["downstream"]["cloze"]


def test_trainer_runs_a_oneshot_task_with_the_real_model(repetitive_run, mock_tfds, monkeypatch):
    """A TFDS task end to end: prompts from seqio, decoded by the trained model, scored."""
    workdir, _, data_dir = repetitive_run
    seen = []
    original_score = downstream.score

    def spy(task, examples, generations):
        seen.append((task, list(examples), list(generations)))
        return original_score(task, examples, generations)

    monkeypatch.setattr(downstream, "score", spy)
    kwargs = train_kwargs(data_dir, steps=150, tensorboard=False)
    summary = loop.train(
        workdir, eval_only=True,
        downstream=downstream.DownstreamConfig(tasks=("trivia_qa",), max_examples=3, batch_size=8,
                                               prompt_length=64, max_new_tokens=4),
        **kwargs,
    )
    result = summary["downstream"]["trivia_qa"]
    ((task, examples, generations),) = seen
    assert task == "trivia_qa" and result["examples"] == len(examples) == len(generations) == 3
    # The reported accuracy is that of these generations against these questions' answers,
    # and the answers are ones a right generation matches.

    assert result["accuracy"] == np.mean([scoring.exact_match(g, ex.answers) for g, ex in zip(generations, examples)])
    assert original_score(task, examples, [ex.answers[0] + "\n" for ex in examples])["accuracy"] == 1.0
    assert original_score(task, examples, ["no idea\n"] * 3)["accuracy"] == 0.0


def test_task_names_match_the_registered_tasks():
    from doremi_jax.data import oneshot_tasks

    assert tuple(oneshot_tasks.SPECS) == downstream.ONESHOT_TASKS


def test_unknown_downstream_task_fails_before_the_run_starts(tmp_path, capsys):
    from doremi_jax.train import __main__ as train_entry

    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_entry.cli.main(train_entry.run, [
            f"--workdir={workdir}", "--gin_file=gin/runs/lm.gin", "--gin_file=gin/models/tiny.gin",
            "--gin.DownstreamConfig.tasks=['cloze', 'trivia']",
        ])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "unknown task(s) ['trivia']" in err and len(err.strip().splitlines()) == 1
    assert not (workdir / "checkpoints").exists() and not (workdir / "run.json").exists()
