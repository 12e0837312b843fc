"""Per-domain log-perplexity on held-out data: nats per token and bits per byte."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import numpy as np

from doremi_jax import losses, sharding
from doremi_jax.jit_cache import memoized
from doremi_jax.data.sampler import eval_batches, eval_target_documents


@dataclasses.dataclass
class PerplexityResult:
    domains: list[str]
    nats_per_token: np.ndarray  # float64[k]
    bits_per_byte: np.ndarray  # float64[k]
    tokens: np.ndarray  # int64[k]
    # Per domain, the scored documents' loss sums (nats, float64[docs]) and token counts
    # (int64[docs]): the held-out sample a bootstrap over documents resamples.
    documents: list[tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)

    @property
    def scored(self) -> list[int]:
        """Indices of the domains with held-out tokens: the averages run over these (a
        domain with none has no log-perplexity, and a 0 would flatter the average)."""
        return [i for i, n in enumerate(self.tokens) if n > 0]

    @property
    def unscored(self) -> list[str]:
        return [d for i, d in enumerate(self.domains) if self.tokens[i] == 0]

    @property
    def average(self) -> float:
        """Unweighted mean over the scored domains (the paper's "average log-perplexity")."""
        return float(np.mean(self.nats_per_token[self.scored])) if self.scored else float("nan")

    @property
    def worst(self) -> tuple[str, float]:
        if not self.scored:
            return "", float("nan")
        i = max(self.scored, key=lambda j: self.nats_per_token[j])
        return self.domains[i], float(self.nats_per_token[i])

    def scalars(self) -> dict[str, float]:
        out = {f"log_perplexity/{self.domains[i]}": float(self.nats_per_token[i]) for i in self.scored}
        out.update({f"bits_per_byte/{self.domains[i]}": float(self.bits_per_byte[i]) for i in self.scored})
        out["log_perplexity/average"] = self.average
        out["log_perplexity/worst"] = self.worst[1]
        return out

    def to_json(self) -> dict:
        """Per-domain figures of the scored domains; `unscored` names the others."""
        scored = [self.domains[i] for i in self.scored]
        out = {
            "log_perplexity": {d: float(self.nats_per_token[self.domains.index(d)]) for d in scored},
            "bits_per_byte": {d: float(self.bits_per_byte[self.domains.index(d)]) for d in scored},
            "tokens": dict(zip(self.domains, self.tokens.tolist())),
            "average": self.average,
            "worst": {"domain": self.worst[0], "log_perplexity": self.worst[1]},
        }
        if self.unscored:
            out["unscored"] = self.unscored
        if self.documents:
            out["documents"] = {d: int(len(self.documents[i][1])) for i, d in enumerate(self.domains)}
        return out

    def documents_json(self) -> dict:
        """{domain: {"loss": [...], "tokens": [...]}}: each scored document's loss sum
        (nats) and token count, in stream order (`verdicts` bootstraps over them)."""
        return {d: {"loss": [round(float(x), 6) for x in loss], "tokens": tokens.tolist()}
                for d, (loss, tokens) in zip(self.domains, self.documents)}


_IN_FLIGHT = 8


@memoized
def jit_eval_step(model, mesh, param_shardings, num_domains: int):
    """(params, batch) -> per-domain (loss sums, token counts), replicated: the step the
    evaluator runs and the ahead-of-time compile (`doremi_jax.aot`) lowers."""
    return jax.jit(
        functools.partial(losses.eval_step, model=model, num_domains=num_domains),
        in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
    )


class Evaluator:
    """Compiled once per run; `evaluator(params)` scores the same held-out tokens each time."""

    def __init__(
        self,
        model,
        mesh,
        rules,
        param_shardings,
        streams,
        domains: Sequence[str],
        sequence_length: int,
        batch_size: int,
        max_tokens: int,
    ):
        self.mesh, self.rules = mesh, list(rules)
        self.domains = list(domains)
        rows = sharding.local_batch_rows(mesh, batch_size)
        # The document of every target (numbered from 0 in each domain's stream), for
        # the per-document sums: per batch its domain, which targets are scored, and
        # their documents (batches hold one domain each, rows in stream order).
        documents = [eval_target_documents(s, sequence_length, max_tokens) for s in streams]
        self.num_documents = [int(d.max()) + 1 if d.size else 0 for d in documents]
        next_row = [0] * len(streams)
        self.batches, self.scored_targets = [], []
        for b in eval_batches(streams, sequence_length, batch_size, max_tokens):
            self.batches.append(sharding.make_global_batch(mesh, {k: v[rows] for k, v in b.items()}, batch_size))
            d = int(b["domain_ids"][0, 0])
            ids = documents[d][next_row[d]:next_row[d] + batch_size]
            next_row[d] += batch_size
            scored = b["decoder_loss_weights"] > 0  # the padding rows past `ids` are never scored
            self.scored_targets.append((d, scored, ids[scored[: len(ids)]]))
        # Bytes per evaluated token, from the whole held-out stream (tokens are bytes
        # plus one EOS per document with the byte vocabulary).
        self.bytes_per_token = np.asarray(
            [s.num_bytes / max(s.num_tokens, 1) for s in streams], np.float64
        )
        self._step = jit_eval_step(model, mesh, param_shardings, len(self.domains))

    def __call__(self, params) -> PerplexityResult:
        k = len(self.domains)
        sums, counts = np.zeros(k), np.zeros(k)
        doc_loss = [np.zeros(n) for n in self.num_documents]
        doc_tokens = [np.zeros(n, np.int64) for n in self.num_documents]
        with sharding.activate(self.mesh, self.rules):
            # A bounded number of batches in flight: with many virtual CPU devices on few
            # cores, a long queue of collective programs has deadlocked XLA:CPU's
            # rendezvous (128 queued eval batches on 8 devices and 2 cores, every time).
            for start in range(0, len(self.batches), _IN_FLIGHT):
                outs = [self._step(params, b) for b in self.batches[start:start + _IN_FLIGHT]]
                for (s, c, token_loss), (d, scored, ids) in zip(jax.device_get(outs),
                                                                self.scored_targets[start:start + _IN_FLIGHT]):
                    sums += s
                    counts += c
                    n = self.num_documents[d]
                    doc_loss[d] += np.bincount(ids, weights=np.asarray(token_loss, np.float64)[scored], minlength=n)
                    doc_tokens[d] += np.bincount(ids, minlength=n)
        nats = sums / np.maximum(counts, 1)
        bpb = nats / math.log(2) / self.bytes_per_token
        documents = [(loss[tokens > 0], tokens[tokens > 0]) for loss, tokens in zip(doc_loss, doc_tokens)]
        return PerplexityResult(self.domains, nats, bpb, counts.astype(np.int64), documents)
