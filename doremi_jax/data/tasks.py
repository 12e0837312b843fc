"""seqio Tasks and Mixtures over the same domain folders, for T5X projects.

Importing this module registers the demo corpus:

    import doremi_jax.data.tasks  # registers demo_<domain>, demo_natural, demo_uniform
    MIXTURE_OR_TASK_NAME = "demo_natural"

and `register_folder_corpus("pile", "/data/pile", weights={"doremi": "w.json"})` registers
`pile_<domain>` Tasks and `pile_natural`, `pile_uniform`, `pile_doremi` Mixtures. A
domain folder of text (jsonl, txt) is tokenized by the task's vocabulary; one of
pre-tokenized TFRecord shards is read by `seqio.TFExampleDataSource`, and `.tokens.npy`
or ArrayRecord shards through doremi_jax's own loader.

`register_tfds_corpus` does the same for a TFDS dataset whose examples carry a domain
field (The Pile's `meta/pile_set_name`): one Task per value of that field.

Each example carries `targets` (tokens + EOS) and `domain_ids` (the domain's index, one
per token); `DomainLMFeatureConverter` packs both and passes `domain_ids` through, so a
model sees the same features as doremi_jax's own sampler produces.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Mapping, Sequence

import numpy as np
from etils import epath

from doremi_jax import fileio
from doremi_jax.data import tensorflow_runtime

tf = tensorflow_runtime.tensorflow()  # before seqio, which imports it with all its start-up noise
import seqio  # noqa: E402
from doremi_jax.data import corpus as corpus_lib, shards as shard_reader
from doremi_jax.data import demo
from doremi_jax.data import weights as weights_lib
from doremi_jax.data.vocab import ByteVocabulary

DEFAULT_VOCABULARY = seqio.ByteVocabulary()


def task_name(corpus: str, domain: str) -> str:
    """`<corpus>_<domain>`, with characters seqio refuses in names ("-", "(", " ")
    replaced by "_": "pile" and "Gutenberg (PG-19)" give "pile_Gutenberg__PG_19_"."""
    return re.sub(r"[^\w.:#]", "_", f"{corpus}_{domain}")


def _read_split(data_dir_fn, domain: str, text_field: str, split: str, shuffle_files: bool, seed=None):
    """All documents of a domain split as a dataset of {"text": ...} (jsonl or .txt)."""
    data_dir = data_dir_fn()
    files = corpus_lib.split_files(data_dir, domain, split)
    if not files:
        raise corpus_lib.CorpusError(f"domain {domain!r}: no {split} files in {os.path.join(data_dir, domain)!r}")
    texts = [t for path in files for t in corpus_lib.iter_documents(path, text_field) if t]
    return tf.data.Dataset.from_tensor_slices({"text": texts})


def _add_domain_ids(dataset: tf.data.Dataset, domain_id: int) -> tf.data.Dataset:
    def add(example):
        example = dict(example)
        example["domain_ids"] = tf.fill(tf.shape(example["targets"]), tf.constant(domain_id, tf.int32))
        return example

    return dataset.map(add, num_parallel_calls=tf.data.AUTOTUNE)


def _rekey_text(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.map(lambda ex: {"targets": ex["text"]}, num_parallel_calls=tf.data.AUTOTUNE)


def _read_token_split(data_dir_fn, domain: str, split: str, shuffle_files: bool, seed=None):
    """Pre-tokenized documents (.tokens.npy, ArrayRecord) as {"targets": int32[None]}."""
    return _documents_dataset(corpus_lib.load_stream(data_dir_fn(), domain, split, ByteVocabulary()))


def _documents_dataset(stream) -> tf.data.Dataset:
    """A stream's documents as {"targets": int32[None]}, without the EOS the task appends."""

    def documents():
        for document in stream.documents():
            yield {"targets": np.asarray(document[:-1], np.int32)}

    return tf.data.Dataset.from_generator(
        documents, output_signature={"targets": tf.TensorSpec([None], tf.int32)}
    )


def _index(data_dir: str | None) -> dict:
    """The Beam preprocessing's index.json of `data_dir` ({} when there is none)."""
    path = os.path.join(data_dir, "index.json") if data_dir else ""
    return json.loads(fileio.read_text(path)) if path and fileio.exists(path) else {}


