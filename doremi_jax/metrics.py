"""Metric writers (metrics.jsonl + TensorBoard through clu) and the report's plots.

Only process 0 writes. TensorBoard needs clu's summary writer, which brings in
tensorflow; where that is missing (an accelerator host with only JAX installed) the
run logs to metrics.jsonl alone and says so once.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Mapping, Sequence

import numpy as np

from doremi_jax import fileio
from doremi_jax.faults import fault_point


def eval_prefix(split: str) -> str:
    """The metrics rows' prefix of a held-out split's evaluations: `eval/` for
    validation (what chooses), `test/` for test (where results are judged)."""
    return "eval" if split == "validation" else split


def _scalar_items(metrics: Mapping, domains: Sequence[str]):
    for name, value in metrics.items():
        value = np.asarray(value)
        if value.ndim == 0:
            yield name, float(value)
        elif value.ndim == 1 and len(value) == len(domains):
            for d, v in zip(domains, value):
                yield f"{name}/{d}", float(v)


class MetricWriter:
    def __init__(self, workdir: str, domains: Sequence[str], enabled: bool = True, tensorboard: bool = True):
        self.domains = list(domains)
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        fileio.makedirs(workdir)
        # Appending is cheap on a local disk; on an object store every flush rewrites
        # the object, so there rows are flushed in groups (and at close).
        self._jsonl = fileio.open_file(os.path.join(workdir, "metrics.jsonl"), "a")
        self._flush_every = 100 if fileio.is_remote(workdir) else 1
        self._unflushed = 0
        if tensorboard:
            try:
                from clu import metric_writers  # tensorflow: the trainer imported it quietly

                self._tb = metric_writers.create_default_writer(
                    os.path.join(workdir, "tensorboard"), asynchronous=True
                )
            except ImportError as e:
                logging.warning("TensorBoard summaries off (%s); writing metrics.jsonl only", e)

    def write(self, step: int, metrics: Mapping) -> None:
        if not self.enabled:
            return
        scalars = dict(_scalar_items(metrics, self.domains))
        self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
        self._unflushed += 1
        if self._unflushed >= self._flush_every:
            self._jsonl.flush()
            self._unflushed = 0
        if self._tb is not None:
            self._tb.write_scalars(int(step), scalars)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


def _parse_rows(path: str) -> list[dict]:
    """The rows of a metrics.jsonl; a torn line (a run killed mid-write) is dropped with
    a warning."""
    rows = []
    with fileio.open_file(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                logging.warning("%s:%d: torn metrics line dropped", path, lineno)
    return rows


def truncate_metrics(workdir: str, step: int, evaluated_again: bool = False) -> None:
    """Keep only the rows up to `step` (the checkpoint a run resumes from): the steps
    after it are trained again, and each step's row must come from the parameters the
    run ends with. With `evaluated_again` (a finished run killed during its final
    evaluation) the evaluation rows of `step` go too: they are written again, not twice.
    Atomic; process 0 only calls it."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not fileio.exists(path):
        return
    fault_point("metrics_truncation")
    rows = [r for r in _parse_rows(path) if isinstance(r, dict) and r.get("step", step + 1) <= step
            and not (evaluated_again and r["step"] == step and "loss" not in r)]
    fileio.write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def rebuild_tensorboard(workdir: str) -> None:
    """TensorBoard's events rewritten from metrics.jsonl (after `truncate_metrics` on a
    resume): the old event files hold the rows of steps that are trained again, which
    TensorBoard would show twice. Process 0 only calls it; where clu is missing there
    are no events to rebuild."""
    try:
        from clu import metric_writers
    except ImportError:
        return
    folder = os.path.join(workdir, "tensorboard")
    fileio.remove(folder)
    path = os.path.join(workdir, "metrics.jsonl")
    writer = metric_writers.create_default_writer(folder, asynchronous=False)
    for row in _parse_rows(path) if fileio.exists(path) else []:
        writer.write_scalars(int(row["step"]), {k: v for k, v in row.items() if k != "step"})
    writer.flush()
    writer.close()


def read_metrics(workdir: str) -> list[dict]:
    """The rows of a run's metrics.jsonl; on resume the last row of each step wins."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not fileio.exists(path):
        return []
    rows: dict[tuple, dict] = {}
    for row in _parse_rows(path):
        rows[(row["step"], tuple(sorted(row)))] = row
    return sorted(rows.values(), key=lambda r: r["step"])


# --- Plots for the pipeline's report (matplotlib, written as PNG).


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_weights(path: str, domains: Sequence[str], series: Mapping[str, Sequence[float]], title: str) -> None:
    """Grouped horizontal bars: one group per domain, one bar per named weight vector."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(domains) * max(1, len(series)) / 1.5))
    height = 0.8 / max(1, len(series))
    y = np.arange(len(domains))
    for i, (name, values) in enumerate(series.items()):
        bars = ax.barh(y + i * height, values, height, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_yticks(y + height * (len(series) - 1) / 2, domains)
    ax.invert_yaxis()
    ax.set_xlabel("domain weight")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    with fileio.open_file(path, "wb") as f:  # a gs:// report folder too
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def plot_lines(
    path: str,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    hline: tuple[float, str] | None = None,
) -> None:
    """One line per named (x, y) series; an optional labelled horizontal reference line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (x, y) in series.items():
        ax.plot(x, y, label=name, linewidth=1.6)
    if hline is not None:
        ax.axhline(hline[0], color="gray", linestyle="--", linewidth=1, label=hline[1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    with fileio.open_file(path, "wb") as f:  # a gs:// report folder too
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
