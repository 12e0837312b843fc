"""The matrix products of the CPU bench step, one by one, under XLA:CPU or PyTorch (MKL).

    python benchmarks/cpu_kernels.py --framework jax --json jax_kernels.json
    /tmp/tv/bin/python benchmarks/cpu_kernels.py --framework torch --json torch_kernels.json
    taskset -c 0 python benchmarks/cpu_kernels.py --framework jax    # one core

Answers "where does the step lose to the PyTorch peer?" at the kernel level: every
product of the bench model (batch 8 x 512 tokens, d=512, gated MLP 2048, vocabulary
384, 8 heads of 64, causal blocks of 128) in the three orientations training runs it in,
forward (x @ W), input gradient (dy @ Wᵀ) and weight gradient (xᵀ @ dy); the batched
attention products over batch x heads = 64; and the 2048² product both benches use as
their peak. Each is timed alone (float32, the operands already on the device) and
reported in GFLOP/s: the best and the median of the repeats, since on a shared machine
the best is the kernel's own rate and the median what a step sees.
Needs only jax or only torch (with numpy); neither framework imports the other.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

# The bench model (gin/bench.gin): batch 8 x 512, 4 layers, 8 heads of 64, causal blocks of 128.
TOKENS, LENGTH, LAYERS, D, MLP, VOCAB = 8 * 512, 512, 4, 512, 2048, 384
BH, HEAD_DIM, BLOCK = 8 * 8, 64, 128
# The causal blocks of one layer see 128, 256, 384 and 512 keys: 2.5x the last block's work.
BLOCKS_PER_LAST = sum(range(BLOCK, LENGTH + 1, BLOCK)) / LENGTH


def shapes() -> list[tuple[str, tuple[int, ...], tuple[int, ...], str, float]]:
    """(name, lhs shape, rhs shape, contraction, uses): 'nn' a @ b, 'nt' a @ bᵀ, 'tn' aᵀ @ b,
    a leading batch dim when the shapes are 3-D; `uses`: how many times one LM step
    (forward + backward) runs this product's FLOPs at this product's shape class."""
    out = []
    weights = {  # name: (in, out, matrices of this shape in the model)
        "qkvo": (D, D, 4 * LAYERS), "gate/up": (D, MLP, 2 * LAYERS), "down": (MLP, D, LAYERS), "logits": (D, VOCAB, 1),
    }
    for what, (k, n, uses) in weights.items():
        out += [
            (f"{what} fwd", (TOKENS, k), (k, n), "nn", uses),
            (f"{what} dx", (TOKENS, n), (k, n), "nt", uses),
            (f"{what} dW", (TOKENS, k), (TOKENS, n), "tn", uses),
        ]
    per_step = BLOCKS_PER_LAST * LAYERS
    out += [
        ("attn q.kᵀ (last block)", (BH, BLOCK, HEAD_DIM), (BH, LENGTH, HEAD_DIM), "nt", per_step),
        ("attn p.v, ds.k", (BH, BLOCK, LENGTH), (BH, LENGTH, HEAD_DIM), "nn", 2 * per_step),
        ("attn dp = do.vᵀ", (BH, BLOCK, HEAD_DIM), (BH, LENGTH, HEAD_DIM), "nt", per_step),
        ("attn pᵀ.do, dsᵀ.q", (BH, BLOCK, LENGTH), (BH, BLOCK, HEAD_DIM), "tn", 2 * per_step),
        ("attn q.kᵀ (unblocked)", (BH, LENGTH, HEAD_DIM), (BH, LENGTH, HEAD_DIM), "nt", 0),
        ("peak 2048²", (2048, 2048), (2048, 2048), "nn", 0),
    ]
    return out


def flops(a: tuple[int, ...], b: tuple[int, ...], mode: str) -> float:
    batch = a[0] if len(a) == 3 else 1
    m, k = (a[-1], a[-2]) if mode == "tn" else (a[-2], a[-1])
    n = b[-2] if mode == "nt" else b[-1]
    return 2.0 * batch * m * k * n


def _jax_product(mode: str):
    import jax
    import jax.numpy as jnp

    t = lambda x: jnp.swapaxes(x, -1, -2)  # noqa: E731
    fn = {"nn": lambda a, b: a @ b, "nt": lambda a, b: a @ t(b), "tn": lambda a, b: t(a) @ b}[mode]
    return jax.jit(fn), lambda shape, seed: jax.random.normal(jax.random.PRNGKey(seed), shape), jax.block_until_ready


def _torch_product(mode: str, threads: int):
    import torch

    torch.set_num_threads(threads)
    t = lambda x: x.transpose(-1, -2)  # noqa: E731
    fn = {"nn": lambda a, b: a @ b, "nt": lambda a, b: a @ t(b), "tn": lambda a, b: t(a) @ b}[mode]
    gen = torch.Generator().manual_seed(0)
    return fn, lambda shape, seed: torch.randn(*shape, generator=gen), lambda x: x


def run(framework: str, repeats: int) -> dict:
    threads = len(os.sched_getaffinity(0))
    rows = []
    for name, a_shape, b_shape, mode, uses in shapes():
        fn, make, wait = _jax_product(mode) if framework == "jax" else _torch_product(mode, threads)
        a, b = make(a_shape, 0), make(b_shape, 1)
        for _ in range(3):
            wait(fn(a, b))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            wait(fn(a, b))
            times.append(time.perf_counter() - start)
        f = flops(a_shape, b_shape, mode)
        rows.append({
            "name": name, "lhs": a_shape, "rhs": b_shape, "mode": mode, "flops": f, "uses_per_lm_step": uses,
            "best_gflops": f / min(times) / 1e9, "median_gflops": f / statistics.median(times) / 1e9,
        })
    result = {"framework": framework, "threads": threads, "repeats": repeats, "products": rows}
    for stat in ("best", "median"):  # the LM step's matrix products at these rates
        for part, attention in (("weights", False), ("attention", True)):
            result[f"lm_step_{part}_products_s_at_{stat}"] = sum(
                r["uses_per_lm_step"] * r["flops"] / (r[f"{stat}_gflops"] * 1e9)
                for r in rows if r["name"].startswith("attn") == attention
            )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("jax", "torch"), required=True)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    result = run(args.framework, args.repeats)
    print(f"{args.framework} on {result['threads']} core(s), GFLOP/s best / median of {args.repeats}")
    for r in result["products"]:
        print(f"  {r['name']:<24}{r['mode']:>4} {str(r['lhs']):>16} x {str(r['rhs']):<16}"
              f"{r['best_gflops']:>8.1f} {r['median_gflops']:>8.1f}")
    for stat in ("best", "median"):
        w, a = (result[f"lm_step_{p}_products_s_at_{stat}"] for p in ("weights", "attention"))
        print(f"the LM step's products at the {stat} rates: weights {w:.3f} s + attention {a:.3f} s = {w + a:.3f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
