"""Domain-weight files: flat JSON `{domain: weight}`.

Files interchange with the reference PyTorch DoReMi: its configs nest the weights as
`{"train_domain_weights": {...}, "eval_domain_weights": {...}}` (the train weights are
read) and name Pile domains by `pile_set_name` ("PubMed Central"), where our folders
replace spaces and slashes by underscores ("PubMed_Central"); both are accepted.
"""

from __future__ import annotations

import json
import math
import re
from typing import Mapping, Sequence

import numpy as np

from doremi_jax import fileio
from doremi_jax.errors import InputError


def folder_name(domain: str) -> str:
    """A domain name as a folder name: runs of spaces and slashes become one underscore."""
    return re.sub(r"[\s/\\]+", "_", domain.strip())


def _match_names(weights: Mapping[str, float], domains: Sequence[str]) -> dict[str, float]:
    """Rename keys that name a domain only up to `folder_name` (e.g. "Wikipedia (en)")."""
    by_folder = {folder_name(d): d for d in domains}
    out = {}
    for key, w in weights.items():
        name = key if key in domains else by_folder.get(folder_name(key), key)
        if name in out:
            raise InputError(f"domain {name!r} is given twice (as {key!r})")
        out[name] = w
    return out


def validate_weights(weights: Mapping[str, float], domains: Sequence[str], where: str) -> np.ndarray:
    """Weights in `domains` order, normalized to sum 1; a one-line error names what is wrong."""
    unknown = sorted(set(weights) - set(domains))
    if unknown:
        raise InputError(f"{where}: unknown domain(s) {unknown}; the corpus has {list(domains)}")
    missing = [d for d in domains if d not in weights]
    if missing:
        raise InputError(f"{where}: no weight for domain(s) {missing}")
    values = []
    for d in domains:
        w = weights[d]
        if not isinstance(w, (int, float)) or isinstance(w, bool):
            raise InputError(f"{where}: weight of {d!r} is {w!r}, not a number")
        if math.isnan(w) or math.isinf(w):
            raise InputError(f"{where}: weight of {d!r} is {w}")
        if w < 0:
            raise InputError(f"{where}: weight of {d!r} is negative ({w})")
        values.append(float(w))
    total = sum(values)
    if total <= 0:
        raise InputError(f"{where}: all weights are zero")
    return np.asarray(values, np.float64) / total


def read_weights(path: str, domains: Sequence[str]) -> np.ndarray:
    """Read a weights file and return float64[len(domains)] on the simplex."""
    try:
        raw = json.loads(fileio.read_text(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file {path!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise InputError(f"weights file {path!r} is not valid JSON: {e}") from None
    if isinstance(raw, dict) and isinstance(raw.get("train_domain_weights"), dict):
        raw = raw["train_domain_weights"]  # the reference implementation's config format
    if not isinstance(raw, dict):
        raise InputError(f"weights file {path!r}: expected a JSON object {{domain: weight}}")
    try:
        raw = _match_names(raw, domains)
    except ValueError as e:
        raise InputError(f"weights file {path!r}: {e}") from None
    return validate_weights(raw, domains, f"weights file {path!r}")


def write_weights(path: str, domains: Sequence[str], weights) -> None:
    """Write `{domain: weight}` atomically (a reader never sees half a file)."""
    data = {d: float(w) for d, w in zip(domains, np.asarray(weights, np.float64))}
    fileio.write_text_atomic(path, json.dumps(data, indent=2) + "\n")
