"""Orbax round trip of a sharded train state, and restoring only the params."""

import jax
import numpy as np
import pytest

from doremi_jax import checkpoints, sharding
from doremi_jax.train import setup
from doremi_jax.train.state import OptimizerConfig, make_optimizer
from doremi_jax.methods.doremi.trainer import DoReMi

from helpers import TINY, damage_checkpoint


def make_state(seed, mesh_cfg):
    mesh = sharding.make_mesh(mesh_cfg)
    tx = make_optimizer(OptimizerConfig(), 10)
    return setup.init_state(TINY, tx, np.full(3, 1 / 3), jax.random.PRNGKey(seed), mesh, mesh_cfg.rules, DoReMi()), mesh


def test_round_trip_into_another_mesh(tmp_path):
    (state, _, param_sh), _ = make_state(0, sharding.MeshConfig(data=-1))
    ckpt = checkpoints.Checkpointer(str(tmp_path / "ck"), max_to_keep=2)
    state = state.replace(step=state.step + 5)
    ckpt.save(5, state)
    ckpt.close()
    # Restore into a differently sharded, differently initialised state (FSDP x tensor).
    fsdp = sharding.MeshConfig(data=1, fsdp=4, tensor=2)
    (other, _, other_sh), _ = make_state(1, fsdp)
    ckpt = checkpoints.Checkpointer(str(tmp_path / "ck"))
    assert ckpt.latest_step() == 5
    restored = ckpt.restore(other)
    assert int(restored.step) == 5
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kernel = restored.params["layer_0"]["mlp"]["up"]["kernel"]
    assert kernel.sharding.spec == other_sh["layer_0"]["mlp"]["up"]["kernel"].spec
    params = checkpoints.restore_params(str(tmp_path / "ck"), setup.abstract_params(TINY, sharding.make_mesh(fsdp), fsdp.rules)[0])
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_restore_params_errors(tmp_path):
    mesh_cfg = sharding.MeshConfig(data=-1)
    abstract = setup.abstract_params(TINY, sharding.make_mesh(mesh_cfg), mesh_cfg.rules)[0]
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoint folder"):
        checkpoints.restore_params(str(tmp_path / "none"), abstract)
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoints.CheckpointError, match="no complete checkpoint"):
        checkpoints.restore_params(str(tmp_path / "empty"), abstract)


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):
    (state, _, _), _ = make_state(0, sharding.MeshConfig(data=-1))
    ckpt = checkpoints.Checkpointer(str(tmp_path / "ck"), max_to_keep=3, asynchronous=False)
    for step in (2, 4):
        ckpt.save(step, state.replace(step=state.step + step))
    ckpt.close()
    damage_checkpoint(tmp_path / "ck" / "4")
    ckpt = checkpoints.Checkpointer(str(tmp_path / "ck"))
    restored, step = ckpt.restore_latest_readable(state)
    assert step == 2 and int(restored.step) == 2
    assert "step 4 is damaged" in capsys.readouterr().out
    # Kept for inspection, out of the way of the step being saved again.
    assert (tmp_path / "ck_unreadable" / "4").is_dir() and ckpt.latest_step() == 2
    ckpt.save(4, restored.replace(step=restored.step + 2))
    ckpt.close()
    assert checkpoints.Checkpointer(str(tmp_path / "ck")).latest_step() == 4


def saved_steps(tmp_path, steps):
    (state, _, _), _ = make_state(0, sharding.MeshConfig(data=-1))
    ckpt = checkpoints.Checkpointer(str(tmp_path / "ck"), max_to_keep=3, asynchronous=False)
    for step in steps:
        ckpt.save(step, state.replace(step=state.step + step))
    ckpt.close()
    return state


