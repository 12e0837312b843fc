"""Per-domain log-perplexity on held-out data: nats per token and bits per byte."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import numpy as np

from doremi_jax import losses, sharding
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
        self.batches, self.batches_weights = [], []
        for b in eval_batches(streams, sequence_length, batch_size, max_tokens):
            self.batches.append(sharding.make_global_batch(mesh, {k: v[rows] for k, v in b.items()}, batch_size))
            self.batches_weights.append(b["decoder_loss_weights"])
        # Bytes per evaluated token, from the whole held-out stream (tokens are bytes
        # plus one EOS per document with the byte vocabulary).
        self.bytes_per_token = np.asarray(
            [s.num_bytes / max(s.num_tokens, 1) for s in streams], np.float64
        )
        # The document of every target, batch by batch (rows as eval_batches lays them
        # out: one domain per batch, padded with rows of -1).
        self.target_documents, self.batch_domains = [], []
        for d, stream in enumerate(streams):
            docs = eval_target_documents(stream, sequence_length, max_tokens)
            for start in range(0, len(docs), batch_size):
                chunk = docs[start:start + batch_size]
                pad = np.full((batch_size - len(chunk), sequence_length), -1, np.int32)
                self.target_documents.append(np.concatenate([chunk, pad]))
                self.batch_domains.append(d)
        assert len(self.target_documents) == len(self.batches)
        self._step = jit_eval_step(model, mesh, param_shardings, len(self.domains))

    def __call__(self, params) -> PerplexityResult:
        k = len(self.domains)
        sums, counts = np.zeros(k), np.zeros(k)
        doc_loss = [{} for _ in range(k)]  # domain -> {document: [loss sum, tokens]}
        with sharding.activate(self.mesh, self.rules):
            # A bounded number of batches in flight: with many virtual CPU devices on few
            # cores, a long queue of collective programs has deadlocked XLA:CPU's
            # rendezvous (128 queued eval batches on 8 devices and 2 cores, every time).
            for start in range(0, len(self.batches), _IN_FLIGHT):
                outs = [self._step(params, b) for b in self.batches[start:start + _IN_FLIGHT]]
                for i, (s, c, token_loss) in enumerate(jax.device_get(outs), start):
                    sums += s
                    counts += c
                    self._add_documents(doc_loss[self.batch_domains[i]], self.target_documents[i],
                                        np.asarray(token_loss), np.asarray(self.batches_weights[i]))
        nats = sums / np.maximum(counts, 1)
        bpb = nats / math.log(2) / self.bytes_per_token
        documents = []
        for per_doc in doc_loss:
            keys = sorted(per_doc)
            documents.append((np.asarray([per_doc[x][0] for x in keys], np.float64),
                              np.asarray([per_doc[x][1] for x in keys], np.int64)))
        return PerplexityResult(self.domains, nats, bpb, counts.astype(np.int64), documents)

    @staticmethod
    def _add_documents(per_doc: dict, doc_ids: np.ndarray, token_loss: np.ndarray, weights: np.ndarray) -> None:
        scored = (weights > 0) & (doc_ids >= 0)
        ids = doc_ids[scored]
        if not ids.size:
            return
        unique, inverse = np.unique(ids, return_inverse=True)
        loss = np.bincount(inverse, weights=token_loss[scored].astype(np.float64))
        count = np.bincount(inverse)
        for doc, l, n in zip(unique.tolist(), loss, count):
            entry = per_doc.setdefault(doc, [0.0, 0])
            entry[0] += float(l)
            entry[1] += int(n)
