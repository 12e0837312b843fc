"""`python -m doremi_jax.bench [--gin_file=...] [--gin.NAME=VALUE] [--json PATH]`.

Measures, in one process and after warm-up, by the median of repeated steps:
the plain LM step and the DoReMi proxy step for the same model (and their ratio),
model FLOPs per step counted as MaxText does, the device's own matmul peak measured in
the same run (MFU against it, and against the datasheet on TPU/GPU), compile time,
peak memory, tokens/s; and the input pipeline's tokens/s and the share of step time
spent waiting for data. Needs only jax, flax, optax, orbax and gin.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from doremi_jax import hardware, sharding
from doremi_jax.models import TransformerConfig, model_flops_per_step, param_count
from doremi_jax.methods.doremi.trainer import DoReMi
from doremi_jax.train import setup
from doremi_jax.train.mixture import FIXED_MIXTURE
from doremi_jax.train.state import OptimizerConfig, make_optimizer

BENCH_GIN = "gin/bench.gin"  # the default bench model and sizes; parsed before the user's files


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    batch_size: int = 8
    sequence_length: int = 512
    warmup_steps: int = 3
    timed_steps: int = 10
    matmul_size: int = 2048
    data: bool = True  # also time the input pipeline on the demo corpus


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measured_peak(dtype: Any, size: int, repeats: int = 10, products: int = 4) -> float:
    """FLOP/s of a large square matmul in `dtype` on the default device.

    Each timed call queues `products` matmuls and waits once, so that the host round trip
    of a wait weighs less against a ~1 ms GPU kernel (with a wait per product, an 8192²
    bfloat16 product read 636–686 TFLOP/s on an H200, where PyTorch's, timed with CUDA
    events, ran at 769–798)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (size, size), dtype)
    f = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(f(a, b))
    return products * 2 * size**3 / _median_time(lambda: [f(a, b) for _ in range(products)], repeats)


