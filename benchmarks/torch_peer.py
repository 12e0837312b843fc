"""The peer a user would pick instead: the same DoReMi step in PyTorch + HF transformers.

    python -m venv /tmp/tv && /tmp/tv/bin/pip install torch transformers numpy
    /tmp/tv/bin/python benchmarks/torch_peer.py --json torch_peer.json

Same sizes as `python -m doremi_jax.bench` (d=512, 4 layers, 8 heads of 64, gated MLP
2048, vocabulary 384 with tied embeddings, batch 8 x 512, float32, SDPA attention), same
step: proxy forward + backward, a reference forward without gradients, per-token losses,
per-domain excess loss clipped at 0, the exponentiated-gradient update of α with
smoothing, the α-weighted loss, AdamW. Timed by the median of 10 steps after 3, with the
FLOPs counted as the JAX bench counts them, and the same 2048² float32 matmul peak.
torch is not a dependency of doremi_jax; this script is not imported by it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

D, LAYERS, HEADS, HEAD_DIM, MLP, VOCAB, BATCH, LENGTH, K = 512, 4, 8, 64, 2048, 384, 8, 512, 4


def make_model() -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=D, intermediate_size=MLP, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=HEADS, head_dim=HEAD_DIM,
        max_position_embeddings=LENGTH, tie_word_embeddings=True, attn_implementation="sdpa",
        rms_norm_eps=1e-6,
    )
    return LlamaForCausalLM(cfg).float()


def param_count_without_input_lookup(model) -> int:
    # Tied embeddings: the output projection is a real matmul and counts once (as in bench.py).
    return sum(p.numel() for p in model.parameters())


def flops(n: int) -> dict[str, float]:
    tokens = BATCH * LENGTH
    attn_fwd = 4 * BATCH * LENGTH**2 * HEADS * HEAD_DIM * LAYERS / 2
    lm = 6 * n * tokens + 3 * attn_fwd
    return {"lm_step": lm, "doremi_step": lm + 2 * n * tokens + attn_fwd}


def per_token_loss(model, inputs, targets):
    logits = model(input_ids=inputs).logits
    return F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), reduction="none").view(BATCH, LENGTH)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    proxy, reference = make_model(), make_model()
    reference.eval()
    opt = torch.optim.AdamW(proxy.parameters(), lr=1e-3, weight_decay=0.01)
    tokens = torch.randint(3, 259, (BATCH, LENGTH + 1))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    domain_ids = (torch.arange(BATCH) % K)[:, None].expand(BATCH, LENGTH)
    onehot = F.one_hot(domain_ids, K).float()  # [B, L, K]
    log_alpha = torch.full((K,), -torch.log(torch.tensor(float(K))))
    eta, smoothing = 1.0, 1e-3

    def lm_step():
        opt.zero_grad(set_to_none=True)
        loss = per_token_loss(proxy, inputs, targets).mean()
        loss.backward()
        opt.step()

    def doremi_step():
        nonlocal log_alpha
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            ref_loss = per_token_loss(reference, inputs, targets)
        loss = per_token_loss(proxy, inputs, targets)
        counts = onehot.sum((0, 1)).clamp_min(1)
        with torch.no_grad():
            excess = torch.einsum("bl,blk->k", (loss - ref_loss).clamp_min(0), onehot) / counts
            log_alpha = torch.log_softmax(log_alpha + eta * excess, 0)
            alpha = (1 - smoothing) * log_alpha.exp() + smoothing / K
        domain_means = torch.einsum("bl,blk->k", loss, onehot) / counts
        (alpha * domain_means).sum().backward()
        opt.step()

    def median_time(fn, warmup=3, repeats=10):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    def peak(size=2048, repeats=10):
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        return 2 * size**3 / median_time(lambda: a @ b, 1, repeats)

    peak_before = peak()
    lm_s = median_time(lm_step)
    doremi_s = median_time(doremi_step)
    peak_flops = max(peak_before, peak())
    f = flops(param_count_without_input_lookup(proxy))
    result = {
        "torch": torch.__version__,
        "threads": args.threads,
        "lm_step_s": lm_s,
        "doremi_step_s": doremi_s,
        "ratio": doremi_s / lm_s,
        "lm_gflops": f["lm_step"] / lm_s / 1e9,
        "doremi_gflops": f["doremi_step"] / doremi_s / 1e9,
        "peak_gflops": peak_flops / 1e9,
        "lm_mfu": f["lm_step"] / lm_s / peak_flops,
        "doremi_mfu": f["doremi_step"] / doremi_s / peak_flops,
        "params": param_count_without_input_lookup(proxy),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
