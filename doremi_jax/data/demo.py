"""The embedded demo corpus: built on first use, offline and deterministically.

Four domains with unequal natural proportions, in the folder layout of any user corpus:
- `code`: source files of the Python standard library (real code);
- `prose`: docstrings of the same modules (real English prose);
- `noise`: random printable characters (nothing to learn: DoReMi should down-weight it);
- `repetitive`: a few templated sentences (learned at once: little excess loss).
"""

from __future__ import annotations

import ast
import json
import logging
import os
import random
import string
import sysconfig

from doremi_jax.data.corpus import default_cache_dir

DOMAINS = ("code", "noise", "prose", "repetitive")
# Target sizes in bytes (train split); validation and test are a tenth of each.
SIZES = {"code": 1_600_000, "prose": 800_000, "noise": 300_000, "repetitive": 150_000}
VERSION = "v2"  # v2: a test split beside validation


def _stdlib_files() -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("test", "tests", "site-packages", "idlelib"))
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    return files


def _parse(source: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SystemError:
        # CPython 3.11 raised "AST constructor recursion depth mismatch" once here, in a
        # test worker that had run many tests before (its depth count is a process-wide
        # state); try once more. Skipping the file instead would change the demo corpus.
        return ast.parse(source)


def _code_and_prose():
    code, prose = [], []
    for path in _stdlib_files():
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
            tree = _parse(source)
        except (UnicodeDecodeError, SyntaxError, ValueError):
            continue
        if len(source) > 200:
            code.append(source[:20_000])
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200:
                    prose.append(doc)
    return code, prose


def _noise_docs(rng: random.Random, total: int) -> list[str]:
    alphabet = string.ascii_letters + string.digits + string.punctuation + " "
    docs, size = [], 0
    while size < total:
        n = rng.randint(300, 2000)
        docs.append("".join(rng.choice(alphabet) for _ in range(n)))
        size += n
    return docs


def _repetitive_docs(rng: random.Random, total: int) -> list[str]:
    names = ["alpha", "beta", "gamma", "delta"]
    docs, size = [], 0
    while size < total:
        lines = [
            f"The {rng.choice(names)} counter is now {i}." for i in range(rng.randint(10, 40))
        ]
        docs.append("\n".join(lines))
        size += len(docs[-1])
    return docs


def _take(docs: list[str], total: int) -> list[str]:
    out, size = [], 0
    for d in docs:
        if size >= total:
            break
        out.append(d)
        size += len(d)
    return out


def build_demo_corpus(root: str | None = None) -> str:
    """Write the demo corpus once (if absent) and return its DATA_DIR."""
    root = root or os.path.join(default_cache_dir(), f"demo_corpus_{VERSION}")
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    logging.info("building the demo corpus in %s", root)
    rng = random.Random(1234)
    code, prose = _code_and_prose()
    # Shuffle deterministically so each split mixes modules.
    rng.shuffle(code)
    rng.shuffle(prose)
    sources = {
        "code": code,
        "prose": prose,
        "noise": _noise_docs(rng, int(SIZES["noise"] * 1.2)),
        "repetitive": _repetitive_docs(rng, int(SIZES["repetitive"] * 1.2)),
    }
    for domain in DOMAINS:
        docs = _take(sources[domain], int(SIZES[domain] * 1.2))
        n_held = max(1, len(docs) // 12)
        splits = {"validation": docs[:n_held], "test": docs[n_held:2 * n_held], "train": docs[2 * n_held:]}
        folder = os.path.join(root, domain)
        os.makedirs(folder, exist_ok=True)
        for split, split_docs in splits.items():
            tmp = os.path.join(folder, f".{split}.jsonl.tmp{os.getpid()}")
            with open(tmp, "w", encoding="utf-8") as f:
                for d in split_docs:
                    f.write(json.dumps({"text": d}) + "\n")
            os.replace(tmp, os.path.join(folder, f"{split}.jsonl"))
    with open(done, "w") as f:
        f.write(VERSION + "\n")
    return root
