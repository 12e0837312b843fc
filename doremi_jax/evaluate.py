"""`python -m doremi_jax.evaluate --gin_file=... [--gin.NAME=VALUE] --workdir=DIR [--fewshot=TASKS]`.

Per-domain log-perplexity (nats per token and bits per byte), the average and the
worst domain, of the latest checkpoint in DIR, on the held-out splits; printed as
tables and written to DIR/eval_results.json (validation) and DIR/test_results.json (test,
when the corpus has one). Use the gin files the run was trained with.

`--fewshot=cloze,trivia_qa,...` also decodes greedily and scores downstream accuracy:
`cloze` (from the corpus's held-out documents, no download) and the one-shot TFDS tasks
trivia_qa, natural_questions_open, web_questions, squad_v2, lambada (TFDS_DATA_DIR or
DownstreamConfig.tfds_data_dir must hold them); written to DIR/downstream_results.json.
`--fewshot` alone means the tasks bound in gin, or `cloze`.
"""

from __future__ import annotations

from typing import Sequence

from doremi_jax import cli, config, sharding


def format_results(step: int, result: dict) -> str:
    lines = [f"step {step}", f"{'domain':<24}{'nats/token':>12}{'bits/byte':>12}"]
    for domain, nats in result["log_perplexity"].items():
        lines.append(f"{domain:<24}{nats:>12.4f}{result['bits_per_byte'][domain]:>12.4f}")
    lines.append(f"{'average':<24}{result['average']:>12.4f}")
    lines.append(f"{'worst (' + result['worst']['domain'] + ')':<24}{result['worst']['log_perplexity']:>12.4f}")
    return "\n".join(lines)


def format_downstream(results: dict) -> str:
    lines = [f"{'task':<32}{'accuracy':>10}{'examples':>10}"]
    for task, r in results.items():
        lines.append(f"{task:<32}{r['accuracy']:>10.3f}{r['examples']:>10d}")
        for domain, acc in r.get("per_domain", {}).items():
            lines.append(f"{'  ' + domain:<32}{acc:>10.3f}")
    return "\n".join(lines)


_BOUND_TASKS = "<tasks bound in gin>"


def _fewshot_bindings(rest: Sequence[str]) -> tuple[list[str], list[str]]:
    """Pull `--fewshot[=TASKS]` out of the arguments as a gin binding."""
    bindings, other = [], []
    for arg in rest:
        if arg == "--fewshot":
            bindings.append(_BOUND_TASKS)
        elif arg.startswith("--fewshot="):
            tasks = [t.strip() for t in arg.split("=", 1)[1].split(",") if t.strip()]
            if not tasks:
                raise config.ConfigError("--fewshot=TASKS needs at least one task")
            bindings.append(f"DownstreamConfig.tasks = {tasks!r}")
        else:
            other.append(arg)
    return bindings, other


def run(files, bindings, rest):
    fewshot, rest = _fewshot_bindings(rest)
    workdir = cli.require_workdir(rest)
    sharding.initialize_distributed()
    if _BOUND_TASKS in fewshot:
        config.parse([], [], files, bindings, model_dir=workdir)
        tasks = list(config.query("DownstreamConfig.tasks", ())) or ["cloze"]
        fewshot = [f"DownstreamConfig.tasks = {[str(t) for t in tasks]!r}"]
    config.parse([], [], files, [*bindings, *fewshot], model_dir=workdir)
    summary = config.configurable("train")(workdir, eval_only=True)
    print("validation:", flush=True)
    print(format_results(summary["step"], summary["eval"]), flush=True)
    if "test" in summary:
        print("test:", flush=True)
        print(format_results(summary["step"], summary["test"]), flush=True)
    if "downstream" in summary:
        print(format_downstream(summary["downstream"]), flush=True)


if __name__ == "__main__":
    cli.main(run)
