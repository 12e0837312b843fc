"""Is λ signal or lag? The proxy's excess loss, taken apart from the runs' own logs.

DoReMi's λ_t[i] is the proxy's loss on domain i minus the *final* reference's, clipped
at 0. Split at the proxy's step s (per domain, unclipped means over a window):

    proxy(s) − reference_final = [proxy(s) − reference(s)] + [reference(s) − reference_final]

The second term is how much the reference itself still learned after step s: pure lag,
the same for a domain whatever the mixture; in the paper's regime (proxy and reference
trained as long, 200k steps) it is small at the end, at toy scale it can be most of λ.
The first term compares the two at equal training (the proxy on its DRO mixture, the
reference on its own): what DoReMi's reweighting responds to. Both come from the runs'
metrics.jsonl (`domain_loss/<d>`: each step's training loss per domain; the proxy's
also `reference_domain_loss/<d>` and `excess_loss/<d>`); no extra evaluation is run.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from doremi_jax import metrics


def _per_step(rows: Sequence[dict], key: str, domains: Sequence[str]) -> dict[int, np.ndarray]:
    out = {}
    for row in rows:
        if all(f"{key}/{d}" in row for d in domains):
            out[int(row["step"])] = np.asarray([row[f"{key}/{d}"] for d in domains], np.float64)
    return out


def lambda_diagnostics(proxy_dir: str, reference_dir: str, domains: Sequence[str],
                       window_fraction: float = 0.1) -> dict[str, Any]:
    """Per domain, over the proxy's last `window_fraction` of steps (steps where the
    domain had tokens): mean λ, the unclipped gap to the final reference, the part of
    it that is the reference's own later progress (lag), the proxy minus the reference at
    the same step; and the share of proxy steps the domain was absent from."""
    proxy_rows, reference_rows = metrics.read_metrics(proxy_dir), metrics.read_metrics(reference_dir)
    lam = _per_step(proxy_rows, "excess_loss", domains)
    proxy = _per_step(proxy_rows, "domain_loss", domains)
    final_ref = _per_step(proxy_rows, "reference_domain_loss", domains)
    tokens = _per_step(proxy_rows, "domain_tokens", domains)
    reference = _per_step(reference_rows, "domain_loss", domains)
    ref_tokens = _per_step(reference_rows, "domain_tokens", domains)
    steps = sorted(set(lam) & set(proxy) & set(final_ref) & set(tokens))
    if not steps:
        return {}
    window = steps[-max(1, int(round(len(steps) * window_fraction))):]
    present = np.stack([tokens[s] > 0 for s in steps])

    def window_mean(values: dict[int, np.ndarray], seen: dict[int, np.ndarray] | None = None,
                    at: Sequence[int] = window) -> np.ndarray:
        """Per domain, the mean over the window's steps where the domain had tokens."""
        at = [s for s in at if s in values and (seen is None or s in seen)]
        if not at:
            return np.full(len(domains), np.nan)
        v = np.stack([values[s] for s in at])
        mask = np.stack([tokens[s] > 0 for s in at]) & (
            np.stack([seen[s] > 0 for s in at]) if seen is not None else True
        )
        with np.errstate(invalid="ignore"):
            return np.where(mask.any(0), (v * mask).sum(0) / np.maximum(mask.sum(0), 1), np.nan)

    gap = {s: proxy[s] - final_ref[s] for s in steps}
    same_step = {s: proxy[s] - reference[s] for s in steps if s in reference}
    lam_mean = window_mean(lam)
    gap_mean = window_mean(gap)
    same_mean = window_mean(same_step, ref_tokens)
    out = {
        "window_steps": [window[0], window[-1]],
        "proxy_steps": steps[-1],
        "reference_steps": max(reference) if reference else None,
        "domains": {},
    }
    for i, d in enumerate(domains):
        out["domains"][d] = {
            "lambda": float(lam_mean[i]),
            "gap_to_final_reference": float(gap_mean[i]),
            "proxy_minus_reference_same_step": float(same_mean[i]),
            # What the reference still learned after these steps: the lag part of the gap.
            "reference_progress_after": float(gap_mean[i] - same_mean[i]),
            "absent_share": float(1.0 - present[:, i].mean()),
        }
    return out


def lambda_trajectories(proxy_dir: str, domains: Sequence[str], smooth_fraction: float = 0.05):
    """(steps, {domain: λ moving average over `smooth_fraction` of the steps})."""
    lam = _per_step(metrics.read_metrics(proxy_dir), "excess_loss", domains)
    steps = sorted(lam)
    if not steps:
        return [], {d: [] for d in domains}
    values = np.stack([lam[s] for s in steps])
    width = max(1, int(len(steps) * smooth_fraction))
    kernel = np.ones(width) / width
    smooth = {d: np.convolve(values[:, i], kernel, mode="valid").tolist() for i, d in enumerate(domains)}
    return steps[width - 1:], smooth


def diagnostics_table(diag: dict[str, Any]) -> str:
    """Markdown: per domain, λ and its parts over the window."""
    lines = [
        f"Means over proxy steps {diag['window_steps'][0]}-{diag['window_steps'][1]} (of {diag['proxy_steps']}; "
        f"the reference trained {diag['reference_steps']} steps), each over the steps where the domain had tokens.",
        "",
        "| domain | λ | proxy − final reference | = proxy − reference at the same step | + reference's later progress (lag) | steps absent |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for d, r in diag["domains"].items():
        lines.append(
            f"| {d} | {r['lambda']:.4f} | {r['gap_to_final_reference']:+.4f} | "
            f"{r['proxy_minus_reference_same_step']:+.4f} | {r['reference_progress_after']:+.4f} | "
            f"{r['absent_share']:.0%} |"
        )
    lag = [r["reference_progress_after"] for r in diag["domains"].values()]
    gap = [r["gap_to_final_reference"] for r in diag["domains"].values()]
    if gap and np.nanmean(np.abs(gap)) > 0:
        share = np.nanmean(np.abs(lag)) / np.nanmean(np.abs(gap))
        lines += ["", f"The reference's own later progress is {share:.0%} of the gap on average (|mean| over domains): "
                  + ("λ is mostly lag; train the proxy longer or the reference as long as the proxy."
                     if share > 0.5 else "λ is mostly the proxy against the reference at equal training.")]
    absent = max(r["absent_share"] for r in diag["domains"].values())
    if absent > 0:
        lines.append(f"Some domain was absent from up to {absent:.0%} of the proxy's batches (λ = 0 there in reweight "
                     "mode); `--gin.proxy/DataConfig.stratified=True` gives every domain rows in every batch.")
    return "\n".join(lines)
