"""ssp.models.checkpoint: safetensors weights with the config inside, training state without
pickle, the last/best pointers, and clear errors for wrong or corrupt files."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch

from ssp.errors import DataError
from ssp.models import SSPConfig, SSPModel
from ssp.models.checkpoint import (
    CheckpointDir,
    Position,
    load_model,
    load_weights_into,
    read_training_state,
    read_weights,
    save_weights,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SSPModel(SSPConfig.tiny(2, num_points=64))


def test_weights_round_trip_rebuilds_the_model_from_the_file(model, tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(path, model, {"epoch": 3, "val": {"miou": 0.5}})
    state, config, info = read_weights(path)
    assert config == model.config.to_dict() and info == {"epoch": 3, "val": {"miou": 0.5}}
    rebuilt, rebuilt_config, _ = load_model(path)
    assert rebuilt_config.stage == 2 and not rebuilt.training
    mine, theirs = model.state_dict(), rebuilt.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert path.read_bytes()[:8] != b"\x80\x04\x95"[:8]  # not a pickle
    assert not list(tmp_path.glob(".*"))  # no temp file left behind


def test_frozen_text_model_is_not_stored(tmp_path):
    model = SSPModel(SSPConfig.tiny(1, text="vta", num_points=64))
    path = tmp_path / "vta.safetensors"
    save_weights(path, model)
    state, _, _ = read_weights(path)
    assert any(k.startswith("text_module.") for k in state)
    assert not any(k.startswith("text_module.text_encoder.") for k in state)
    rebuilt, _, _ = load_model(path)
    assert torch.equal(rebuilt.text_module.visual_in.weight, model.text_module.visual_in.weight)


@pytest.mark.parametrize("damage", ["truncated", "pickle", "garbage", "not_ours"])
def test_corrupt_or_foreign_files_raise_a_data_error_naming_the_file(model, tmp_path, damage):
    path = tmp_path / f"{damage}.safetensors"
    if damage == "truncated":
        save_weights(path, model)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "pickle":
        path.write_bytes(pickle.dumps({"weight": [1, 2, 3]}))
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    else:
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(DataError) as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_weights_of_another_config_raise_a_data_error(model, tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(path, model)
    other = SSPModel(SSPConfig.tiny(2, hidden_dim=96, num_points=64))
    with pytest.raises(DataError, match="do not fit") as err:
        load_weights_into(other, path)
    assert str(path) in str(err.value)
    stage1 = SSPModel(SSPConfig.tiny(1, num_points=64))
    with pytest.raises(DataError, match="do not fit"):
        load_weights_into(stage1, path)


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
    folder.save("step", model, optimizer, scheduler, Position(1, 2, 6), info={"kind": "step"},
                extra={"history": [{"epoch": 1}]}, extra_tensors={"running": torch.arange(5.0)})
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
