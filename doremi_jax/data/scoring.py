"""Answer normalization and exact match, as the SQuAD/TriviaQA evaluation scripts define them."""

from __future__ import annotations

import dataclasses
import re
import string
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt to complete and the answers that count as right."""

    prompt: str
    answers: tuple[str, ...]
    group: str  # the domain (cloze) or the task

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)
_WORD = re.compile(r"\w+")

# The reply a one-shot prompt teaches for SQuAD v2's unanswerable questions; the
# official script scores those by an empty prediction, so both count.
UNANSWERABLE = "unanswerable"


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def first_line(generated: str) -> str:
    """The answer part of a generation: up to the first newline."""
    return generated.split("\n", 1)[0].strip()


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    """True when the normalized prediction equals any normalized gold answer. No gold
    answers (SQuAD v2's unanswerable questions): an empty or "unanswerable" prediction."""
    pred = normalize_answer(first_line(prediction))
    if not answers or all(not a.strip() for a in answers):
        return pred in ("", UNANSWERABLE)
    return any(pred == normalize_answer(a) for a in answers)


def first_word_match(prediction: str, answers: Sequence[str]) -> bool:
    """LAMBADA-style: the first word generated equals the target word."""
    match = _WORD.search(first_line(prediction))
    word = match.group(0) if match else ""
    return any(word == a.strip() for a in answers)


METRICS = {"exact_match": exact_match, "first_word": first_word_match}
