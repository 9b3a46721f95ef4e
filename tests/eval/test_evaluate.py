"""ssp evaluate: the JSON (binary v1s/v1m, semantic v2/all, conventions), the per-class and
per-scenario CSVs, stage 2 never seeing GT masks as model input, the split and F-score
batch from the params file, and the test metrics logged into the training run."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch

from ssp.errors import SSPError


def test_stage2_report_and_csvs(checkpoints, monkeypatch):
    from ssp.eval.evaluate import evaluate
    from ssp.models.ssp import SSPModel

    seen: list[set] = []
    original = SSPModel.forward

    def spy(self, batch):
        seen.append(set(batch))
        return original(self, batch)

    monkeypatch.setattr(SSPModel, "forward", spy)
    out = checkpoints["root"] / "report" / "test.json"
    result = evaluate(
        checkpoints["s2"],
        checkpoints["data"],
        "test",
        out,
        stage1_masks=checkpoints["stage1"],
        logmel=checkpoints["logmel"],
        fscore_batch_videos=2,
        progress=False,
    )
    assert seen and all("masks" not in keys and "stage1_mask" in keys for keys in seen)

    saved = json.loads(out.read_text())
    assert saved["binary"].keys() >= {"v1s", "v1m"} and saved["semantic"].keys() >= {"v2", "all"}
    assert saved["binary"]["v1s"]["batch_frames"] == 10  # 2 videos x 5 frames
    for numbers in [*saved["binary"].values(), *saved["semantic"].values()]:
        assert 0 <= numbers["miou"] <= 1 and 0 <= numbers["fscore"] <= 1
    assert saved["semantic"]["all"]["num_frames"] == 5 + 5 + 10  # one test video per subset, real frames
    assert "batch" in saved["conventions"]["binary"]["fscore"]
    assert "ALL classes" in saved["conventions"]["semantic"]["miou"]
    # the generated benchmark's own label space (background + its 8 classes) leads every
    # semantic entry; GT holds those classes only, so it is the 71-class mean x 71 / 9
    names = json.loads((checkpoints["data"] / "label2idx.json").read_text())
    assert saved["label_space"]["indices"] == list(range(9))
    assert saved["label_space"]["classes"] == list(names)[:9] and saved["label_space"]["label"] == "bg + K=8 classes"
    for numbers in saved["semantic"].values():
        assert list(numbers)[:3] == ["miou_dataset", "fscore_dataset", "miou"]
        assert numbers["miou_dataset"] == pytest.approx(numbers["miou"] * 71 / 9, abs=1e-9)
        assert numbers["fscore_dataset"] == pytest.approx(numbers["fscore"] * 71 / 9, abs=1e-9)
    assert "K = 8 classes" in saved["conventions"]["semantic"]["miou_dataset"]

    per_class = list(csv.DictReader(Path(result["per_class_csv"]).read_text().splitlines()))
    assert len(per_class) == 71 and per_class[0]["class"] == "background"
    names = json.loads((checkpoints["data"] / "label2idx.json").read_text())
    assert {r["class"] for r in per_class} == set(names)
    scenarios = {
        row["uid"]: row["scenario"]
        for row in csv.DictReader((checkpoints["data"] / "scenarios.csv").open())
        if row["split"] == "test"
    }
    per_scenario = list(csv.DictReader(Path(result["per_scenario_csv"]).read_text().splitlines()))
    assert {r["scenario"] for r in per_scenario} == set(scenarios.values())
    assert list(per_scenario[0])[:3] == ["scenario", "miou_dataset", "fscore_dataset"]
    assert sum(int(r["frames"]) for r in per_scenario) == 20


def test_stage1_report_and_missing_stage1_masks(checkpoints, tmp_path):
    from ssp.eval.evaluate import evaluate

    result = evaluate(
        checkpoints["s1"],
        checkpoints["data"],
        "test",
        tmp_path / "s1.json",
        logmel=checkpoints["logmel"],
        progress=False,
    )
    assert result["semantic"] == {} and result["binary"].keys() == {"v1s", "v1m", "v2"}
    assert result["binary"]["v1m"]["batch_frames"] == 20
    assert (tmp_path / "s1.per_scenario.csv").is_file()
    with pytest.raises(SSPError, match="--stage1-masks"):
        evaluate(
            checkpoints["s2"],
            checkpoints["data"],
            "test",
            tmp_path / "x.json",
            logmel=checkpoints["logmel"],
            progress=False,
        )


def test_cli_takes_split_and_fscore_batch_from_params_unless_given(checkpoints, tmp_path):
    from ssp.cli import main as cli

    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  split: val\n  fscore_batch_videos: 1\n")
    base = [
        "evaluate",
        "--checkpoint",
        str(checkpoints["s1"]),
        "--data",
        str(checkpoints["data"]),
        "--logmel",
        str(checkpoints["logmel"]),
        "--no-track",
        "--params",
        str(params),
    ]
    assert cli([*base, "--out", str(tmp_path / "a.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    assert (a["split"], a["fscore_batch_videos"], a["binary"]["v2"]["batch_frames"]) == ("val", 1, 10)
    assert cli([*base, "--out", str(tmp_path / "b.json"), "--split", "test", "--fscore-batch-videos", "2"]) == 0
    b = json.loads((tmp_path / "b.json").read_text())
    assert (b["split"], b["fscore_batch_videos"], b["binary"]["v2"]["batch_frames"]) == ("test", 2, 20)
    assert cli([*base[:-2], "--params", os.devnull, "--out", str(tmp_path / "c.json")]) == 0
    c = json.loads((tmp_path / "c.json").read_text())  # no params file: the built-in evaluate defaults
    assert (c["split"], c["fscore_batch_videos"]) == ("test", 4)


def test_class_readout_rereads_a_stage2_checkpoint_binary_numbers_unchanged(checkpoints, tmp_path, capsys):
    """`--class-readout` re-reads a checkpoint trained with class codes: the JSON names the
    read-out, the binary numbers (background vs object mass) are the same, and a checkpoint
    without class codes is refused with the reason."""
    from ssp.cli import main as cli
    from ssp.models import SSPConfig, SSPModel
    from ssp.models.checkpoint import save_weights

    torch.manual_seed(0)
    with_codes = tmp_path / "codes.safetensors"
    save_weights(with_codes, SSPModel(SSPConfig.tiny(2, num_points=64, class_aux=3.0)), {"epoch": 1})
    base = ["evaluate", "--data", str(checkpoints["data"]), "--logmel", str(checkpoints["logmel"])]
    base += ["--stage1-masks", str(checkpoints["stage1"]), "--no-track", "--params", os.devnull]
    results = {}
    for readout in ("queries", "codes"):
        out = tmp_path / f"{readout}.json"
        assert cli([*base, "--checkpoint", str(with_codes), "--class-readout", readout, "--out", str(out)]) == 0
        results[readout] = json.loads(out.read_text())
        assert results[readout]["model"]["class_readout"] == readout
    assert results["codes"]["binary"] == results["queries"]["binary"]
    without = [*base, "--checkpoint", str(checkpoints["s2"]), "--class-readout", "codes", "--out", str(tmp_path / "x")]
    assert cli(without) != 0
    error = capsys.readouterr().err
    assert str(checkpoints["s2"]) in error and "class_readout='codes' is for stage 2 with class_aux > 0" in error


def test_binary_from_semantic():
    from ssp.eval.evaluate import binary_from_semantic

    scores = torch.zeros(1, 3, 1, 2)
    scores[0, 0, 0, 0], scores[0, 2, 0, 0] = 0.9, 0.1  # mostly background
    scores[0, 0, 0, 1], scores[0, 1, 0, 1] = 0.2, 0.6  # mostly class 1
    logits = binary_from_semantic(scores)
    assert logits[0, 0, 0] < 0 < logits[0, 0, 1]
    assert torch.sigmoid(logits[0, 0, 1]).item() == pytest.approx(0.75, abs=1e-5)


def run_folder(tmp_path, checkpoint, run_id) -> Path:
    """A `ssp train` run folder around ``checkpoint`` whose metrics.json names ``run_id``."""
    import shutil

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, run_dir / "checkpoints" / "best.safetensors")
    (run_dir / "metrics.json").write_text(json.dumps({"best": {"miou": 0.1}, "mlflow_run_id": run_id}))
    return run_dir / "checkpoints" / "best.safetensors"


def test_test_metrics_are_logged_into_the_training_run(checkpoints, tmp_path, mlflow_store):
    from ssp.eval.evaluate import evaluate
    from ssp.ops.tracking import RunLogger, get_client

    with RunLogger("ssp-avss", "stage2-full-seed0") as training:
        training.log_metrics({"best/miou": 0.1})
    checkpoint = run_folder(tmp_path, checkpoints["s2"], training.run_id)
    result = evaluate(
        checkpoint,
        checkpoints["data"],
        "test",
        tmp_path / "m.json",
        stage1_masks=checkpoints["stage1"],
        logmel=checkpoints["logmel"],
        fscore_batch_videos=2,
        progress=False,
    )
    logged = get_client().get_run(training.run_id).data.metrics
    semantic = result["semantic"]["all"]
    for key in (
        "miou_dataset",
        "fscore_dataset",
        "miou",
        "fscore",
        "miou_no_bg",
        "fscore_no_bg",
        "miou_present",
        "fscore_present",
    ):
        assert logged[f"test/{key}"] == pytest.approx(semantic[key])
    for subset in ("v1s", "v1m", "v2"):
        assert logged[f"test/binary/{subset}/miou"] == pytest.approx(result["binary"][subset]["miou"])
    assert logged["best/miou"] == 0.1  # the training run's own metrics stay
    assert json.loads((tmp_path / "m.json").read_text())["semantic"]["all"]["miou"] == semantic["miou"]


def fake_result(split="test"):
    return {
        "split": split,
        "semantic": {"all": {"miou": 0.25, "fscore": 0.5, "miou_no_bg": float("nan")}},
        "binary": {"v1s": {"miou": 0.75, "fscore": 0.8}},
    }


def test_run_metrics_lead_with_the_own_label_space():
    from ssp.eval.evaluate import run_metrics

    result = fake_result()
    result["semantic"]["all"].update(miou_dataset=0.5, fscore_dataset=0.6)
    logged = run_metrics(result)
    assert list(logged)[:2] == ["test/miou_dataset", "test/fscore_dataset"]
    assert (logged["test/miou_dataset"], logged["test/fscore_dataset"], logged["test/miou"]) == (0.5, 0.6, 0.25)


def test_run_metrics_names_and_no_nan():
    from ssp.eval.evaluate import run_metrics

    assert run_metrics(fake_result("val")) == {
        "val/miou": 0.25,
        "val/fscore": 0.5,
        "val/binary/v1s/miou": 0.75,
        "val/binary/v1s/fscore": 0.8,
    }
    assert run_metrics({"split": "test", "semantic": {}, "binary": {"v2": {"miou": 0.5, "fscore": 0.6}}}) == {
        "test/binary/v2/miou": 0.5,
        "test/binary/v2/fscore": 0.6,
    }  # stage 1: binary only


def test_a_vanished_training_run_is_only_a_warning(checkpoints, tmp_path, mlflow_store, caplog):
    from ssp.eval.evaluate import log_to_training_run
    from ssp.ops.tracking import RunLogger, get_client

    checkpoint = run_folder(tmp_path, checkpoints["s2"], "0123456789abcdef0123456789abcdef")  # another store's run
    with caplog.at_level("WARNING", logger="ssp.eval.evaluate"):
        assert log_to_training_run(checkpoint, fake_result()) is None
    assert "not found" in caplog.text and "0123456789abcdef" in caplog.text

    with RunLogger("ssp-avss", "deleted") as run:
        pass
    get_client().delete_run(run.run_id)
    (checkpoint.parent.parent / "metrics.json").write_text(json.dumps({"mlflow_run_id": run.run_id}))
    caplog.clear()
    with caplog.at_level("WARNING", logger="ssp.eval.evaluate"):
        assert log_to_training_run(checkpoint, fake_result()) is None
    assert "deleted" in caplog.text


def test_no_run_id_is_a_no_op_and_other_errors_propagate(checkpoints, tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException

    import ssp.eval.evaluate
    from ssp.errors import DataError
    from ssp.eval.evaluate import log_to_training_run

    assert log_to_training_run(checkpoints["s2"], fake_result()) is None  # not in a run folder
    checkpoint = run_folder(tmp_path, checkpoints["s2"], None)
    assert log_to_training_run(checkpoint, fake_result()) is None  # run folder without a run id

    class Broken:
        def get_run(self, run_id):
            raise MlflowException("tracking server says no")

    monkeypatch.setattr(ssp.eval.evaluate, "get_client", lambda: Broken())
    (checkpoint.parent.parent / "metrics.json").write_text(json.dumps({"mlflow_run_id": "abc"}))
    with pytest.raises(MlflowException, match="says no"):
        log_to_training_run(checkpoint, fake_result())
    (checkpoint.parent.parent / "metrics.json").write_text("{broken")
    with pytest.raises(DataError, match="metrics.json"):
        log_to_training_run(checkpoint, fake_result())


def test_training_run_logs_the_own_label_space_for_validation_and_test(checkpoints, tmp_path, mlflow_store):
    """`ssp train --stage 2 --test-out` on the generated benchmark: the validation history,
    metrics.json's best epoch, the test JSON and the MLflow run all carry ``miou_dataset``
    (background + the 8 classes) first, beside the 71-class ``miou``."""
    import argparse

    from ssp.eval import train_test
    from ssp.eval.stage1_masks import write_stage1_masks
    from ssp.ops.tracking import get_client
    from tests.engine.benchmark import FAST

    masks = tmp_path / "stage1"
    write_stage1_masks(checkpoints["s1"], checkpoints["data"], masks, ("val", "test"), logmel=checkpoints["logmel"])
    run_dir, test_json = tmp_path / "run", tmp_path / "cell.json"
    argv = ["--stage", "2", "--row", "aavs", "--data", str(checkpoints["data"]), "--out", str(run_dir)]
    argv += ["--params", os.devnull, "--logmel", str(checkpoints["logmel"]), "--stage1-masks", str(masks)]
    argv += ["--no-progress", "--test-out", str(test_json), *[a for o in FAST for a in ("--set", o)]]
    parser = argparse.ArgumentParser()
    train_test.add_arguments(parser)
    assert train_test.main(parser.parse_args(argv)) == 0

    history = list(csv.DictReader((run_dir / "history.csv").open()))
    val_columns = [c for c in history[0] if c.startswith("val_")]
    assert val_columns[:3] == ["val_miou_dataset", "val_fscore_dataset", "val_miou"]
    best = json.loads((run_dir / "metrics.json").read_text())["best"]
    assert list(best)[:2] == ["miou_dataset", "fscore_dataset"]
    assert best["miou_dataset"] == pytest.approx(best["miou"] * 71 / 9, abs=1e-9)
    tested = json.loads(test_json.read_text())["semantic"]["all"]
    logged = get_client().get_run(json.loads((run_dir / "metrics.json").read_text())["mlflow_run_id"]).data.metrics
    assert logged["val_miou_dataset"] == pytest.approx(float(history[-1]["val_miou_dataset"]))
    assert logged["best/miou_dataset"] == pytest.approx(best["miou_dataset"])
    assert logged["test/miou_dataset"] == pytest.approx(tested["miou_dataset"])
    assert logged["test/miou"] == pytest.approx(tested["miou"])
