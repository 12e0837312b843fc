"""`python -m doremi_jax.evaluate --gin_file=... [--gin.NAME=VALUE] --workdir=DIR`.

Per-domain log-perplexity (nats per token and bits per byte), the average and the
worst domain, of the latest checkpoint in DIR, on the held-out split; printed as a
table and written to DIR/eval_results.json. Use the gin files the run was trained with.
"""

from __future__ import annotations

from doremi_jax import cli, config, sharding


def format_results(step: int, result: dict) -> str:
    lines = [f"step {step}", f"{'domain':<24}{'nats/token':>12}{'bits/byte':>12}"]
    for domain, nats in result["log_perplexity"].items():
        lines.append(f"{domain:<24}{nats:>12.4f}{result['bits_per_byte'][domain]:>12.4f}")
    lines.append(f"{'average':<24}{result['average']:>12.4f}")
    lines.append(f"{'worst (' + result['worst']['domain'] + ')':<24}{result['worst']['log_perplexity']:>12.4f}")
    return "\n".join(lines)


def run(files, bindings, rest):
    workdir = cli.require_workdir(rest)
    sharding.initialize_distributed()
    config.parse(files, [f"MODEL_DIR = '{workdir}'", *bindings])
    summary = config.configurable("train")(workdir, eval_only=True)
    print(format_results(summary["step"], summary["eval"]), flush=True)


if __name__ == "__main__":
    cli.main(run)
