"""Mixture batches as a pure function of (seed, step, row, domain weights).

Row r of the global batch at step t draws its own generator from (seed, t, r), picks a
domain by the step's weights and reads a window of that domain's token stream. So:
- the batch sequence is deterministic and resumes exactly from the step alone (the
  weights of a live mixture are part of the checkpointed train state);
- every host builds only its own rows, and the global batch is the same for any
  number of hosts;
- the weights can change every step (DoReMi's `resample` mode) and take effect at once.

Packing (default) reads a random window of the concatenated documents, so a row holds
several documents told apart by segment ids, positions restart at each document, and
no target crosses a document boundary. With packing off a row is one document from its
start, padded. Every token carries the domain id of its row.
"""

from __future__ import annotations

import zlib
from typing import Iterator, Sequence

import numpy as np

from doremi_jax.data.corpus import TokenStream
from doremi_jax.errors import InputError

FEATURES = (
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_positions",
    "decoder_segment_ids",
    "decoder_loss_weights",
    "domain_ids",
)


def stream_seed(seed: int, stream: str = "") -> tuple[int, ...]:
    """The seed words of one run's data stream: the run's SEED and, for a named stream
    (a pipeline stage: `reference`, `proxy`, `main`), a hash of its name. Stages that
    share SEED then read unrelated windows, so the proxy is not scored on the windows the
    reference trained on at the same step (its excess loss would be in-sample there)."""
    return (int(seed),) if not stream else (int(seed), zlib.crc32(stream.encode()))