def _read_indexed_split(data_dir_fn, domain: str, split: str, shuffle_files: bool, seed=None):
    """The Beam preprocessing's shards, document by document, read by window (no vocabulary
    check here: the task's own vocabulary decodes them)."""
    folder = os.path.join(data_dir_fn(), domain)
    paths = sorted(os.fspath(p) for p in epath.Path(folder).glob(f"{split}*.array_record"))
    return _documents_dataset(shard_reader.load_stream(paths, eos_id=1))


def _dense_targets(dataset: tf.data.Dataset) -> tf.data.Dataset:
    def dense(ex):
        return {"targets": tf.cast(tf.sparse.to_dense(ex["targets"]), tf.int32)}

    return dataset.map(dense, num_parallel_calls=tf.data.AUTOTUNE)


def _domain_source(data_dir_fn, data_dir: str | None, domain: str, text_field: str):
    """(source, preprocessors before EOS) for one domain folder, by what it holds: text
    (tokenized by the task), TFRecord shards, or other pre-tokenized data."""
    pretokenized = data_dir is not None and not corpus_lib.split_files(data_dir, domain, "train")
    if not pretokenized:  # the demo corpus (data_dir None) is text
        source = seqio.FunctionDataSource(
            functools.partial(_read_split, data_dir_fn, domain, text_field), splits=corpus_lib.SPLITS
        )
        return source, [_rekey_text, seqio.preprocessors.tokenize]
    folder = os.path.join(data_dir, domain)
    if _index(data_dir) and shard_reader.has_lengths(
        sorted(os.fspath(p) for p in epath.Path(folder).glob("train*.array_record"))
    ):
        source = seqio.FunctionDataSource(
            functools.partial(_read_indexed_split, data_dir_fn, domain), splits=corpus_lib.SPLITS
        )
        return source, []
    if list(epath.Path(folder).glob("train*.tfrecord")):
        source = seqio.TFExampleDataSource(
            {s: os.path.join(folder, f"{s}*.tfrecord") for s in corpus_lib.SPLITS},
            feature_description={"targets": tf.io.VarLenFeature(tf.int64)},
        )
        return source, [_dense_targets]
    source = seqio.FunctionDataSource(
        functools.partial(_read_token_split, data_dir_fn, domain), splits=corpus_lib.SPLITS
    )
    return source, []


@functools.lru_cache(maxsize=None)
def _token_count(data_dir: str, domain: str) -> int:
    stream = corpus_lib.load_stream(data_dir, domain, "train", ByteVocabulary())
    return stream.num_tokens


def register_folder_corpus(
    name: str,
    data_dir: str | None,
    domains: Sequence[str] | None = None,
    vocabulary: seqio.Vocabulary = DEFAULT_VOCABULARY,
    text_field: str = "text",
    weights: Mapping[str, str] | None = None,
) -> list[str]:
    """Register `<name>_<domain>` Tasks and `<name>_natural`, `<name>_uniform` and
    `<name>_<tag>` (for each weights file) Mixtures; returns the mixture names.

    data_dir None means the embedded demo corpus, built when a dataset is first asked for.
    """
    data_dir_fn = (lambda: data_dir) if data_dir else demo.build_demo_corpus
    domains = list(domains or (demo.DOMAINS if data_dir is None else corpus_lib.list_domains(data_dir)))
    output_features = _output_features(vocabulary, len(domains))
    task_names = []
    for i, domain in enumerate(domains):
        task = task_name(name, domain)
        source, to_tokens = _domain_source(data_dir_fn, data_dir, domain, text_field)
        seqio.TaskRegistry.remove(task)
        seqio.TaskRegistry.add(
            task,
            source=source,
            preprocessors=[
                *to_tokens,
                seqio.preprocessors.append_eos_after_trim,
                functools.partial(_add_domain_ids, domain_id=i),
            ],
            output_features=output_features,
        )
        task_names.append(task)
    domain_of = dict(zip(task_names, domains))

    index = _index(data_dir)

    def natural_rate(task: seqio.Task) -> float:
        if index:  # the Beam preprocessing's counts: no token is read
            return float(index["domains"][domain_of[task.name]]["train"]["tokens"])
        return float(_token_count(data_dir_fn(), domain_of[task.name]))

    return _register_mixtures(name, task_names, domains, weights, natural=natural_rate)


