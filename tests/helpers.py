"""Small corpora and configs made by the tests themselves."""

from __future__ import annotations

import json
import os
import random

from doremi_jax.data.inputs import DataConfig
from doremi_jax.models import TransformerConfig
from doremi_jax.train.loop import TrainConfig
from doremi_jax.train.state import OptimizerConfig

TINY = TransformerConfig(vocab_size=384, embed_dim=64, num_layers=2, num_heads=4, head_dim=16, mlp_dim=256, max_length=128)


def write_corpus(root: str, docs: dict[str, list[str]], validation_fraction: float = 0.15,
                  test_fraction: float = 0.0) -> str:
    """DATA_DIR/<domain>/{validation,train}.jsonl, and test.jsonl with a test fraction."""
    for domain, texts in docs.items():
        folder = os.path.join(root, domain)
        os.makedirs(folder, exist_ok=True)
        n_val = max(1, int(len(texts) * validation_fraction))
        n_test = int(len(texts) * test_fraction)
        splits = [("validation", texts[:n_val]), ("test", texts[n_val:n_val + n_test]), ("train", texts[n_val + n_test:])]
        for split, part in splits if n_test else [splits[0], splits[2]]:
            with open(os.path.join(folder, f"{split}.jsonl"), "w") as f:
                for t in part:
                    f.write(json.dumps({"text": t}) + "\n")
    return root


def write_three_domain_corpus(root: str, seed: int = 0, docs_per_domain: int = 200) -> str:
    """The known-answer problem for DoReMi.

    learnable: real English (standard-library docstrings), which keeps improving for a
    long time; noise: token ids uniform over the 256 byte ids, written pre-tokenized
    (nothing to learn: a model at initialisation is already optimal); easy: one phrase
    repeated (learned at once).
    """
    import numpy as np

    from doremi_jax.data import demo

    rng = random.Random(seed)
    _, prose = demo._code_and_prose()
    rng.shuffle(prose)
    easy = ["abc " * rng.randint(100, 200) for _ in range(docs_per_domain)]
    write_corpus(root, {"learnable": prose[:docs_per_domain], "easy": easy})
    np_rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "noise"), exist_ok=True)
    for split, n in (("train", 30_000), ("validation", 10_000)):
        tokens = np_rng.integers(3, 259, n).astype(np.int32)
        tokens[np_rng.integers(0, n, n // 600)] = 1  # EOS: ~600-token documents
        np.save(os.path.join(root, "noise", f"{split}.tokens.npy"), tokens)
    return root


def train_kwargs(data_dir: str, steps: int, batch: int = 16, length: int = 64, **config) -> dict:
    return dict(
        model=TINY,
        data=DataConfig(data_dir=data_dir, corpus_name="synthetic"),
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=10),
        config=TrainConfig(
            train_steps=steps, batch_size=batch, sequence_length=length, log_every=1000,
            checkpoint_every=1000, eval_tokens_per_domain=2048, **config,
        ),
    )


def damage_checkpoint(step_dir) -> None:
    """Zero the data files of one checkpoint step folder, as a disk fault would."""
    damaged = 0
    for path in step_dir.rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and ("ocdbt" in str(path) or path.name.startswith("d")):
            path.write_bytes(b"\0" * path.stat().st_size)
            damaged += 1
    assert damaged


def assert_mixture_gin(workdir) -> None:
    """main_mixture.gin binds the main run's sampling weights to this run's
    domain_weights.json, by an absolute path that gin reads back (a quote in it too)."""
    import ast

    text = open(os.path.join(workdir, "main_mixture.gin")).read()
    binding = [line for line in text.splitlines() if line.startswith("train.sampling_weights = ")]
    assert len(binding) == 1, text
    path = ast.literal_eval(binding[0].split(" = ", 1)[1])
    assert path == os.path.join(os.path.abspath(workdir), "domain_weights.json") and os.path.isfile(path)


def assert_png(path, min_bytes: int = 5000) -> None:
    """A real plot: PNG's signature and more than an empty canvas's bytes."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes, (path, len(data))


def final_state(workdir):
    """A finished tiny run's final parameters (from its checkpoints) and summary.json."""
    from doremi_jax import checkpoints, sharding
    from doremi_jax.train import setup

    mesh_cfg = sharding.MeshConfig(data=-1)
    abstract = setup.abstract_params(TINY, sharding.make_mesh(mesh_cfg), mesh_cfg.rules)[0]
    params = checkpoints.restore_params(os.path.join(workdir, "checkpoints"), abstract)
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    return params, summary


def metric_rows(workdir):
    """Every row of metrics.jsonl, the evaluation rows included, in order."""
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