class MixtureSampler:
    def __init__(
        self,
        streams: Sequence[TokenStream],
        sequence_length: int,
        seed: int | Sequence[int] = 0,
        packing: bool = True,
        stratified_batch: int = 0,
    ):
        """stratified_batch > 0 (the global batch size): each step's rows are split between
        the domains in proportion to the weights (`stratified_domains`); 0: a domain is
        drawn for each row independently."""
        self.streams = list(streams)
        self.stratified_batch = int(stratified_batch)
        self.sequence_length = sequence_length
        self.seed = (int(seed),) if isinstance(seed, (int, np.integer)) else tuple(int(s) for s in seed)
        self.packing = packing
        for d, s in enumerate(self.streams):
            if s.num_tokens < 2:
                raise InputError(f"domain #{d} has {s.num_tokens} tokens: too few to sample")

    @property
    def num_domains(self) -> int:
        return len(self.streams)

    def _row(self, rng: np.random.Generator, domain: int):
        stream, length = self.streams[domain], self.sequence_length
        if self.packing:
            span = min(length + 1, stream.num_tokens)
            start = int(rng.integers(0, stream.num_tokens - span + 1))
        else:
            doc = int(rng.integers(0, len(stream.doc_starts)))
            start = int(stream.doc_starts[doc])
            end = (
                int(stream.doc_starts[doc + 1])
                if doc + 1 < len(stream.doc_starts)
                else stream.num_tokens
            )
            span = min(length + 1, end - start)
        return window(stream, start, span, length)

    def _rng(self, step: int, row: int) -> np.random.Generator:
        return np.random.default_rng([*self.seed, int(step), int(row)])

    def domains(self, step: int, rows: Sequence[int], weights: np.ndarray) -> np.ndarray:
        """The domain of each of the given global rows of step `step`, int[len(rows)]: the
        only part of a row the weights decide (its window is drawn after, from the row's
        own generator, whatever the domain)."""
        weights = np.asarray(weights, np.float64)
        if self.stratified_batch:
            strata = stratified_domains(self.seed, step, weights, self.stratified_batch)
            return np.asarray([strata[r] for r in rows], np.int64)
        cdf = np.cumsum(weights / weights.sum())
        draws = np.asarray([self._rng(step, r).random() for r in rows])
        return np.minimum(np.searchsorted(cdf, draws, side="right"), len(cdf) - 1)

    def batch(
        self, step: int, rows: Sequence[int], weights: np.ndarray | None, domains: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """The given global rows of step `step`'s batch, sampled by `weights` (float[k]),
        or with the rows' `domains` given (what `domains(step, rows, weights)` returns)."""
        if domains is None:
            domains = self.domains(step, rows, weights)
        out = {name: [] for name in FEATURES}
        for r, domain in zip(rows, domains):
            rng = self._rng(step, r)
            if not self.stratified_batch:
                rng.random()  # the domain's draw: the window comes from the same generator after it
            for name, value in self._row(rng, int(domain)).items():
                out[name].append(value)
            out["domain_ids"].append(np.full(self.sequence_length, domain, np.int32))
        return {name: np.stack(v) for name, v in out.items()}


def stratified_domains(seed: Sequence[int], step: int, weights: np.ndarray, batch_size: int) -> np.ndarray:
    """The domain of every row of step `step`'s global batch, int[batch_size]: domain i
    gets floor(B·w_i) rows plus one for the largest remainders (ties to the lower
    index), in an order shuffled by (seed, step). Every host computes the same array."""
    w = np.asarray(weights, np.float64)
    quota = batch_size * w / w.sum()
    counts = np.floor(quota).astype(np.int64)
    short = batch_size - int(counts.sum())
    counts[np.argsort(-(quota - counts), kind="stable")[:short]] += 1
    domains = np.repeat(np.arange(len(w)), counts)
    np.random.default_rng([*seed, int(step), 2**31 - 1]).shuffle(domains)  # a stream no row uses
    return domains


def window(stream: TokenStream, start: int, span: int, length: int) -> dict[str, np.ndarray]:
    """Inputs/targets of the stream's tokens start..start+span-1, padded to `length`
    (reads only those tokens: the stream may be memory-mapped)."""
    chunk = np.asarray(stream.tokens[start : start + span])
    docs = stream.doc_numbers(start, start + span)
    n = span - 1
    inputs = np.zeros(length, np.int32)
    targets = np.zeros(length, np.int32)
    segments = np.zeros(length, np.int32)
    positions = np.zeros(length, np.int32)
    inputs[:n], targets[:n] = chunk[:-1], chunk[1:]
    # Segments numbered from 1 within the row; a target in another document than its
    # input (the first token after an EOS) is not predicted.
    seg = (docs - docs[0] + 1).astype(np.int32)
    segments[:n] = seg[:-1]
    same_doc = seg[1:] == seg[:-1]
    first = np.r_[0, np.flatnonzero(np.diff(seg[:-1])) + 1]
    pos = np.arange(n) - np.repeat(first, np.diff(np.r_[first, n]))
    positions[:n] = pos
    loss = np.zeros(length, np.float32)
    loss[:n] = same_doc
    return {
        "decoder_input_tokens": inputs,
        "decoder_target_tokens": targets,
        "decoder_positions": positions,
        "decoder_segment_ids": segments,
        "decoder_loss_weights": loss,
    }


def eval_row_starts(stream: TokenStream, sequence_length: int, max_tokens: int) -> range:
    """Stream offsets of a domain's evaluation rows (consecutive windows)."""
    limit = min(stream.num_tokens, max_tokens + 1)
    return range(0, limit - 1, sequence_length)


def eval_target_documents(stream: TokenStream, sequence_length: int, max_tokens: int) -> np.ndarray:
    """Document number of every target of a domain's evaluation rows, int32[rows,
    length] (-1 past the evaluated tokens): what a bootstrap over documents groups by."""
    limit = min(stream.num_tokens, max_tokens + 1)
    starts = eval_row_starts(stream, sequence_length, max_tokens)
    out = np.full((len(starts), sequence_length), -1, np.int32)
    for r, start in enumerate(starts):
        stop = min(start + 1 + sequence_length, limit)
        out[r, : stop - start - 1] = stream.doc_numbers(start + 1, stop)
    return out


def eval_batches(
    streams: Sequence[TokenStream], sequence_length: int, batch_size: int, max_tokens: int
) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive windows over each domain's held-out stream (at most `max_tokens` each).

    Deterministic, no sampling: every run evaluates on the same tokens. Batches hold
    one domain at a time and are padded with all-zero rows (loss weight 0).
    """
    for domain, stream in enumerate(streams):
        limit = min(stream.num_tokens, max_tokens + 1)
        rows = []
        for start in eval_row_starts(stream, sequence_length, max_tokens):
            span = min(sequence_length + 1, limit - start)
            row = window(stream, start, span, sequence_length)
            row["domain_ids"] = np.full(sequence_length, domain, np.int32)
            rows.append(row)
            if len(rows) == batch_size:
                yield {k: np.stack([r[k] for r in rows]) for k in FEATURES}
                rows = []
        if rows:
            pad = {k: np.zeros_like(v) for k, v in rows[0].items()}
            pad["domain_ids"][:] = domain
            rows += [pad] * (batch_size - len(rows))
            yield {k: np.stack([r[k] for r in rows]) for k in FEATURES}
