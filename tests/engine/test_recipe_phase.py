"""AAVS's phase switch in ssp train (ssp.engine.train.start_phase2): at ``phase2_epoch`` the
best checkpoint is reloaded, the Swin adapters are re-initialised and trained, a new AdamW
runs at ``phase2_lr``; and all of it survives a resume, before and after the switch.

The model is the reduced Mask2Former stand-in (by hub id, from an offline hub cache) with
the paper's recipe: frozen, adapters, stage-1 gradient clipping."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ssp.engine import train as train_module
from ssp.engine.train import TrainingInterrupted, train
from tests.engine.benchmark import dirs, params
from tests.standins import mask2former_standin

SWIN_Q = "pixel_level_module.encoder.swin.encoder.layers.0.blocks.0.attention.q_proj.weight"


@pytest.fixture()
def recipe(tmp_path, monkeypatch):
    """Params of a 2-epoch stage-1 run with the switch after epoch 1 (4 steps per epoch)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = mask2former_standin(tmp_path / "hub")
    return [
        "train1.epochs=2",
        "train1.phase2_epoch=1",
        "train1.lr_step_epoch=null",
        "train1.grad_clip=0.01",
        "train1.step_checkpoint_every=3",
        "train1.keep_last=null",  # epoch 1's checkpoint is compared with epoch 2's
        "train1.seed=3",
        f"model.mask2former_weights={spec}",
        "model.freeze_pretrained=true",
        "model.swin_adapters=true",
        "model.decoder_adapters=replace",
        "model.drop_path_rate=0.3",
    ]


def optimizer_tensors(state_file) -> int:
    with safe_open(str(state_file), framework="pt") as f:
        return sum(1 for k in f.keys() if k.endswith(".exp_avg"))


def test_phase_switch_reloads_best_unfreezes_the_swin_adapters_and_survives_resume(
    bench, tmp_path, mlflow_store, monkeypatch, recipe
):
    reloaded = []
    original = train_module.load_weights_into
    monkeypatch.setattr(
        train_module, "load_weights_into", lambda model, path, *a: reloaded.append(path) or original(model, path, *a)
    )
    full = train(1, bench["data"], tmp_path / "full", params(*recipe), row="aavs", progress=False, **dirs(bench))
    ckpt = tmp_path / "full" / "checkpoints"
    assert reloaded == [ckpt / "best.safetensors"]  # once, at the switch
    rows = list(csv.DictReader((tmp_path / "full" / "history.csv").open()))
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-3, 1e-4])
    assert [int(r["phase"]) for r in rows] == [1, 2]

    one, two = load_file(str(ckpt / "epoch_1.safetensors")), load_file(str(ckpt / "epoch_2.safetensors"))
    swin_adapters = [k for k in one if ".swin_adapt_" in k]
    assert swin_adapters and all(torch.count_nonzero(one[k]) == 0 for k in swin_adapters)  # phase 1: frozen zeros
    assert any(not torch.equal(one[k], two[k]) for k in swin_adapters if k.endswith("weight"))
    assert torch.equal(one[SWIN_Q], two[SWIN_Q])  # the pretrained Swin stays frozen
    assert not torch.equal(one["class_predictor.weight"], two["class_predictor.weight"])
    # the phase-2 optimizer holds the Swin adapters too, at phase2_lr; the state knows the phase
    assert optimizer_tensors(ckpt / "epoch_2.state.safetensors") == optimizer_tensors(
        ckpt / "epoch_1.state.safetensors"
    ) + len(swin_adapters)
    with safe_open(str(ckpt / "epoch_2.state.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["extra"])["phase"] == 2
    assert json.loads(meta["optimizer"])["param_groups"][0]["lr"] == pytest.approx(1e-4)

    # killed after the switch (last checkpoint: step 6, phase 2) or before it (step 3, phase 1):
    # the resumed run ends with the same weights and history
    for cut_after in (7, 4):
        out = tmp_path / f"cut{cut_after}"
        with pytest.raises(TrainingInterrupted):
            train(
                1,
                bench["data"],
                out,
                params(*recipe),
                row="aavs",
                progress=False,
                interrupt_after_steps=cut_after,
                **dirs(bench),
            )
        resumed = train(1, bench["data"], out, params(*recipe), row="aavs", resume=True, progress=False, **dirs(bench))
        final = load_file(str(out / "checkpoints" / "epoch_2.safetensors"))
        assert all(torch.equal(final[k], two[k]) for k in two), cut_after
        assert resumed.metrics["best"] == full.metrics["best"]
        assert [r["phase"] for r in csv.DictReader((out / "history.csv").open())] == ["1", "2"]
