"""ssp.engine.checkpoints: the training state (optimizer, scheduler, every RNG) without pickle,
the last/best pointers of a run's checkpoint folder, and retention (keep the last N epoch
checkpoints and best; a deletion cut short at any file leaves a resumable folder)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ssp.engine.checkpoints import CheckpointDir, Position, read_training_state
from ssp.errors import DataError
from ssp.models import SSPConfig, SSPModel


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SSPModel(SSPConfig.tiny(2, num_points=64))


def test_training_state_restores_optimizer_scheduler_and_every_rng(model, tmp_path):
    params = [p for p in model.parameters() if p.requires_grad][:3]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    for _ in range(2):
        sum((p * p).sum() for p in params).backward()
        optimizer.step()
        scheduler.step()
    folder = CheckpointDir(tmp_path)
    torch.manual_seed(5), np.random.seed(6), random.seed(7)
    folder.save(
        "step",
        model,
        optimizer,
        scheduler,
        Position(1, 2, 6),
        info={"kind": "step"},
        extra={"history": [{"epoch": 1}]},
        extra_tensors={"running": torch.arange(5.0)},
    )
    expected = (torch.rand(3), np.random.rand(3), random.random())

    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    fresh = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
    fresh_scheduler = torch.optim.lr_scheduler.StepLR(fresh, step_size=1, gamma=0.1)
    weights, state_path = folder.last()
    assert weights.name == "step_6.safetensors"  # named by its step: never rewritten while pointed at
    state = read_training_state(state_path)
    state.restore(fresh, fresh_scheduler)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
    assert state.position == Position(1, 2, 6) and state.extra["history"] == [{"epoch": 1}]
    assert torch.equal(state.extra_tensors["running"], torch.arange(5.0))
    assert fresh.param_groups[0]["lr"] == pytest.approx(1e-5)
    assert fresh_scheduler.last_epoch == 2
    a, b = optimizer.state_dict()["state"], fresh.state_dict()["state"]
    assert a.keys() == b.keys()
    for index in a:
        assert torch.equal(a[index]["exp_avg"], b[index]["exp_avg"])
        assert float(a[index]["step"]) == float(b[index]["step"])


def test_last_pointer_follows_the_newest_complete_checkpoint(model, tmp_path):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad][:1])
    folder = CheckpointDir(tmp_path)
    assert folder.last() is None
    folder.save("epoch", model, optimizer, None, Position(1, 0, 4), info={}, extra={})
    assert folder.last()[0].name == "epoch_1.safetensors"
    folder.save("step", model, optimizer, None, Position(1, 3, 7), info={}, extra={})
    assert json.loads((tmp_path / "checkpoints" / "last.json").read_text())["global_step"] == 7
    (tmp_path / "checkpoints" / "last.json").write_text("{broken")
    with pytest.raises(DataError, match="last.json"):
        folder.last()


def names(folder: CheckpointDir) -> list[str]:
    return sorted(p.name for p in folder.root.iterdir())


def save(folder: CheckpointDir, model, optimizer, kind: str, epoch: int, batches: int, step: int) -> None:
    folder.save(kind, model, optimizer, None, Position(epoch, batches, step), info={}, extra={"at": step})


def test_retention_keeps_the_last_n_epochs_best_and_a_newer_step_checkpoint(model, tmp_path):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad][:1])
    folder = CheckpointDir(tmp_path, keep_last=2)
    folder.save_best(model, {"epoch": 1})
    save(folder, model, optimizer, "epoch", 1, 0, 4)
    save(folder, model, optimizer, "step", 1, 2, 6)
    save(folder, model, optimizer, "epoch", 2, 0, 8)  # the step checkpoint is older now: gone
    assert names(folder) == [
        "best.safetensors",
        "epoch_1.safetensors",
        "epoch_1.state.safetensors",
        "epoch_2.safetensors",
        "epoch_2.state.safetensors",
        "last.json",
    ]
    # a write killed before its pointer (epoch 4's pair) and a killed atomic write's temporary
    (folder.root / "epoch_4.safetensors").write_bytes(b"lost")
    (folder.root / ".epoch_4.state.safetensors.x1y2.tmp.safetensors").write_bytes(b"half")
    save(folder, model, optimizer, "epoch", 3, 0, 12)
    save(folder, model, optimizer, "step", 3, 1, 13)
    assert names(folder) == [
        "best.safetensors",
        "epoch_2.safetensors",
        "epoch_2.state.safetensors",
        "epoch_3.safetensors",
        "epoch_3.state.safetensors",
        "last.json",
        "step_13.safetensors",
        "step_13.state.safetensors",
    ]
    assert folder.last()[0].name == "step_13.safetensors"
    (folder.root / "step.safetensors").write_bytes(b"an older version's step checkpoint")
    everything = CheckpointDir(tmp_path, keep_last=5)  # more than there are: every epoch stays
    save(everything, model, optimizer, "epoch", 4, 0, 16)
    assert not (folder.root / "step.safetensors").exists()
    assert [n for n in names(everything) if n.endswith(".state.safetensors")] == [
        "epoch_2.state.safetensors",
        "epoch_3.state.safetensors",
        "epoch_4.state.safetensors",
    ]


def test_a_prune_cut_short_at_any_file_leaves_the_pointed_checkpoint(model, tmp_path, monkeypatch):
    """Kill the deletion after 0, 1, 2, 3 of its 4 files: the pointer always names a complete
    pair that reads back, and the next prune finishes the job."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad][:1])
    unlink = Path.unlink
    for allowed in range(4):
        root = tmp_path / str(allowed)
        folder = CheckpointDir(root, keep_last=None)
        save(folder, model, optimizer, "epoch", 1, 0, 4)
        save(folder, model, optimizer, "step", 1, 2, 6)
        save(folder, model, optimizer, "epoch", 2, 0, 8)  # keep_last None: the step pair went
        folder.keep_last = 1
        deleted = []

        def dying_unlink(path, missing_ok=False, _deleted=deleted, _allowed=allowed):
            if len(_deleted) == _allowed:
                raise KeyboardInterrupt("killed while deleting")
            _deleted.append(path.name)
            unlink(path, missing_ok=missing_ok)

        monkeypatch.setattr(Path, "unlink", dying_unlink)
        with pytest.raises(KeyboardInterrupt):
            save(folder, model, optimizer, "epoch", 3, 0, 12)  # would delete epoch 1's and 2's pairs
        monkeypatch.setattr(Path, "unlink", unlink)
        weights, state = folder.last()
        assert weights.name == "epoch_3.safetensors"
        assert read_training_state(state).extra == {"at": 12} and weights.is_file()
        assert len(deleted) == allowed and not {"epoch_3.safetensors", "epoch_3.state.safetensors"} & set(deleted)
        assert len(folder.prune()) == 4 - allowed
        assert names(folder) == ["epoch_3.safetensors", "epoch_3.state.safetensors", "last.json"]


def test_clear_removes_the_pointer_first(model, tmp_path, monkeypatch):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad][:1])
    folder = CheckpointDir(tmp_path)
    folder.save_best(model, {})
    save(folder, model, optimizer, "epoch", 1, 0, 4)
    unlink = Path.unlink

    def dying_after_one(path, missing_ok=False):
        unlink(path, missing_ok=missing_ok)
        raise KeyboardInterrupt("killed while clearing")

    monkeypatch.setattr(Path, "unlink", dying_after_one)
    with pytest.raises(KeyboardInterrupt):
        folder.clear()
    monkeypatch.setattr(Path, "unlink", unlink)
    assert folder.last() is None  # nothing to resume: a fresh start, never a stale pair
    assert folder.clear() and names(folder) == []
