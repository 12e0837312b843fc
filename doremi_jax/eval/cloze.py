"""A LAMBADA-style cloze task from any corpus's held-out documents, with no download.

Each example is the start of a held-out document cut just before a word of at least
`min_word_chars` letters; the model must generate that word. Documents that do not
decode to clean text (binary pre-tokenized data) give no examples, so such a domain is
left out of the task. The demo's noise domain is printable text and stays in: a
control whose accuracy should stay near zero.
"""

from __future__ import annotations

import re
import zlib
from typing import Sequence

import numpy as np

from doremi_jax.data.corpus import TokenStream
from doremi_jax.data.scoring import Example


def cloze_examples(
    streams: Sequence[TokenStream],
    domains: Sequence[str],
    vocab,
    per_domain: int,
    seed: int = 0,
    min_context_chars: int = 64,
    min_word_chars: int = 3,
) -> list[Example]:
    """Up to `per_domain` examples from each domain's held-out stream, the same for a
    given corpus and seed (picked by a generator seeded with both and the domain name)."""
    word = re.compile(rf"(?<![A-Za-z0-9_])[A-Za-z]{{{min_word_chars},}}(?![A-Za-z0-9_])")
    examples = []
    for domain, stream in zip(domains, streams):
        candidates: list[tuple[str, int]] = []
        for document in stream.documents():
            text = vocab.decode(document)
            if not _clean_text(text):
                continue
            candidates.extend((text, m.start()) for m in word.finditer(text) if m.start() >= min_context_chars)
        if not candidates:
            continue
        rng = np.random.default_rng([seed, zlib.crc32(domain.encode())])
        picks = rng.choice(len(candidates), size=min(per_domain, len(candidates)), replace=False)
        for i in sorted(picks):
            text, cut = candidates[i]
            target = word.match(text, cut).group(0)
            examples.append(Example(text[:cut].rstrip(" "), (target,), domain))
    return examples


def _clean_text(text: str) -> bool:
    """Decoded without replacement characters and printable apart from ordinary
    whitespace (code and prose have newlines and tabs)."""
    return "\ufffd" not in text and all(ch.isprintable() or ch in "\n\t\r" for ch in text)
