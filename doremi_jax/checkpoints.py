"""Orbax checkpoints of the train state: keep N, asynchronous, atomic.

Orbax writes each step into a temporary folder and renames it when complete, so a
checkpoint cut short by a kill is never restored. All hosts take part in a save
(each writes its own shards).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from doremi_jax import fileio, hosts
from doremi_jax.faults import fault_point


class CheckpointError(RuntimeError):
    pass


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint that holds another run's state."""


# A read that fails with an error that may pass is tried this many more times, waiting
# BACKOFF_S, then twice that, and so on (1 + 2 + 4 + 8 s).
RETRIES = 4
BACKOFF_S = 1.0
# Errors that say the storage did not answer, not that the checkpoint is bad.
_TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                     errno.ECONNABORTED, errno.ENETUNREACH, errno.EHOSTUNREACH}
_TRANSIENT_STATUS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED")


class Checkpointer:
    """Orbax's CheckpointManager. A run alone on its host (`hosts.alone`, RegMix's small
    runs on several hosts) keeps no checkpoint: orbax's multi-process save of a state held
    by a process other than 0 alone did not restore (its OCDBT merge and its primary-host
    writes assume process 0), and those runs are short; a killed one trains again from
    step 0, a finished one is skipped by the pipeline."""

    def __init__(self, directory: str, max_to_keep: int = 3, asynchronous: bool = True):
        self.directory = fileio.absolute(directory)
        self._manager = None
        if hosts.is_alone():
            return
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=asynchronous,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_handlers=ocp.PyTreeCheckpointHandler()
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step() if self._manager else None

    def save(self, step: int, state: Any, force: bool = False) -> bool:
        if self._manager is None:
            return False
        saved = self._manager.save(step, args=ocp.args.PyTreeSave(state), force=force)
        fault_point("checkpoint_save")  # while an asynchronous save is still writing
        return saved

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """Restore into the shapes, dtypes and shardings of `abstract_state`."""
        step = self.latest_step() if step is None else step
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
        return self._manager.restore(
            step, args=ocp.args.PyTreeRestore(item=abstract_state, restore_args=restore_args)
        )

    def restore_latest_readable(self, abstract_state: Any) -> tuple[Any, int | None]:
        """The latest checkpoint that restores, and its step (None: no checkpoint).

        Three failures are told apart, and only one moves anything:
        - the checkpoint holds another state (a changed optimizer, clipping, model or
          method: its saved tree or shapes differ): `CheckpointMismatch`, nothing moved;
        - a read error that may pass (EIO, a timeout, a storage service unavailable):
          retried with backoff, then `CheckpointError`, nothing moved;
        - a damaged checkpoint (truncated, unparsable, failed checksum): the previous kept
          one is tried, and the damaged ones after it are moved aside to
          `<checkpoints>_unreadable/<step>` (kept for inspection, out of orbax's sight,
          so the run can save those steps again) only once an earlier one has restored.
          When none restores the run stops: it never starts again from step 0 over
          checkpoints it could not read.
        """
        damaged: list[tuple[int, str]] = []
        for step in sorted(self._manager.all_steps() if self._manager else (), reverse=True):
            try:
                restored = self._restore_retrying(abstract_state, step)
            except CheckpointError:  # a mismatch, or a read that kept failing
                raise
            except Exception as e:  # orbax and tensorstore raise many types for a damaged checkpoint
                damaged.append((step, _first_line(e)))
                continue
            for bad, why in damaged:
                self._set_aside(bad, why, step)
            return restored, step
        if damaged:
            steps = ", ".join(str(s) for s, _ in damaged)
            raise CheckpointError(
                f"no checkpoint in {self.directory!r} restores (step {steps}: {damaged[0][1]}); nothing was "
                "moved: inspect or remove them, or start over with --gin.train.overwrite=True"
            )
        return abstract_state, None

    def _check_fits(self, abstract_state: Any, step: int) -> None:
        """Compare the saved tree (names and shapes, from its metadata) with this run's."""
        saved = self._manager.item_metadata(step)
        saved = getattr(saved, "tree", saved)
        if saved is None:  # no metadata saved with it: the restore itself will tell
            return
        have = {_path_names(p): tuple(getattr(leaf, "shape", ())) for p, leaf in
                jax.tree_util.tree_flatten_with_path(saved)[0]}
        want = {_path_names(p): tuple(leaf.shape) for p, leaf in
                jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
        if have == want:
            return
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        reshaped = sorted(p for p in set(want) & set(have) if want[p] != have[p])
        if reshaped:
            p = reshaped[0]
            what = f"{'.'.join(p)} has shape {have[p]}, this run's {want[p]}"
        elif missing:
            what = f"it lacks {'.'.join(missing[0])} ({len(missing)} arrays this run has)"
        else:
            what = f"it holds {'.'.join(extra[0])} ({len(extra)} arrays this run lacks)"
        raise CheckpointMismatch(
            f"checkpoint {self.directory!r} step {step} holds another run's state: {what} (a changed "
            "optimizer, gradient clipping, model or mixture method?); nothing was moved: resume with the "
            "settings that saved it, or start over with --gin.train.overwrite=True"
        )

    def _restore_retrying(self, abstract_state: Any, step: int) -> Any:
        for attempt in range(RETRIES + 1):
            try:
                fault_point("checkpoint_read")
                self._check_fits(abstract_state, step)
                return self.restore(abstract_state, step)
            except CheckpointMismatch:
                raise
            except Exception as e:
                if not _transient(e):
                    raise
                if attempt == RETRIES:
                    raise CheckpointError(
                        f"checkpoint {self.directory!r} step {step} could not be read after {RETRIES + 1} "
                        f"tries ({_first_line(e)}); nothing was moved: run again when the storage answers"
                    ) from None
                wait = BACKOFF_S * 2**attempt
                logging.warning("reading checkpoint step %d failed (%s); retrying in %.1fs", step, e, wait)
                time.sleep(wait)

    def _set_aside(self, step: int, why: str, restored_step: int) -> None:
        aside = os.path.join(self.directory + "_unreadable", str(step))
        message = (f"checkpoint {self.directory!r} step {step} is damaged ({why}); moved to {aside!r}, "
                   f"resuming from step {restored_step}")
        logging.warning(message)
        print(f"warning: {message}", flush=True)
        if hosts.primary():
            fileio.makedirs(os.path.dirname(aside))
            fileio.rename(os.path.join(self.directory, str(step)), aside)
        self._manager.reload()

    def wait(self) -> None:
        if self._manager:
            self._manager.wait_until_finished()

    def close(self) -> None:
        if self._manager:
            self._manager.wait_until_finished()
            self._manager.close()


def saved_steps(directory: str) -> list[int]:
    """The steps of the complete checkpoints under `directory`, oldest first."""
    if not fileio.isdir(directory):
        return []
    options = ocp.CheckpointManagerOptions(create=False, read_only=True)
    manager = ocp.CheckpointManager(fileio.absolute(directory), options=options)
    try:
        return sorted(int(s) for s in manager.all_steps())
    finally:
        manager.close()


def restore_params(directory: str, abstract_params: Any, step: int | None = None) -> Any:
    """The `params` of the checkpoint at `step` (default: the latest) under `directory`
    (e.g. the reference model).

    A clear error when there is no checkpoint or its shapes differ from `abstract_params`.
    """
    if not fileio.isdir(directory):
        raise CheckpointError(f"no checkpoint folder {directory!r}")
    options = ocp.CheckpointManagerOptions(create=False, read_only=True)
    manager = ocp.CheckpointManager(
        fileio.absolute(directory), options=options, item_handlers=ocp.PyTreeCheckpointHandler()
    )
    step = manager.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no complete checkpoint in {directory!r}")
    try:
        saved = manager.item_metadata(step)
    except Exception as e:  # orbax raises many types for a damaged checkpoint
        raise CheckpointError(f"checkpoint {directory!r} step {step} is unreadable ({_first_line(e)})") from None
    saved = getattr(saved, "tree", saved)
    saved_params = saved.get("params") if isinstance(saved, dict) else None
    want = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    have = dict(jax.tree_util.tree_flatten_with_path(saved_params)[0]) if saved_params is not None else {}
    for path, leaf in want:
        got = have.get(path)
        if got is None or tuple(got.shape) != tuple(leaf.shape):
            name = jax.tree_util.keystr(path)
            raise CheckpointError(
                f"checkpoint {directory!r} step {step}: parameter {name} has shape "
                f"{None if got is None else tuple(got.shape)}, the model expects {tuple(leaf.shape)} "
                "(different model size or vocabulary?)"
            )
    item = {"params": abstract_params}
    restore_args = ocp.checkpoint_utils.construct_restore_args(item)
    try:
        restored = manager.restore(
            step, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
        )
    except Exception as e:
        raise CheckpointError(f"checkpoint {directory!r} step {step} is unreadable ({_first_line(e)})") from None
    finally:
        manager.close()
    return restored["params"]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _path_names(path) -> tuple[str, ...]:
    """A tree path as names, alike for a dataclass's fields and orbax's saved dicts."""
    names = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                names.append(str(getattr(key, attribute)))
                break
    return tuple(names)


def _transient(e: BaseException) -> bool:
    """A read error that may pass (in `e` or what it wraps), as opposed to a damaged file."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (TimeoutError, ConnectionError)):
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return True
        if any(status in str(e) for status in _TRANSIENT_STATUS):
            return True
        e = e.__cause__ or e.__context__
    return False
