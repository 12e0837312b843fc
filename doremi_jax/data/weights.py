"""Domain-weight files: flat JSON `{domain: weight}`, as the reference PyTorch DoReMi writes."""

from __future__ import annotations

import json
import math
import os
from typing import Mapping, Sequence

import numpy as np


def validate_weights(weights: Mapping[str, float], domains: Sequence[str], where: str) -> np.ndarray:
    """Weights in `domains` order, normalized to sum 1; a one-line error names what is wrong."""
    unknown = sorted(set(weights) - set(domains))
    if unknown:
        raise ValueError(f"{where}: unknown domain(s) {unknown}; the corpus has {list(domains)}")
    missing = [d for d in domains if d not in weights]
    if missing:
        raise ValueError(f"{where}: no weight for domain(s) {missing}")
    values = []
    for d in domains:
        w = weights[d]
        if not isinstance(w, (int, float)) or isinstance(w, bool):
            raise ValueError(f"{where}: weight of {d!r} is {w!r}, not a number")
        if math.isnan(w) or math.isinf(w):
            raise ValueError(f"{where}: weight of {d!r} is {w}")
        if w < 0:
            raise ValueError(f"{where}: weight of {d!r} is negative ({w})")
        values.append(float(w))
    total = sum(values)
    if total <= 0:
        raise ValueError(f"{where}: all weights are zero")
    return np.asarray(values, np.float64) / total


def read_weights(path: str, domains: Sequence[str]) -> np.ndarray:
    """Read a weights file and return float64[len(domains)] on the simplex."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file {path!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"weights file {path!r} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"weights file {path!r}: expected a JSON object {{domain: weight}}")
    return validate_weights(raw, domains, f"weights file {path!r}")


def write_weights(path: str, domains: Sequence[str], weights) -> None:
    """Write `{domain: weight}` atomically (a reader never sees half a file)."""
    data = {d: float(w) for d, w in zip(domains, np.asarray(weights, np.float64))}
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
