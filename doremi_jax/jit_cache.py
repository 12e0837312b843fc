"""One jitted function per configuration, for the life of the process.

A pipeline trains many stages of one shape in one process: the reference and the main
seeds, RegMix's small runs, the repeated searches. `jax.jit` caches its traces and
executables on the function object, and every stage used to build new ones, so each
traced, lowered and compiled its steps again (about 8 of a tiny stage's 10 seconds).
A builder wrapped here returns the same jitted function for equal arguments, so later
stages reuse the first one's trace and executable.

Arguments are compared leaf by leaf after `jax.tree.flatten`: configs and methods
(frozen dataclasses) and meshes and shardings by value, functions (an optax
transformation's `init`/`update`) by identity. `state.make_optimizer` is memoized for
that reason: equal optimizer settings give the same transformation object.
"""

from __future__ import annotations

import collections
import functools
from typing import Callable, TypeVar

import jax

F = TypeVar("F", bound=Callable)

# Per builder, the most recently used; the oldest is dropped beyond it. A pipeline runs
# its stages of one shape one after another (at most two kinds of main model alternate:
# fixed mixtures and ODM), and each entry keeps its executables alive: the soak test's
# resumes (each another step budget, so another program: the schedule is compiled in)
# grew resident memory by about 55 MB a restart with the cache unbounded, 28 MB with four
# entries, and stay flat (2-3 MB, the allocator) with two.
MAX_ENTRIES = 2


def memoized(build: F) -> F:
    """`build`, called once per distinct argument tree; later calls return that result."""
    cache: collections.OrderedDict = collections.OrderedDict()

    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        leaves, treedef = jax.tree.flatten((args, kwargs))
        key = (treedef, tuple((type(leaf), leaf) for leaf in leaves))  # 1 and True differ
        try:
            cache.move_to_end(key)
            return cache[key]
        except KeyError:
            pass
        except TypeError:  # an unhashable leaf: build every time, as before
            return build(*args, **kwargs)
        result = cache[key] = build(*args, **kwargs)
        if len(cache) > MAX_ENTRIES:
            cache.popitem(last=False)
        return result

    return wrapper  # type: ignore[return-value]