def _peak_memory() -> dict[str, Any]:
    stats = jax.local_devices()[0].memory_stats() or {}
    out = {"host_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if "peak_bytes_in_use" in stats:
        out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    return out


def _synthetic_batch(mesh, batch: int, length: int, vocab: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, min(vocab, 259), (batch, length + 1)).astype(np.int32)
    local = {
        "decoder_input_tokens": tokens[:, :-1],
        "decoder_target_tokens": tokens[:, 1:],
        "decoder_positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy(),
        "decoder_segment_ids": np.ones((batch, length), np.int32),
        "decoder_loss_weights": np.ones((batch, length), np.float32),
        "domain_ids": (np.arange(batch)[:, None] % k * np.ones((1, length))).astype(np.int32),
    }
    rows = sharding.local_batch_rows(mesh, batch)
    return sharding.make_global_batch(mesh, {n: v[rows] for n, v in local.items()}, batch)


def benchmark(
    model: TransformerConfig,
    mesh: sharding.MeshConfig = sharding.MeshConfig(),
    bench: BenchConfig = BenchConfig(),
    num_domains: int = 4,
) -> dict[str, Any]:
    device_mesh = sharding.make_mesh(mesh)
    tx = make_optimizer(OptimizerConfig(), 1000)
    proxy_method = DoReMi()
    alpha0 = np.full(num_domains, 1.0 / num_domains)
    state, state_sh, param_sh = setup.init_state(
        model, tx, alpha0, jax.random.PRNGKey(0), device_mesh, mesh.rules, proxy_method
    )
    reference = jax.tree.map(lambda x: x.copy(), state.params)
    batch = _synthetic_batch(device_mesh, bench.batch_size, bench.sequence_length, model.vocab_size, num_domains)
    transformer = model.make()
    results: dict[str, Any] = {
        "device": jax.devices()[0].device_kind,
        "platform": jax.default_backend(),
        "devices": jax.device_count(),
        "params": param_count(model),
        "batch_size": bench.batch_size,
        "sequence_length": bench.sequence_length,
        "dtype": model.dtype,
        "attention": model.attention_implementation
        + (f", blocks of {model.attention_block_size}" if model.attention_block_size else ""),
        "remat_policy": model.remat_policy,
    }
    flops = model_flops_per_step(model, bench.batch_size, bench.sequence_length)
    peak_before = measured_peak(jnp.dtype(model.dtype), bench.matmul_size)

    with sharding.activate(device_mesh, mesh.rules):
        # The trainer's own jitted steps (setup.jit_step), compiled here so that compile
        # time is measured apart from the steps.
        step_args = (transformer, tx, num_domains, 1, device_mesh, state_sh)
        lm = setup.jit_step(transformer, tx, FIXED_MIXTURE, *step_args[2:])
        proxy = setup.jit_step(transformer, tx, proxy_method, *step_args[2:], reference=(transformer, param_sh))
        timings = {}
        for name, fn, args in (("lm_step", lm, ()), ("doremi_step", proxy, (reference,))):
            t = time.perf_counter()
            compiled = fn.lower(state, batch, *args).compile()
            results[f"{name}_compile_s"] = time.perf_counter() - t
            holder = {"state": state}

            def run(compiled=compiled, args=args, holder=holder):
                holder["state"], m = compiled(holder["state"], batch, *args)
                return m["loss"]

            for _ in range(bench.warmup_steps):
                jax.block_until_ready(run())
            timings[name] = _median_time(run, bench.timed_steps)
            state = holder["state"]
            results[f"{name}_s"] = timings[name]
            results[f"{name}_model_flops"] = flops[name]
            results[f"{name}_flops_per_s"] = flops[name] / timings[name]
            results[f"{name}_tokens_per_s"] = flops["tokens"] / timings[name]

    results["doremi_over_lm_time"] = timings["doremi_step"] / timings["lm_step"]
    # The peak is the best of several medians, taken before and after the steps: on a
    # shared machine a single short measurement can land in someone else's burst.
    peak = max([peak_before] + [measured_peak(jnp.dtype(model.dtype), bench.matmul_size) for _ in range(2)])
    results["measured_peak_flops_per_s"] = peak
    # The peak was measured on one device. CPU "devices" (--xla_force_host_platform_device_count)
    # share one host's cores, and one device's matmul already uses all of them.
    units = jax.process_count() if results["platform"] == "cpu" else jax.device_count()
    results["measured_peak_units"] = units
    for name in ("lm_step", "doremi_step"):
        results[f"{name}_mfu_measured_peak"] = results[f"{name}_flops_per_s"] / (peak * units)
    datasheet = hardware.datasheet_peak(results["device"])
    if datasheet and results["platform"] in ("tpu", "gpu"):
        results["datasheet_peak_flops_per_s"] = datasheet
        for name in ("lm_step", "doremi_step"):
            results[f"{name}_mfu_datasheet"] = results[f"{name}_flops_per_s"] / (datasheet * jax.device_count())
    results.update(_peak_memory())
    if bench.data:
        results.update(input_pipeline(bench, timings["lm_step"], device_mesh))
    return results


def input_pipeline(bench: BenchConfig, step_s: float, mesh) -> dict[str, float]:
    """Tokens/s of the mixture sampler on the demo corpus, and the share of a step
    the loop would wait for it (the loop builds batch t+1 while the device runs t)."""
    from doremi_jax.data import inputs
    from doremi_jax.data.sampler import MixtureSampler

    corpus = inputs.build_corpus(inputs.DataConfig())
    sampler = MixtureSampler(corpus.streams["train"], bench.sequence_length, seed=0)
    rows = sharding.local_batch_rows(mesh, bench.batch_size)
    weights = np.full(len(corpus.domains), 1.0 / len(corpus.domains))
    times = []
    for t in range(max(20, bench.timed_steps)):
        start = time.perf_counter()
        sharding.make_global_batch(mesh, sampler.batch(t, rows, weights), bench.batch_size)
        times.append(time.perf_counter() - start)
    batch_s = statistics.median(times)
    tokens = bench.batch_size * bench.sequence_length
    return {
        "input_tokens_per_s": tokens / batch_s,
        "input_over_step_rate": step_s / batch_s,
        "input_wait_share": max(0.0, batch_s - step_s) / step_s,
    }


def format_table(r: dict[str, Any]) -> str:
    lines = [
        f"device: {r['device']} x{r['devices']} ({r['platform']}), model {r['params'] / 1e6:.1f}M params, "
        f"batch {r['batch_size']} x {r['sequence_length']}, {r['dtype']}, attention {r['attention']}, "
        f"remat {r['remat_policy']}",
        f"{'step':<12}{'median s':>10}{'GFLOP/s':>10}{'MFU(meas)':>11}{'tokens/s':>11}{'compile s':>11}",
    ]
    for name in ("lm_step", "doremi_step"):
        lines.append(
            f"{name:<12}{r[f'{name}_s']:>10.4f}{r[f'{name}_flops_per_s'] / 1e9:>10.1f}"
            f"{r[f'{name}_mfu_measured_peak']:>11.1%}{r[f'{name}_tokens_per_s']:>11,.0f}"
            f"{r[f'{name}_compile_s']:>11.2f}"
        )
    lines.append(f"doremi / lm step time: {r['doremi_over_lm_time']:.3f}")
    per = "host" if r["platform"] == "cpu" else "device"
    lines.append(
        f"measured matmul peak: {r['measured_peak_flops_per_s'] / 1e9:.1f} GFLOP/s per {per} "
        f"(MFU against {r['measured_peak_units']} of them)"
    )
    if "lm_step_mfu_datasheet" in r:
        lines.append(
            f"MFU vs datasheet ({r['datasheet_peak_flops_per_s'] / 1e12:.0f} TFLOP/s): "
            f"lm {r['lm_step_mfu_datasheet']:.1%}, doremi {r['doremi_step_mfu_datasheet']:.1%}"
        )
    if "input_tokens_per_s" in r:
        lines.append(
            f"input pipeline: {r['input_tokens_per_s']:,.0f} tokens/s = {r['input_over_step_rate']:.1f}x "
            f"what the step consumes; waiting share {r['input_wait_share']:.1%}"
        )
    if "device_peak_bytes" in r:
        lines.append(f"peak device memory: {r['device_peak_bytes'] / 2**20:.0f} MiB")
    lines.append(f"host max RSS: {r['host_max_rss_bytes'] / 2**20:.0f} MiB")
    return "\n".join(lines)


def main(argv=None) -> None:
    from doremi_jax import cli, config

    def run(files, bindings, rest):
        json_path = None
        args = list(rest)
        while args:
            a = args.pop(0)
            if a.startswith("--json="):
                json_path = a.split("=", 1)[1]
            elif a == "--json" and args:
                json_path = args.pop(0)
            else:
                raise config.ConfigError(f"unknown argument {a!r} (expected --gin_file, --gin.NAME=VALUE, --json PATH)")
        # Compile time is one of the figures: never a program loaded from the cache.
        jax.config.update("jax_enable_compilation_cache", False)
        fn = config.add_configurable("benchmark", benchmark)
        config.add_configurable("BenchConfig", BenchConfig)
        config.parse([BENCH_GIN], [], files, bindings)
        result = fn()
        print(format_table(result), flush=True)
        if json_path:
            with open(json_path, "w") as f:
                json.dump(result, f, indent=2)

    cli.main(run, argv)


if __name__ == "__main__":
    main()
