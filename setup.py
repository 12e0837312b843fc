"""doremi_jax: DoReMi domain reweighting and LM pretraining in JAX/Flax."""

import setuptools

# Ranges seen to install together on Python 3.11 (pip 23, 2026-11-28): the
# tensorflow / tensorflow-text / seqio triple constrains numpy and protobuf; the
# JAX side (jax, flax, optax, orbax) does not depend on tensorflow at all.
CORE = [
    "jax>=0.7,<0.11",
    "flax>=0.11,<0.13",
    "optax>=0.2.5,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "gin-config>=0.5,<0.6",
    "numpy>=1.26,<2.5",
    "etils[epath]>=1.7",
]
DATA = [
    "seqio>=0.0.19,<0.1",
    "tensorflow>=2.18,<2.22",
    "tensorflow-text>=2.18,<2.22",
    "tensorflow-datasets>=4.9,<4.10",
    # apache-beam holds protobuf below 7; sentencepiece 0.2.3's generated code needs 7.36.
    "sentencepiece>=0.2,<0.2.3",
    "array_record>=0.8,<0.9",  # pre-tokenized ArrayRecord shards (also a tfds dependency)
    # The preprocessing pipeline (data/preprocess.py), on the DirectRunner here; add
    # apache-beam[gcp] for Dataflow. Seen to install with the pins above (2026-11-30).
    "apache-beam>=2.70,<2.78",
    "zstandard>=0.22",  # .jsonl.zst inputs (the Pile's)
    "grain>=0.2.18,<0.3",  # random access into those shards (data/shards.py), as MaxText reads them
]
# jax[tpu] pins the libtpu built for the installed jax (jax 0.10.2: libtpu 0.0.42.*).
TPU = ["jax[tpu]>=0.7,<0.11"]
# RegMix's regression (the paper's LightGBM) and its held-out rank correlation.
MIXTURE_SEARCH = ["lightgbm>=4.3,<4.7", "scipy>=1.11,<1.18"]
SUMMARIES = [
    "clu>=0.0.12,<0.1",
    "tensorboard>=2.18,<2.22",
    "matplotlib>=3.8,<3.12",
]

setuptools.setup(
    name="doremi_jax",
    version="0.1.0",
    description="DoReMi: optimizing data mixtures for LM pretraining, in JAX/Flax.",
    packages=setuptools.find_packages(include=["doremi_jax", "doremi_jax.*"]),
    python_requires=">=3.10",
    install_requires=CORE + DATA + SUMMARIES + MIXTURE_SEARCH,
    extras_require={
        # The accelerator image has only the JAX side: `pip install --no-deps -e .`
        # there, plus gin-config; bench runs on that alone. (ml_collections is not a
        # dependency: configs are frozen dataclasses bound by gin, as in T5X; one config
        # system, one way to set a value. clu still brings it in.)
        # libtpu, for `python -m doremi_jax.aot` (compile-only TPU topologies on any host).
        # Not in the default install; the tests need it for the ahead-of-time test.
        "tpu": TPU,
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "pytest-timeout>=2.3,<3", *TPU],
    },
)
