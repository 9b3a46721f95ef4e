"""ssp.engine.checkpoints: the training state (optimizer, scheduler, every RNG) without pickle
and the last/best pointers of a run's checkpoint folder."""

from __future__ import annotations

import json
import random

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
    assert weights.name == "step.safetensors"
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
