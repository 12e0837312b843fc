"""A mixture method as the pipeline sees it: how it finds its mixture, how the main
model trains on it, what it costs, and its part of the report.

A method is one folder, `doremi_jax/methods/<name>/`: this class's subclass (its
settings are its dataclass fields, set by gin under the class's name), the trainer's
plug-in when the main model or a stage of its own trains differently (`trainers`,
subclasses of `train.mixture.MixtureMethod`), its steps and math. `methods.register`
adds it to the registry that the pipeline, the comparison, the report and `aot` iterate.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from doremi_jax import config
from doremi_jax.stages import Stage, StageFactory


@dataclasses.dataclass
class Found:
    """What one search of a method found.

    weights: what the main models' MIXTURE_WEIGHTS binds (`natural`, `uniform` or a
    weights file); upstream: what the main stages' fingerprints depend on (a file's
    hash); mixture: the weights chosen, per domain (None when the main run moves its
    own rates, as an online method does); flops: the training FLOPs spent choosing;
    record: the method's own record (eval.json, its report section)."""

    weights: str
    upstream: str
    mixture: dict[str, float] | None = None
    flops: float = 0.0
    record: dict[str, Any] = dataclasses.field(default_factory=dict)


def mean_mixture(found: Mapping[int | None, Found], domains: Sequence[str]) -> dict[str, float] | None:
    """A method's mixture over its searches: the one search's, or their mean (what a
    user trains on, their spread aside); None for an online method (no fixed mixture)."""
    mixtures = [f.mixture for f in found.values()]
    if any(m is None for m in mixtures):
        return None
    if len(mixtures) == 1:
        return mixtures[0]
    mean = np.mean([[m[d] for d in domains] for m in mixtures], axis=0)
    return dict(zip(domains, (mean / mean.sum()).tolist()))


@dataclasses.dataclass(frozen=True)
class Context:
    """What a method's search may use: the experiment's workdir, the stage factory, the
    baseline's weights and the pipeline's own arguments (`run_pipeline.*`)."""

    workdir: str
    stages: StageFactory
    baseline_weights: str = "natural"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def main_run(self) -> tuple[dict[str, Any], Any]:
        """The main model's train() arguments (`data`, `config`), parsed as the pipeline
        parses a main stage (a placeholder stage: nothing is read or written)."""
        stage = self.stages.main("main_placeholder", "uniform", "")
        stage.parse(check_macros=False)
        return config.call_arguments("train", ("data", "config")), stage

    @functools.cached_property
    def training_tokens(self) -> tuple[list[str], np.ndarray]:
        """(domains, the corpus's training tokens per domain) of the main models' corpus."""
        from doremi_jax.data import inputs  # builds the corpus: data is read only here

        args, _ = self.main_run()
        corpus = inputs.build_corpus(args["data"])
        return list(corpus.domains), np.asarray(corpus.token_counts("train"), np.float64)


@dataclasses.dataclass(frozen=True)
class Method:
    """The base: a static mixture that costs nothing to choose (see `uniform/`)."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # how the report and the comparison name it
    cost: ClassVar[str] = "none"  # what choosing its mixture costs, in words
    trainers: ClassVar[tuple[type, ...]] = ()  # trainer plug-ins it brings (registered with gin)
    main_trainer: ClassVar[str] = ""  # the plug-in (gin name) the main models train with; "": fixed rates
    stage_kinds: ClassVar[tuple[str, ...]] = ()  # kinds of its own stages (`--gin.<kind>/NAME=VALUE`)
    searched: ClassVar[bool] = False  # its mixture depends on the search seed (its spread is reported)

    def check(self, ctx: Context) -> None:
        """Raise config.ConfigError on settings that cannot work, before anything runs."""

    def stages(self, ctx: Context) -> list[tuple[str, Stage, int, bool]]:
        """Its own stages before the main models, one of each kind: (name in `aot`'s
        plan, the stage, how many runs of it one search makes, whether each runs on one
        host's chips). Parsed before anything runs, and compiled by `aot`."""
        return []

    def search(self, ctx: Context, search: int | None) -> Found:
        """Find the mixture (train its stages, skipped when done); `search` is the
        search seed (None: the stages' own seed)."""
        raise NotImplementedError

    def combine(self, ctx: Context, found: Mapping[int | None, Found], domains: Sequence[str]) -> dict[str, Any]:
        """After every search: entries for eval.json's top level (and the method's own
        files in the workdir)."""
        return {}

    def report(self, workdir: str, evaluation: Mapping[str, Any], found: Mapping[int | None, Found],
               domains: Sequence[str]) -> list[str]:
        """Its own sections of report.md (markdown lines; plots written beside it)."""
        return []
