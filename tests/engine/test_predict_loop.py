"""ssp.engine.predict: the one predict-over-batches loop (validation, evaluate, stage1-masks,
samples, predict) and ssp.engine.inputs' batches: GT masks never reach the model, the
stepping stone is filled in from an in-process stage-1 model only when missing, gradients
are off around the forward passes only, and in-order dataset batches."""

from __future__ import annotations

import pytest
import torch

from ssp.data.avsbench import load_records
from ssp.engine.inputs import InputDirs, build_dataset, dataset_batches, model_inputs
from ssp.engine.predict import predict_batches, quantized_probability, stepping_stone
from ssp.models import SSPConfig, SSPModel


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return SSPModel(SSPConfig.tiny(1, num_points=64)), SSPModel(SSPConfig.tiny(2, num_points=64))


@pytest.fixture(scope="module")
def dataset(bench, models):
    records = load_records(bench["data"], splits=["val"])
    return build_dataset(records, models[1].config, InputDirs(logmel=bench["logmel"]), max_frames=2)


def spy_on(model, monkeypatch) -> list[dict]:
    seen: list[dict] = []
    original = type(model).predict

    def predict(self, batch):
        seen.append({"keys": set(batch), "grad": torch.is_grad_enabled(), "training": self.training})
        return original(self, batch)

    monkeypatch.setattr(type(model), "predict", predict)
    return seen


def test_dataset_batches_are_the_dataset_in_order(dataset):
    batches = list(dataset_batches(dataset, 2))
    assert [len(b["uid"]) for b in batches] == [2] * (len(dataset) // 2) + [1] * (len(dataset) % 2)
    assert [uid for b in batches for uid in b["uid"]] == [r.uid for r in dataset.records]


def test_stage1_model_fills_the_stepping_stone_and_no_model_sees_gt(dataset, models, monkeypatch):
    stage1, stage2 = models
    stage2.train()  # the loop switches to eval mode
    seen = spy_on(stage2, monkeypatch)  # both models are SSPModels: every predict call is seen
    results = list(predict_batches(stage2, dataset_batches(dataset, 2), "cpu", stage1_model=stage1))
    assert len(seen) == 2 * len(results)  # stage 1, then stage 2, per batch
    assert all("masks" not in call["keys"] and not call["grad"] and not call["training"] for call in seen)
    assert all("stage1_mask" in call["keys"] for call in seen[1::2])
    for batch, scores in results:
        assert scores.dtype == torch.float32 and scores.shape[:2] == (len(batch["frames"]), 71)
        assert torch.equal(batch["stage1_mask"], stepping_stone(stage1, batch))
        assert "masks" in batch  # the consumer still gets the GT for its metrics
    assert torch.is_grad_enabled()


def test_a_given_stepping_stone_is_kept(dataset, models, monkeypatch):
    stage1, stage2 = models
    batch = next(dataset_batches(dataset, 1))
    batch["stage1_mask"] = torch.ones(len(batch["frames"]), 64, 64)
    seen = spy_on(stage2, monkeypatch)
    [(out, _)] = list(predict_batches(stage2, [batch], None, stage1_model=stage1))
    assert len(seen) == 1 and torch.equal(out["stage1_mask"], batch["stage1_mask"])


def test_stopping_early_leaves_gradients_on_and_autocast_is_applied(dataset, models):
    stage1, _ = models
    entered: list[int] = []

    class Recorder:
        def __enter__(self):
            entered.append(1)

        def __exit__(self, *exc):
            return False

    loop = predict_batches(stage1, dataset_batches(dataset, 1), "cpu", autocast=Recorder)
    next(loop)
    assert torch.is_grad_enabled() and entered == [1]
    loop.close()


def test_quantized_probability_is_what_the_pngs_store():
    logits = torch.linspace(-8, 8, 101)
    stored = (logits.sigmoid() * 255).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(quantized_probability(logits), stored.float() / 255)
    assert set(model_inputs({"masks": 1, "frames": 2})) == {"frames"}
