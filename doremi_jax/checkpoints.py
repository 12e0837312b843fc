"""Orbax checkpoints of the train state: keep N, asynchronous, atomic.

Orbax writes each step into a temporary folder and renames it when complete, so a
checkpoint cut short by a kill is never restored. All hosts take part in a save
(each writes its own shards).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from doremi_jax import fileio, hosts


class CheckpointError(RuntimeError):
    pass


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
        return self._manager.save(step, args=ocp.args.PyTreeSave(state), force=force)

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """Restore into the shapes, dtypes and shardings of `abstract_state`."""
        step = self.latest_step() if step is None else step
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
        return self._manager.restore(
            step, args=ocp.args.PyTreeRestore(item=abstract_state, restore_args=restore_args)
        )

    def restore_latest_readable(self, abstract_state: Any) -> tuple[Any, int | None]:
        """The latest checkpoint that restores, and its step (None: no checkpoint).

        A damaged latest checkpoint (a disk fault, a truncated copy) is moved aside to
        `<checkpoints>_unreadable/<step>` (kept for inspection, out of orbax's sight, so
        the run can save that step again) with a warning, and the previous kept one is
        tried: a run loses the steps since that checkpoint, never its progress.
        """
        for step in sorted(self._manager.all_steps() if self._manager else (), reverse=True):
            try:
                return self.restore(abstract_state, step), step
            except Exception as e:  # orbax raises many types for a damaged checkpoint
                aside = os.path.join(self.directory + "_unreadable", str(step))
                message = (f"checkpoint {self.directory!r} step {step} is unreadable ({_first_line(e)}); "
                           f"moved to {aside!r}, trying the one before")
                logging.warning(message)
                print(f"warning: {message}", flush=True)
                if hosts.primary():
                    fileio.makedirs(os.path.dirname(aside))
                    fileio.rename(os.path.join(self.directory, str(step)), aside)
                self._manager.reload()
        return abstract_state, None

    def wait(self) -> None:
        if self._manager:
            self._manager.wait_until_finished()

    def close(self) -> None:
        if self._manager:
            self._manager.wait_until_finished()
            self._manager.close()


def restore_params(directory: str, abstract_params: Any) -> Any:
    """The `params` of the latest checkpoint under `directory` (e.g. the reference model).

    A clear error when there is no checkpoint or its shapes differ from `abstract_params`.
    """
    if not fileio.isdir(directory):
        raise CheckpointError(f"no checkpoint folder {directory!r}")
    options = ocp.CheckpointManagerOptions(create=False, read_only=True)
    manager = ocp.CheckpointManager(
        fileio.absolute(directory), options=options, item_handlers=ocp.PyTreeCheckpointHandler()
    )
    step = manager.latest_step()
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
