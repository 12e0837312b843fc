"""RegMix (Liu et al., 2024): small runs on random mixtures as stages of kind `regmix`
(`--gin.regmix/NAME=VALUE` reaches only them), a regression from mixture to the target
validation loss and a search of it (`fit.py`). Settings: `RegMixConfig.*` in gin."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import numpy as np

from doremi_jax import config, hosts
from doremi_jax.data import weights as weights_lib
from doremi_jax.methods.base import Found, Method
from doremi_jax.methods.regmix import fit as fit_lib
from doremi_jax.methods.registry import register
from doremi_jax.stages import file_hash, search_folder, write_json

KIND = "regmix"


@register
@dataclasses.dataclass(frozen=True)
class RegMixConfig(Method):
    """RegMix's small runs and search."""

    name = "regmix"
    label = "RegMix"
    cost = "the small runs"
    stage_kinds = (KIND,)
    searched = True

    runs: int = 16
    gin_files: tuple[str, ...] = ("gin/runs/regmix.gin",)
    bindings: tuple[str, ...] = ()
    target_domains: tuple[str, ...] = ()  # () : the mean validation loss over all domains
    regressor: str = "auto"  # auto | lightgbm | linear
    seed: int = 0
    # On several hosts, each trains its share of the small runs alone (run i on host
    # i mod hosts, on its own devices) instead of every run on all hosts in turn.
    spread_over_hosts: bool = True
    candidates: int = 100_000
    top: int = 100

    def small_run(self, ctx, i: int, weights: str, upstream: str, search: int | None = None):
        """The i-th small run, on the mixture in `weights`."""
        return ctx.stages.make(KIND, f"regmix/run_{i:03d}", self.gin_files,
                               [*self.bindings, f"MIXTURE_WEIGHTS = {weights!r}"], upstream, search)

    def stages(self, ctx):
        return [(KIND, self.small_run(ctx, 0, "uniform", ""), self.runs, self.spread_over_hosts)]

    def search(self, ctx, search):
        """The small runs (each skipped when done), the fit and the search; writes
        regmix/runs.json and regmix/domain_weights.json (in the search's folder, its
        random mixtures and runs seeded by it too)."""
        folder = os.path.join(ctx.workdir, search_folder(search), "regmix")
        seed = self.seed + (search or 0)
        domains, tokens = ctx.training_tokens
        natural = tokens / tokens.sum()
        mixtures = fit_lib.sample_mixtures(natural, self.runs, seed)
        target = list(self.target_domains) or list(domains)
        missing = sorted(set(target) - set(domains))
        if missing:
            raise config.ConfigError(f"RegMixConfig.target_domains: {missing} not among the corpus's domains {domains}")
        hosts_count, me = jax.process_count(), jax.process_index()
        spread = self.spread_over_hosts and hosts_count > 1
        small_runs = []
        for i, mixture in enumerate(mixtures):
            path = os.path.join(folder, "mixtures", f"run_{i:03d}.json")
            weights_lib.write_weights(path, domains, mixture)
            small_runs.append(self.small_run(ctx, i, path, file_hash(path), search))
        for i, stage in enumerate(small_runs):
            if not spread:
                stage.run()
            elif i % hosts_count == me:
                with hosts.alone():
                    stage.run()
        if spread:
            # Every host's share must be in the workdir. Waited for through the stages'
            # records rather than a device barrier: one host's share may take far longer
            # than another's (a collective would time out), and a record from an earlier
            # configuration does not count (its fingerprint differs).
            fingerprints = [stage.fingerprint() for stage in small_runs]
            while not all(stage.is_done(f) for stage, f in zip(small_runs, fingerprints)):
                time.sleep(2.0)
        runs, flops = [], 0.0
        for i, (stage, mixture) in enumerate(zip(small_runs, mixtures)):
            summary = stage.summary()
            flops += stage.flops(summary)
            lp = summary["eval"]["log_perplexity"]
            runs.append({"run": i, "mixture": dict(zip(domains, mixture.tolist())),
                         "target_loss": float(np.mean([lp[d] for d in target]))})
        losses = np.asarray([r["target_loss"] for r in runs])
        fit = fit_lib.fit(mixtures, losses, self.regressor)
        args, _ = ctx.main_run()
        cfg = args["config"]
        budget = float(cfg.train_steps * cfg.batch_size * cfg.sequence_length)
        upper = fit_lib.bounds(mixtures, tokens, budget, float(cfg.max_epochs))
        mixture = fit_lib.search(fit, natural, seed + 1, self.candidates, self.top, upper)
        weights_file = os.path.join(folder, "domain_weights.json")
        weights_lib.write_weights(weights_file, domains, mixture)
        corners = fit.predict(np.eye(len(domains)))
        record: dict[str, Any] = {
            "target_domains": target,
            "regressor": fit.regressor,
            "held_out_spearman": fit.held_out_spearman,
            "weights": dict(zip(domains, mixture.tolist())),
            "predicted_target_loss": float(fit.predict(mixture[None])[0]),
            "predicted_corner_loss": dict(zip(domains, corners.tolist())),
            "search_upper_bounds": dict(zip(domains, upper.tolist())),
            "runs": runs,
            "flops": flops,
        }
        write_json(os.path.join(folder, "runs.json"), record)
        print(f"RegMix: {len(runs)} runs, {fit.regressor} fit, held-out rank correlation "
              + ", ".join(f"{r} {v:.2f}" for r, v in fit.held_out_spearman.items())
              + "; mixture " + ", ".join(f"{d} {w:.3f}" for d, w in zip(domains, mixture)), flush=True)
        return Found(weights=weights_file, upstream=file_hash(weights_file), mixture=record["weights"], flops=flops,
                     record=record)

    def combine(self, ctx, found, domains):
        first = next(iter(found.values()))
        return {"regmix_search": first.record}

    def report(self, workdir, evaluation, found, domains):
        search = evaluation["regmix_search"]
        runs = search["runs"]
        target = ", ".join(search["target_domains"])
        fits = ", ".join(f"{r} {v:+.2f}" for r, v in search["held_out_spearman"].items())
        return [
            "## RegMix's search",
            "",
            f"{len(runs)} small runs on random mixtures; target: the mean validation log-perplexity over {target} "
            "(validation chooses; the verdicts above are on test where the corpus has it). "
            f"Leave-one-out rank correlation (Spearman) of each regressor's predictions with the held-out runs' "
            f"losses: {fits}; used: {search['regressor']}. Predicted target loss of the chosen mixture: "
            f"{search['predicted_target_loss']:.4f} (best small run: {min(r['target_loss'] for r in runs):.4f}). "
            "The search keeps each domain's weight within what the small runs tried and within the main "
            "run's epoch cap: "
            + ", ".join(f"{d} ≤ {u:.3f}" for d, u in search.get("search_upper_bounds", {}).items()) + ".",
            "",
            "| run | " + " | ".join(runs[0]["mixture"]) + " | target loss |",
            "|---:|" + "---:|" * (len(runs[0]["mixture"]) + 1),
            *[f"| {r['run']} | " + " | ".join(f"{w:.3f}" for w in r["mixture"].values()) + f" | {r['target_loss']:.4f} |"
              for r in runs],
            "",
        ]
