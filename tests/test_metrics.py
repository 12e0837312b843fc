"""metrics.jsonl across a resume: each step once, from the run the final parameters come
from; a torn last line is dropped with a warning, never a crash."""

import dataclasses
import json
import logging
import shutil

from doremi_jax import metrics
from doremi_jax.train import loop

import helpers


def loss_steps(workdir):
    return [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl") if '"loss"' in line]


def test_a_resumed_run_logs_each_step_once(tmp_path, caplog):
    data = helpers.write_three_domain_corpus(str(tmp_path / "data"), docs_per_domain=40)
    kwargs = helpers.train_kwargs(data, 10, batch=8)
    kwargs["config"] = dataclasses.replace(kwargs["config"], checkpoint_every=4, async_checkpoints=False)
    workdir = tmp_path / "run"
    loop.train(str(workdir), **kwargs)
    assert loss_steps(workdir) == list(range(1, 11))
    # What a run killed after step 10's checkpoint failed to finish looks like: step 10's
    # checkpoint lost, rows of steps 9-10 and of a step 11 it reached, a torn last line.
    shutil.rmtree(workdir / "checkpoints" / "10")
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 11, "loss": 9.0}) + "\n" + '{"step": 12, "lo')
    caplog.set_level(logging.WARNING)
    assert [r["step"] for r in metrics.read_metrics(str(workdir)) if "loss" in r][-1] == 11
    assert "torn metrics line dropped" in caplog.text
    summary = loop.train(str(workdir), **kwargs)
    assert summary["start_step"] == 8
    assert loss_steps(workdir) == list(range(1, 11))
    rows = metrics.read_metrics(str(workdir))
    assert max(r["step"] for r in rows) == 10 and not any(r.get("loss") == 9.0 for r in rows)

    # TensorBoard's view too: every logged step once.
    import tensorflow as tf

    steps = []
    for path in sorted((workdir / "tensorboard").rglob("events.out.tfevents*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            steps += [event.step for v in event.summary.value if v.tag == "loss"]
    assert sorted(steps) == list(range(1, 11))
