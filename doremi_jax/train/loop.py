"""The one trainer loop: reference, proxy and main runs, and every mixture method,
differ only by gin (`train.method`: `train/mixture.py`).

Sections, top to bottom: configs; `train` (the entry: prepare, then evaluate only or
train); `_prepare` (checks, corpus, identity, memory, reference, the sharded state
restored); `_evaluate_only`; `_train` (the compiled step and the loop: batches in, step,
metrics and checkpoints out), `_final_evaluation` and `_write_summary`. The step
functions are pure (`steps.py`), the mixture method says what differs between runs
(`mixture.py`; each method's own in `doremi_jax/methods/`), set-up builds the sharded
state (`setup.py`), and the workdir's identity, reference and evaluation files are
`workdir.py`'s.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from typing import Any

import jax
import numpy as np

from doremi_jax import checkpoints, fileio, hosts, metrics as metrics_lib, sharding
from doremi_jax.faults import fault_point
from doremi_jax.data import inputs, prefetch as prefetch_lib, sampler as sampler_lib, stats, tensorflow_runtime
from doremi_jax.eval import downstream as downstream_lib, perplexity
from doremi_jax.models import TransformerConfig, param_count
from doremi_jax.train import memory, setup, workdir as workdir_lib
from doremi_jax.train.mixture import FIXED_MIXTURE, MethodError, MixtureMethod
from doremi_jax.train.state import OptimizerConfig, make_optimizer
from doremi_jax.train.workdir import TrainingError


# TrainConfig fields a run may change when it resumes: how long it runs, how often it
# logs, evaluates and checkpoints, how it lays the work out in memory (the same math) and
# how far ahead it reads. Every other field is part of the run's identity.
RESUMABLE = frozenset({
    "train_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "async_checkpoints",
    "prefetch", "tensorboard", "device_memory_gib", "max_nonfinite_steps", "microbatches", "eval_batch_size",
    "max_epochs",
})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Length, batch and cadence of a run (T5X macro names in gin: TRAIN_STEPS, BATCH_SIZE)."""

    train_steps: int = 100
    batch_size: int = 16
    sequence_length: int = 128
    seed: int = 0
    # A named stream (the pipeline's stages: reference, proxy, main) draws its data and
    # initialisation from (seed, hash of the name): stages sharing SEED see unrelated data.
    stream: str = ""
    microbatches: int = 1
    log_every: int = 10  # progress line; metrics.jsonl gets every step
    eval_every: int = 0  # 0: evaluate at the end only
    eval_tokens_per_domain: int = 16_384
    # Rows per evaluation batch (0: batch_size). The evaluation keeps the logits of a
    # whole batch, B x L x vocabulary floats: at the Pile's 256k vocabulary a training
    # batch of 512 x 1024 needs 125 GiB per chip on 8 chips (`python -m doremi_jax.aot`).
    eval_batch_size: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    max_nonfinite_steps: int = 10
    tensorboard: bool = True  # summaries through clu (imports tensorflow); metrics.jsonl always
    device_memory_gib: float = 0.0  # > 0: fail before compiling if the estimate exceeds it
    # Batches built ahead in a background thread (0: each when needed); the batches are
    # the same either way (`data/prefetch.py`, live rates included).
    prefetch: int = 2
    max_epochs: float = 4.0  # warn when the mixture repeats a domain more often than this
    cap_epochs: bool = False  # renormalize the sampling weights under max_epochs instead


