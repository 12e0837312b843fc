"""Workdirs and corpora on gs://: every file goes through etils.epath.

The bucket is a local folder behind `epath.testing.mock_epath`, which routes every
epath call, gs:// ones included, through functions that map the URI to that folder.
Anything that bypassed epath (a plain `open` or `os` call on "gs://...") would fail or
create a literal "gs:" folder in the working directory, which the test checks for.
"""

import os

import numpy as np
import pytest
from etils import epath

from doremi_jax import fileio, metrics
from doremi_jax.data import corpus as corpus_lib, vocab as vocab_lib, weights as weights_lib

from helpers import write_corpus


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    root = tmp_path / "bucket-root"
    root.mkdir()
    monkeypatch.chdir(tmp_path)
    # With tensorflow installed epath sends gs:// to tf.io.gfile before consulting the
    # backends that mock_epath replaces.
    monkeypatch.setattr(epath.gpath, "_is_tf_installed", lambda: False)

    def local(path):
        path = os.fspath(path)
        return str(root / path[len("gs://"):]) if path.startswith("gs://") else path

    def wrap(fn_name):
        def mocked(original, path, *args, **kwargs):
            if fn_name in ("rename", "replace", "copy"):
                args = (local(args[0]),) + args[1:]
            out = original(local(path), *args, **kwargs)
            if fn_name == "glob":
                return [("gs://" + os.path.relpath(p, root)) if p.startswith(str(root)) else p for p in out]
            return out
        return mocked

    names = ["copy", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove",
             "rename", "replace", "rmtree", "stat", "walk"]
    with epath.testing.mock_epath(**{n: wrap(n) for n in names}):
        yield root
    assert not os.path.exists(tmp_path / "gs:"), "something wrote through the OS instead of epath"


def test_paths_on_a_bucket_stay_uris():
    assert fileio.absolute("gs://b/run") == "gs://b/run"
    assert fileio.is_remote("gs://b/run") and not fileio.is_remote("runs/demo")
    assert fileio.absolute("runs/x") == os.path.abspath("runs/x")


def test_workdir_files_on_a_bucket(bucket):
    workdir = "gs://my-bucket/runs/demo"
    fileio.write_text_atomic(f"{workdir}/config.gin", "x = 1\n")
    assert (bucket / "my-bucket/runs/demo/config.gin").read_text() == "x = 1\n"
    assert not list((bucket / "my-bucket/runs/demo").glob("*.tmp-*"))

    weights_lib.write_weights(f"{workdir}/domain_weights.json", ["a", "b"], [0.25, 0.75])
    np.testing.assert_allclose(weights_lib.read_weights(f"{workdir}/domain_weights.json", ["a", "b"]), [0.25, 0.75])

    writer = metrics.MetricWriter(workdir, ["a", "b"], tensorboard=False)
    for step in range(1, 4):
        writer.write(step, {"loss": 1.0 / step, "domain_weights": np.asarray([0.5, 0.5])})
    writer.close()
    rows = metrics.read_metrics(workdir)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["domain_weights/b"] == 0.5

    metrics.plot_lines(f"{workdir}/curve.png", {"loss": ([1, 2, 3], [1.0, 0.5, 0.3])}, "t", "x", "y")
    assert (bucket / "my-bucket/runs/demo/curve.png").read_bytes()[:4] == b"\x89PNG"

    fileio.remove(workdir)
    assert not (bucket / "my-bucket/runs/demo").exists()


def test_corpus_on_a_bucket(bucket, tmp_path):
    write_corpus(str(bucket / "data"), {"x": ["hello world"] * 8, "y": ["abc def"] * 8})
    np.save(bucket / "data" / "x" / "ignored.npy", np.zeros(2))
    corpus = corpus_lib.load_corpus("gs://data", vocab_lib.ByteVocabulary(), cache_dir=str(tmp_path / "cache"))
    assert corpus.domains == ("x", "y")
    # write_corpus keeps 1 of 8 documents for validation; every document ends with EOS.
    assert corpus.streams["train"][1].num_tokens == 7 * (len("abc def") + 1)