def _output_features(vocabulary: seqio.Vocabulary, num_domains: int) -> dict[str, seqio.Feature]:
    return {
        "targets": seqio.Feature(vocabulary, add_eos=True),
        "domain_ids": seqio.Feature(seqio.PassThroughVocabulary(num_domains), add_eos=False, required=False),
    }


def _register_mixtures(name, task_names, domains, weights, natural=None) -> list[str]:
    """`<name>_natural` (when a rate function is given), `<name>_uniform` and
    `<name>_<tag>` for each weights file (read against `domains`); returns their names."""
    mixtures = {"natural": [(t, natural) for t in task_names]} if natural else {}
    mixtures["uniform"] = [(t, 1.0) for t in task_names]
    for tag, path in (weights or {}).items():
        w = weights_lib.read_weights(path, domains)
        mixtures[tag] = [(t, float(x)) for t, x in zip(task_names, w)]
    for tag, rates in mixtures.items():
        seqio.MixtureRegistry.remove(f"{name}_{tag}")
        seqio.MixtureRegistry.add(f"{name}_{tag}", rates)
    return [f"{name}_{tag}" for tag in mixtures]


def _field(example, path: str):
    for key in path.split("/"):
        example = example[key]
    return example


def _select_domain(dataset: tf.data.Dataset, domain_field: str, value: str, text_field: str) -> tf.data.Dataset:
    """Examples of one domain (an integer field, such as a label, compares as its string)."""

    def keep(example):
        field = _field(example, domain_field)
        if field.dtype != tf.string:
            field = tf.strings.as_string(field)
        return tf.equal(field, value)

    return dataset.filter(keep).map(lambda ex: {"targets": _field(ex, text_field)}, num_parallel_calls=tf.data.AUTOTUNE)


def register_tfds_corpus(
    name: str,
    tfds_name: str,
    domain_field: str,
    domains: Sequence[str],
    text_field: str = "text",
    vocabulary: seqio.Vocabulary = DEFAULT_VOCABULARY,
    weights: Mapping[str, str] | None = None,
    tfds_data_dir: str | None = None,
) -> list[str]:
    """Register `<name>_<domain>` Tasks over one TFDS dataset, each keeping the examples
    whose `domain_field` (a path such as "meta/pile_set_name") equals the domain's value,
    and `<name>_uniform` plus `<name>_<tag>` Mixtures for the weights files. Domain
    values are matched to weights files through `weights.folder_name` ("PubMed Central"
    -> "PubMed_Central"), the names the Pile splitter uses, and named by `task_name`."""
    output_features = _output_features(vocabulary, len(domains))
    source = seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir)
    task_names = []
    for i, value in enumerate(domains):
        task = task_name(name, weights_lib.folder_name(value))
        seqio.TaskRegistry.remove(task)
        seqio.TaskRegistry.add(
            task,
            source=source,
            preprocessors=[
                functools.partial(_select_domain, domain_field=domain_field, value=value, text_field=text_field),
                seqio.preprocessors.tokenize,
                seqio.preprocessors.append_eos_after_trim,
                functools.partial(_add_domain_ids, domain_id=i),
            ],
            output_features=output_features,
        )
        task_names.append(task)
    return _register_mixtures(name, task_names, [weights_lib.folder_name(v) for v in domains], weights)


class DomainLMFeatureConverter(seqio.LMFeatureConverter):
    """seqio's decoder-only converter with `domain_ids` packed beside `targets`.

    seqio refuses pass-through features when packing, so `domain_ids` is declared a task
    feature: packing then moves it with its tokens, and it comes out per token.
    """

    TASK_FEATURES = {
        **seqio.LMFeatureConverter.TASK_FEATURES,
        "domain_ids": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
    }
    MODEL_FEATURES = {
        **seqio.LMFeatureConverter.MODEL_FEATURES,
        "domain_ids": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
    }

    def _convert_example(self, features):
        out = dict(super()._convert_example(features))
        out["domain_ids"] = features["domain_ids"]
        return out

    def get_model_feature_lengths(self, task_feature_lengths):
        lengths = dict(super().get_model_feature_lengths(task_feature_lengths))
        lengths["domain_ids"] = task_feature_lengths["targets"]
        return lengths


register_folder_corpus("demo", None)
