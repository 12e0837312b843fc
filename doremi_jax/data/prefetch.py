"""Host batches built ahead of the step that consumes them, in one background thread.

Every batch is still the sampler's pure function of (seed, step, rows, weights): the
thread changes when a batch is built, never what it holds.

- Fixed rates: the batches of steps t+1 .. t+depth are built while step t runs.
- Live rates (DoReMi's resample mode, Online Data Mixing): step t+1's rates are the
  train state after step t, known only when step t ends. The thread builds batch t+1
  with the last rates known (after step t-1) while step t runs; when step t's rates
  arrive, the rows whose domain they change are built again. A row's domain is the only
  part of it the rates decide (`MixtureSampler.domains`), so the batch equals the one
  built with the true rates, bit for bit. The rates move a little each step, so few rows
  are rebuilt: `rows_rebuilt` counts them.
"""

from __future__ import annotations

import concurrent.futures
from typing import Sequence

import numpy as np

from doremi_jax.data.sampler import MixtureSampler


class Prefetcher:
    def __init__(self, sampler: MixtureSampler, rows: Sequence[int], depth: int, last_step: int):
        """rows: this host's global rows; depth: batches built ahead (0: each batch when
        asked); last_step: no batch is built for this step or later."""
        self.sampler, self.rows = sampler, np.asarray(rows, np.int64)
        self.depth, self.last_step = int(depth), int(last_step)
        self.rows_built = 0
        self.rows_rebuilt = 0
        self._pending: dict[int, tuple[np.ndarray, concurrent.futures.Future]] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(1, "prefetch") if depth > 0 else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()

    def get(self, step: int, weights: np.ndarray) -> dict[str, np.ndarray]:
        """This host's rows of step `step`, sampled by `weights`; then the next `depth`
        steps are started with the same weights (the best guess of live rates)."""
        weights = np.asarray(weights, np.float64)
        guess, future = self._pending.pop(step, (None, None))
        if future is None:
            batch = self.sampler.batch(step, self.rows, weights)
        else:
            batch = future.result()
            if not np.array_equal(guess, weights):
                self._repair(batch, step, weights)
        self.rows_built += len(self.rows)
        if self._pool is not None:
            for ahead in range(step + 1, min(step + 1 + self.depth, self.last_step)):
                if ahead not in self._pending:
                    self._pending[ahead] = (weights, self._pool.submit(self.sampler.batch, ahead, self.rows, weights))
        return batch

    def _repair(self, batch: dict[str, np.ndarray], step: int, weights: np.ndarray) -> None:
        """Rebuild, in place, the rows whose domain under `weights` is not the one built."""
        domains = self.sampler.domains(step, self.rows, weights)
        changed = np.flatnonzero(domains != batch["domain_ids"][:, 0])
        if changed.size:
            fresh = self.sampler.batch(step, self.rows[changed], None, domains[changed])
            for name, value in fresh.items():
                batch[name][changed] = value
            self.rows_rebuilt += int(changed.size)