class _Preemption:
    """SIGTERM sets a flag; the loop finishes its step, checkpoints and returns."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM: checkpointing after this step and stopping")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def check_shapes(config: TrainConfig, model: TransformerConfig, dp: int, devices: str = "devices") -> None:
    """The run's rows and length against the model and the data-parallel `devices`
    (the trainer's check, and the ahead-of-time compile's for a TPU slice)."""
    if config.sequence_length > model.max_length:
        raise TrainingError(
            f"SEQUENCE_LENGTH={config.sequence_length} exceeds the model's max_length={model.max_length}"
        )
    if config.batch_size % (dp * config.microbatches):
        raise TrainingError(
            f"BATCH_SIZE={config.batch_size} is not divisible by the {dp} data-parallel {devices}"
            + (f" x {config.microbatches} microbatches" if config.microbatches > 1 else "")
        )
    if config.prefetch < 0:
        raise TrainingError(f"TrainConfig.prefetch={config.prefetch}: expected 0 (off) or more batches ahead")
    if config.eval_batch_size % dp:
        raise TrainingError(
            f"TrainConfig.eval_batch_size={config.eval_batch_size} is not divisible by the {dp} data-parallel {devices}"
        )


def train(
    workdir: str,
    *,
    method: MixtureMethod = FIXED_MIXTURE,
    model: TransformerConfig = TransformerConfig(),
    data: inputs.DataConfig = inputs.DataConfig(),
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    optimizer: OptimizerConfig = OptimizerConfig(),
    config: TrainConfig = TrainConfig(),
    downstream: downstream_lib.DownstreamConfig = downstream_lib.DownstreamConfig(),
    sampling_weights: str = "natural",
    overwrite: bool = False,
    eval_only: bool = False,
    config_text: str | None = None,
    stage_fingerprint: str = "",
    load_parameters_from: str = "",
) -> dict[str, Any]:
    """Train one model in `workdir` and return a summary (also written to summary.json).

    method: the mixture method (`train/mixture.py`; by default a fixed mixture: the
    token-mean loss on data sampled by `sampling_weights`). Its state is in the train
    state, so every method checkpoints and resumes the same way.
    Resumes from the latest checkpoint in `workdir/checkpoints`. Evaluates per-domain
    perplexity, and the `downstream` tasks when any, every `eval_every` steps and at the
    end. With `eval_only`, only evaluates that checkpoint (`python -m doremi_jax.evaluate`).
    `config_text` (the parsed gin) is written to workdir/config.gin once the workdir's
    checks pass; `stage_fingerprint` (the pipeline's) is part of the run's identity.
    `load_parameters_from` (a run's workdir, MaxText's load_parameters_path): a run with
    no checkpoint of its own starts from that run's latest parameters, with a new
    optimizer state at step 0 (how to keep a model's progress under another optimizer).
    Every check that can refuse the run comes before anything is written.
    """
    run = _prepare(workdir, method, model, data, mesh, optimizer, config, downstream, sampling_weights, overwrite,
                   eval_only, config_text, stage_fingerprint, load_parameters_from)
    if eval_only:
        return _evaluate_only(run)
    return _train(run)


@dataclasses.dataclass
class _Run:
    """What preparing a run checked, read and built: all that its steps and its end use."""

    workdir: str
    method: MixtureMethod
    data: inputs.DataConfig
    mesh: sharding.MeshConfig
    config: TrainConfig
    primary: bool
    corpus: Any
    domains: list
    device_mesh: Any
    fixed_sampling: np.ndarray
    seed_words: Any  # the data stream's seed (sampler.stream_seed)
    transformer: Any
    tx: Any
    state: Any
    state_shardings: Any
    start: int
    ckpt: checkpoints.Checkpointer
    evaluators: dict
    downstream_eval: Any
    reference: Any

    @property
    def verdict_evaluator(self):
        return self.evaluators[self.corpus.verdict_split]


def _prepare(workdir, method, model, data, mesh, optimizer, config, downstream, sampling_weights, overwrite,
             eval_only, config_text, stage_fingerprint, load_parameters_from) -> _Run:
    """Checks (settings, corpus, identity, memory, reference), then the sharded state,
    restored from the run's checkpoint or another run's parameters, and the evaluators."""
    if not isinstance(method, MixtureMethod):
        raise TrainingError(f"train.method={method!r}: expected a mixture method (doremi_jax/train/mixture.py)")
    try:
        method.check()
    except MethodError as e:
        raise TrainingError(str(e)) from None
    downstream_lib.check_tasks(downstream.tasks)
    primary = hosts.primary()
    if not eval_only:
        workdir_lib.check_writable(workdir)

    # --- Set-up: corpus, mesh, checks that fail before anything is compiled.
    vocab = inputs.vocabulary(data)  # loaded once: a SentencePiece model is a file read
    corpus = inputs.build_corpus(data, vocab)
    domains, k = corpus.domains, len(corpus.domains)
    vocab_size = vocab.vocab_size
    n_params = param_count(model)
    if primary:
        # The first line of every run: a wrong corpus or size is visible at once.
        print(f"[{os.path.basename(os.path.normpath(workdir))}] {method.name} run on corpus {corpus.name!r} "
              f"(DATA_DIR {data.data_dir!r}, {k} domains: {', '.join(domains)}; vocabulary "
              f"{vocab.fingerprint}), {config.train_steps} steps x batch {config.batch_size} x "
              f"{config.sequence_length} tokens, model {n_params / 1e6:.2f}M parameters "
              f"({model.num_layers} layers, d={model.embed_dim})", flush=True)
    if vocab_size > model.vocab_size:
        raise TrainingError(
            f"vocabulary has {vocab_size} ids but TransformerConfig.vocab_size={model.vocab_size}"
        )
    device_mesh = sharding.make_mesh(mesh)
    for cfg in (model, method.reference_model or model):
        cfg.check_platform(device_mesh.devices.flat[0].platform)
    check_shapes(config, model, sharding.data_parallel_size(device_mesh))
    fixed_sampling = inputs.named_weights(sampling_weights, corpus)
    budget = config.train_steps * config.batch_size * config.sequence_length
    counts = corpus.token_counts("train")
    for line in stats.repetition_report(domains, counts, fixed_sampling, budget, config.max_epochs):
        logging.warning(line)
        if primary and not config.cap_epochs:
            print(f"warning: {line}", flush=True)
    if config.cap_epochs:
        fixed_sampling = stats.cap_weights(counts, fixed_sampling, budget, config.max_epochs)
    alpha0 = method.start_weights(lambda name: inputs.named_weights(name, corpus), fixed_sampling)
    # What a resumed run must share with the run in its workdir (anything else, such as
    # more steps, may change on resume).
    identity = {
        "run": method.name,
        "method": method.identity(),
        "model": dataclasses.asdict(model),
        "domains": list(domains),
        "vocab_size": vocab_size,
        "vocabulary": vocab.fingerprint,
        "corpus": corpus.name,
        "data_dir": fileio.absolute(data.data_dir) if data.data_dir != "demo" else "demo",
        "batch_size": config.batch_size,
        "sequence_length": config.sequence_length,
        "seed": config.seed,
        "stream": config.stream,
        "learning_rate": optimizer.learning_rate,
        "sampling_weights": np.round(np.asarray(fixed_sampling, np.float64), 8).tolist(),
        # The whole optimizer (its state and its steps), what decides the data beyond the
        # mixture, and the corpus's contents, not only its path.
        "optimizer": dataclasses.asdict(optimizer),
        "train": {name: value for name, value in dataclasses.asdict(config).items()
                  if name not in RESUMABLE and name not in ("batch_size", "sequence_length", "seed", "stream")},
        "packing": data.packing,
        "corpus_contents": corpus.fingerprint(),
    }
    if data.stratified:  # only when on: workdirs from before the option stay resumable
        identity["stratified"] = True
    if stage_fingerprint:
        identity["pipeline_stage"] = stage_fingerprint
    if eval_only and not fileio.exists(os.path.join(workdir, "run.json")):
        raise TrainingError(f"no run to evaluate in {workdir!r} (no run.json)")
    with_reference = method.needs_reference
    reference = None
    if with_reference and not eval_only:
        # Read (and check) the reference before this run writes anything (the loop
        # moves it to the checkpoint each step scores against).
        reference = workdir_lib.Reference(
            method, method.reference_model or model, domains, vocab.fingerprint, device_mesh, mesh.rules, step=0
        )
    logging.info("model: %s parameters (%.1fM), mesh %s", f"{n_params:,}", n_params / 1e6, dict(device_mesh.shape))

    estimate = memory.memory_estimate(
        model, device_mesh, mesh.rules, optimizer.name, config.batch_size // config.microbatches,
        config.sequence_length, with_reference,
    )
    total = sum(estimate.values())
    if primary:
        print("per-device memory estimate: " + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in estimate.items())
              + f", total {total / 2**30:.2f} GiB", flush=True)
    if config.device_memory_gib and total > config.device_memory_gib * 2**30:
        raise TrainingError(
            f"estimated {total / 2**30:.1f} GiB per device exceeds TrainConfig.device_memory_gib="
            f"{config.device_memory_gib}: shard more (gin/sharding/fsdp.gin), use remat, or a smaller batch"
        )
    # Nothing is written before the identity and the checkpoint are checked: a refused
    # start leaves the workdir as it was.
    workdir_lib.check_identity(workdir, identity, overwrite and not eval_only, eval_only)

    transformer = model.make()
    tx = make_optimizer(optimizer, config.train_steps)
    seed_words = sampler_lib.stream_seed(config.seed, config.stream)
    rng = jax.random.PRNGKey(config.seed)
    if config.stream:
        rng = jax.random.fold_in(rng, seed_words[1])
    state, state_shardings, param_shardings = setup.init_state(
        model, tx, alpha0, rng, device_mesh, mesh.rules, method
    )

    ckpt = checkpoints.Checkpointer(
        os.path.join(workdir, "checkpoints"), config.keep_checkpoints, config.async_checkpoints
    )
    state, start = ckpt.restore_latest_readable(state)
    if not eval_only:  # the checkpoint fits this run: now its records may be written
        workdir_lib.write_identity(workdir, identity)
        if config_text is not None and primary and not fileio.exists(os.path.join(workdir, "config.gin")):
            fileio.write_text_atomic(os.path.join(workdir, "config.gin"), config_text)
    if start is not None:
        if not eval_only:
            print(f"resuming from step {start}", flush=True)
    elif eval_only:
        raise TrainingError(f"no complete checkpoint in {os.path.join(workdir, 'checkpoints')!r} to evaluate")
    elif load_parameters_from:
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state.params)
        try:
            state = state.replace(params=checkpoints.restore_params(
                os.path.join(load_parameters_from, "checkpoints"), abstract))
        except checkpoints.CheckpointError as e:
            raise TrainingError(f"train.load_parameters_from: {e}") from None
        if primary:
            print(f"parameters from {load_parameters_from!r}; optimizer state new, from step 0", flush=True)
    start = int(state.step)
    # Validation chooses (RegMix's target, a comparison's candidate); test, when the
    # corpus has one, is where results are judged, and so what the periodic evaluations
    # (the curves a speedup is read from) score.
    evaluators = {
        split: perplexity.Evaluator(
            transformer, device_mesh, mesh.rules, param_shardings, corpus.streams[split], domains,
            config.sequence_length, config.eval_batch_size or config.batch_size, config.eval_tokens_per_domain,
        )
        for split in dict.fromkeys(("validation", corpus.verdict_split))
    }
    downstream_eval = None
    if downstream.tasks:
        downstream_eval = downstream_lib.DownstreamEvaluator(
            downstream, model, device_mesh, mesh.rules, param_shardings, corpus, vocab,
        )
    return _Run(workdir, method, data, mesh, config, primary, corpus, list(domains), device_mesh, fixed_sampling,
                seed_words, transformer, tx, state, state_shardings, start, ckpt, evaluators, downstream_eval, reference)


def _evaluate_only(run: _Run) -> dict[str, Any]:
    """`python -m doremi_jax.evaluate`: the checkpoint's evaluations, no step taken."""
    run.ckpt.close()
    results = {split: e(run.state.params) for split, e in run.evaluators.items()}
    summary = {"step": run.start, "domains": run.domains, **workdir_lib.eval_summary(results)}
    if run.downstream_eval:
        summary["downstream"] = run.downstream_eval(run.state.params)
    if run.primary:
        workdir_lib.write_eval(run.workdir, results, summary.get("downstream"))
    return summary


def _train(run: _Run) -> dict[str, Any]:
    """The loop: batches in, steps, metrics and checkpoints out; then the final
    evaluation and summary.json."""
    workdir, method, config, data, primary = run.workdir, run.method, run.config, run.data, run.primary
    corpus, domains, device_mesh, fixed_sampling = run.corpus, run.domains, run.device_mesh, run.fixed_sampling
    state, start, ckpt, reference = run.state, run.start, run.ckpt, run.reference
    evaluator = run.verdict_evaluator
    eval_prefix = metrics_lib.eval_prefix(corpus.verdict_split)
    run_step = setup.compile_step(
        run.transformer, run.tx, method, len(domains), config.microbatches, device_mesh, run.state_shardings,
        reference,
    )

    sampler = sampler_lib.MixtureSampler(
        corpus.streams["train"], config.sequence_length, run.seed_words, data.packing,
        stratified_batch=config.batch_size if data.stratified else 0,
    )
    rows = sharding.local_batch_rows(device_mesh, config.batch_size)
    live_rates = method.live_rates
    prefetcher = prefetch_lib.Prefetcher(sampler, rows, config.prefetch, config.train_steps)

    def next_batch(step, weights):
        return sharding.make_global_batch(device_mesh, prefetcher.get(step, weights), config.batch_size)

    if config.tensorboard:  # clu brings tensorflow in: quietly, and only then
        tensorflow_runtime.tensorflow()
    if primary:
        # Rows past the checkpoint (a killed run's last steps) are trained again below.
        # A run that had finished training resumes only to evaluate again (it was killed
        # before summary.json): its final evaluation rows are written again, not kept.
        metrics_lib.truncate_metrics(workdir, start, evaluated_again=start >= config.train_steps)
        if start and config.tensorboard:
            metrics_lib.rebuild_tensorboard(workdir)
    writer = metrics_lib.MetricWriter(workdir, domains, enabled=primary, tensorboard=config.tensorboard)
    tokens_per_step = config.batch_size * config.sequence_length
    summary: dict[str, Any] = {"start_step": start, "stopped": "finished"}
    if start and primary:  # what the steps before the checkpoint left: the same summary as one unbroken run
        trained = [row for row in metrics_lib.read_metrics(workdir) if "loss" in row]
        if trained:
            summary["loss"] = trained[-1]["loss"]
            summary["nonfinite_steps_total"] = sum(int(not row["step_ok"]) for row in trained)
    stop_early = method.early_stop()

    # --- The loop.
    with sharding.activate(device_mesh, run.mesh.rules), _Preemption() as preemption, prefetcher:
        weights = np.asarray(state.domain_weights) if live_rates else fixed_sampling
        batch = next_batch(start, weights) if start < config.train_steps else None
        pending = None  # the previous step's metrics, read one step late to keep the device busy
        t0, last_log_step = time.perf_counter(), start
        step = start
        while step < config.train_steps:
            if reference is not None:
                reference.advance(step)  # the checkpoint the plug-in picks for this step
            state, step_metrics = run_step(state, batch)
            if reference is not None:  # which reference checkpoint it scored against
                step_metrics = dict(step_metrics, reference_step=reference.step)
            step += 1
            # The next batch, built ahead by the prefetcher while the device ran; live
            # rates (a function of the train state) wait for this step's state.
            if step < config.train_steps:
                weights = np.asarray(state.domain_weights) if live_rates else fixed_sampling
                batch = next_batch(step, weights)
            if pending is not None:
                _record(writer, *pending, summary, config.max_nonfinite_steps, ckpt)
            pending = (step, step_metrics)
            if step % config.log_every == 0 or step == config.train_steps:
                loss = float(step_metrics["loss"])
                elapsed = time.perf_counter() - t0
                rate = (step - last_log_step) * tokens_per_step / max(elapsed, 1e-9)
                eta = (config.train_steps - step) * tokens_per_step / max(rate, 1e-9)
                if primary:
                    print(f"step {step}/{config.train_steps} loss {loss:.4f} "
                          f"{rate:,.0f} tokens/s ETA {eta:.0f}s", flush=True)
                t0, last_log_step = time.perf_counter(), step
            if config.eval_every and step % config.eval_every == 0 and step < config.train_steps:
                writer.write(step, {f"{eval_prefix}/{n}": v for n, v in evaluator(state.params).scalars().items()})
                if run.downstream_eval:
                    writer.write(step, downstream_lib.scalars(run.downstream_eval(state.params)))
            if stop_early is not None and stop_early(step, step_metrics):
                summary["stopped"] = "early_stop"
                summary["steps_saved"] = config.train_steps - step
                break
            if step % config.checkpoint_every == 0 or preemption.requested:
                # This step's row first: a run resumed from this checkpoint starts after it.
                _record(writer, *pending, summary, config.max_nonfinite_steps, ckpt)
                pending = None
                ckpt.save(step, state, force=preemption.requested)
            if preemption.requested:
                summary["stopped"] = "preempted"
                break
        if pending is not None:
            _record(writer, *pending, summary, config.max_nonfinite_steps, ckpt)
        if summary["stopped"] != "preempted" and ckpt.latest_step() != step:
            ckpt.save(step, state, force=True)
        ckpt.close()
        summary["step"] = int(step)
        if summary["stopped"] != "preempted":
            _final_evaluation(run, state, step, summary, writer)
        writer.close()
        fault_point("after_final_eval")
    return _write_summary(run, state, summary, prefetcher)


def _final_evaluation(run: _Run, state, step: int, summary: dict, writer) -> None:
    """Every split's evaluation and the downstream tasks at the end, into the metrics,
    the summary and the workdir's evaluation files."""
    results = {split: e(state.params) for split, e in run.evaluators.items()}
    for split, r in results.items():
        writer.write(step, {f"{metrics_lib.eval_prefix(split)}/{n}": v for n, v in r.scalars().items()})
    summary.update(workdir_lib.eval_summary(results))
    result = results["validation"]
    if result.unscored and run.primary:
        print(f"warning: no held-out tokens in {', '.join(result.unscored)}: "
              "left out of the average and the worst case", flush=True)
    if run.downstream_eval:
        summary["downstream"] = run.downstream_eval(state.params)
        writer.write(step, downstream_lib.scalars(summary["downstream"]))
    if run.primary:
        workdir_lib.write_eval(run.workdir, results, summary.get("downstream"))


def _write_summary(run: _Run, state, summary: dict, prefetcher) -> dict[str, Any]:
    """summary.json, the run's last file: what ran, on what, and the method's results."""
    config, domains, fixed_sampling = run.config, run.domains, run.fixed_sampling
    # Which processes trained it: all of them, or one alone (hosts.alone).
    summary["processes"] = sorted({int(d.process_index) for d in run.device_mesh.devices.flat})
    summary["prefetch"] = {"depth": config.prefetch, "rows_built": prefetcher.rows_built,
                           "rows_rebuilt": prefetcher.rows_rebuilt}
    summary["domains"] = list(domains)
    summary["sampling_weights"] = dict(zip(domains, np.asarray(fixed_sampling, float).tolist()))
    # The corpus's own rates (tokens per domain): what mixture searches start from.
    summary["natural_weights"] = dict(zip(domains, np.asarray(inputs.named_weights("natural", run.corpus),
                                                              float).tolist()))
    if summary["stopped"] != "preempted":
        summary.update(run.method.finish(run.workdir, domains, state, run.primary))
    if run.primary:
        fileio.write_text_atomic(os.path.join(run.workdir, "summary.json"), json.dumps(summary, indent=2))
    return summary


def _record(writer, step, step_metrics, summary, max_nonfinite, ckpt):
    """Write one step's metrics; stop the run after too many non-finite steps in a row."""
    host = jax.device_get(step_metrics)
    summary["loss"] = float(host["loss"])
    summary["nonfinite_steps_total"] = summary.get("nonfinite_steps_total", 0) + int(not host["step_ok"])
    writer.write(step, host)
    if host["nonfinite_steps"] >= max_nonfinite:
        ckpt.wait()
        raise TrainingError(
            f"{int(host['nonfinite_steps'])} non-finite steps in a row at step {step}; "
            f"params and weights were kept from before them (last checkpoint: step {ckpt.latest_step()})"
        )