def test_when_no_checkpoint_restores_the_run_stops_and_moves_nothing(tmp_path):
    state = saved_steps(tmp_path, (2, 4))
    for step in (2, 4):
        damage_checkpoint(tmp_path / "ck" / str(step))
    with pytest.raises(checkpoints.CheckpointError, match=r"no checkpoint in .* restores \(step 4, 2: .*nothing was moved"):
        checkpoints.Checkpointer(str(tmp_path / "ck")).restore_latest_readable(state)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["2", "4"]
    assert not (tmp_path / "ck_unreadable").exists()


def test_a_checkpoint_of_another_optimizer_is_refused_not_set_aside(tmp_path):
    saved_steps(tmp_path, (2, 4))
    mesh_cfg = sharding.MeshConfig(data=-1)
    tx = make_optimizer(OptimizerConfig(name="adafactor"), 10)
    other, _, _ = setup.init_state(TINY, tx, np.full(3, 1 / 3), jax.random.PRNGKey(0), sharding.make_mesh(mesh_cfg),
                                   mesh_cfg.rules, DoReMi())
    with pytest.raises(checkpoints.CheckpointMismatch, match="step 4 holds another run's state: .*opt_state"):
        checkpoints.Checkpointer(str(tmp_path / "ck")).restore_latest_readable(other)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["2", "4"]


def test_a_read_error_that_passes_is_retried_one_that_persists_stops(tmp_path, monkeypatch):
    from doremi_jax import faults

    state = saved_steps(tmp_path, (2, 4))
    monkeypatch.setattr(checkpoints, "BACKOFF_S", 0.01)
    monkeypatch.setattr(faults, "_visits", {})
    monkeypatch.setenv("DOREMI_FAULT", "checkpoint_read@1:ioerror,checkpoint_read@2:ioerror")
    restored, step = checkpoints.Checkpointer(str(tmp_path / "ck")).restore_latest_readable(state)
    assert step == 4 and int(restored.step) == 4 and faults._visits["checkpoint_read"] == 3
    monkeypatch.setenv("DOREMI_FAULT", "checkpoint_read:ioerror")
    with pytest.raises(checkpoints.CheckpointError, match=r"step 4 could not be read after 5 tries \(\[Errno 5\]"):
        checkpoints.Checkpointer(str(tmp_path / "ck")).restore_latest_readable(state)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["2", "4"]
    assert not (tmp_path / "ck_unreadable").exists()


def test_a_full_disk_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    import errno

    from doremi_jax import cli, fileio
    from doremi_jax.train import __main__ as train_main

    write = fileio.write_text_atomic

    def full(path, text):  # the disk fills up by the end of the run
        if str(path).endswith("summary.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, text)

    monkeypatch.setattr(fileio, "write_text_atomic", full)
    workdir = tmp_path / "w"
    with pytest.raises(SystemExit) as e:
        cli.main(train_main.run, ["--gin_file=gin/runs/reference.gin", "--gin_file=gin/models/tiny.gin",
                                  "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=8", f"--workdir={workdir}"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1
    assert err.startswith("error: ") and f"{workdir}/summary.json" in err and "No space left on device" in err
    assert checkpoints.Checkpointer(str(workdir / "checkpoints")).latest_step() == 1


def test_a_run_alone_on_its_host_keeps_no_checkpoint(tmp_path):
    """`hosts.alone()` (RegMix's small runs on several hosts): its mesh is this process's
    devices, and it saves nothing (orbax's multi-process save of such a state did not
    restore on process 1), so a restart finds no checkpoint and trains from step 0."""
    from doremi_jax import hosts

    with hosts.alone():
        (state, _, _), mesh = make_state(0, sharding.MeshConfig(data=2, fsdp=2, tensor=2))
        assert {d.id for d in mesh.devices.flat} == {d.id for d in jax.local_devices()}
        ckpt = checkpoints.Checkpointer(str(tmp_path / "alone"))
        assert ckpt.save(3, state.replace(step=state.step + 3), force=True) is False
        ckpt.close()
        restored, step = checkpoints.Checkpointer(str(tmp_path / "alone")).restore_latest_readable(state)
    assert step is None and restored is state and ckpt.latest_step() is None
    assert not (tmp_path / "alone").exists()
