"""ssp.ops.registry: versions of ssp-avs / ssp-avss with their provenance tags, the champion
alias moving only on a better validation metric, models:/ URIs resolving to the exact
checkpoint, and `ssp register` on a training run folder."""

from __future__ import annotations

import argparse
import json
import os

import pytest
import torch

from ssp.errors import DataError, SSPError
from ssp.models import SSPConfig, SSPModel
from ssp.models.checkpoint import save_weights
from ssp.ops.registry import (
    CHAMPION,
    find_run_id,
    parse_model_uri,
    register_checkpoint,
    resolve_model,
    resolve_model_uri,
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two different stage-2 checkpoints and one stage-1 checkpoint."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    paths = {}
    for name, stage in (("a", 2), ("b", 2), ("s1", 1)):
        paths[name] = folder / f"{name}.safetensors"
        save_weights(paths[name], SSPModel(SSPConfig.tiny(stage, num_points=64)), {"epoch": 1})
    return paths


@pytest.fixture
def store(mlflow_store, tmp_path, monkeypatch):
    monkeypatch.setenv("SSP_MODEL_CACHE", str(tmp_path / "cache"))
    return mlflow_store


def test_champion_moves_only_to_a_better_version(checkpoints, store):
    from ssp.ops.tracking import get_client

    first = register_checkpoint(
        None,
        checkpoints["a"],
        2,
        0.40,
        params={"train2": {"lr": 0.001}},
        data_hash="files:abc",
        class_names=["background", "dog"],
    )
    assert (first.name, first.version, first.champion, first.previous_champion) == ("ssp-avss", 1, True, None)
    worse = register_checkpoint(first.run_id, checkpoints["b"], 2, 0.35)
    assert (worse.version, worse.champion, worse.previous_champion) == (2, False, 1)
    better = register_checkpoint(first.run_id, checkpoints["b"], 2, 0.55)
    assert (better.version, better.champion, better.previous_champion) == (3, True, 1)

    client = get_client()
    assert int(client.get_model_version_by_alias("ssp-avss", CHAMPION).version) == 3
    tags = client.get_model_version("ssp-avss", "1").tags
    assert tags["ssp.val_metric"] == "0.4" and tags["ssp.data_hash"] == "files:abc"
    assert json.loads(tags["ssp.params"]) == {"train2": {"lr": 0.001}}
    assert tags["ssp.metric"] == "val_miou" and "ssp.git_commit" in tags


def test_uris_resolve_to_each_versions_own_checkpoint(checkpoints, store, tmp_path):
    first = register_checkpoint(None, checkpoints["a"], 2, 0.40, class_names=["background", "dog"])
    register_checkpoint(first.run_id, checkpoints["b"], 2, 0.30)  # same run, another checkpoint
    champion, manifest = resolve_model(f"models:/ssp-avss@{CHAMPION}")
    assert champion.read_bytes() == checkpoints["a"].read_bytes()
    assert manifest["class_names"] == ["background", "dog"] and manifest["registered"]["version"] == 1
    second = resolve_model_uri("models:/ssp-avss/2", dst=tmp_path / "v2")
    assert second.read_bytes() == checkpoints["b"].read_bytes()
    assert resolve_model_uri(f"models:/ssp-avss@{CHAMPION}") == champion  # cached, not downloaded again
    with pytest.raises(SSPError, match="not found in the model registry"):
        resolve_model_uri("models:/ssp-avs@champion")
    with pytest.raises(SSPError, match="not a registry URI"):
        parse_model_uri("runs:/abc/model")
    assert parse_model_uri("models:/ssp-avs@champion") == ("ssp-avs", "champion", None)


def test_wrong_stage_or_file_is_refused(checkpoints, store, tmp_path):
    with pytest.raises(SSPError, match="stage-1 checkpoint"):
        register_checkpoint(None, checkpoints["s1"], 2, 0.5)
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="bogus.safetensors"):
        register_checkpoint(None, bogus, 1, 0.5)


def _train_like_run(tmp_path, checkpoint, stage=1, miou=0.61):
    """A run folder and MLflow run as `ssp train` leaves them (metrics.json, best checkpoint,
    best/* metrics logged)."""
    from ssp.ops.tracking import RunLogger

    run_dir = tmp_path / f"run{stage}"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best.safetensors").write_bytes(checkpoint.read_bytes())
    best = {"miou": miou, "fscore": 0.7}
    (run_dir / "metrics.json").write_text(json.dumps({"stage": stage, "best_epoch": 2, "best": best}))
    with RunLogger(f"ssp-avs{'s' if stage == 2 else ''}", "train", tags={"ssp.stage": str(stage)}) as other:
        other.log_metrics({"best/miou": 0.1, "best/fscore": 0.7, "best/epoch": 2})  # another run
    with RunLogger(f"ssp-avs{'s' if stage == 2 else ''}", "train", tags={"ssp.stage": str(stage)}) as run:
        run.log_metrics({f"best/{k}": v for k, v in best.items()})
        run.log_metrics({"best/epoch": 2})
    return run_dir, run.run_id


def test_find_run_id_of_a_run_folder(checkpoints, store, tmp_path):
    run_dir, run_id = _train_like_run(tmp_path, checkpoints["s1"])
    assert find_run_id(run_dir, 1) == run_id  # by its logged best metrics
    (run_dir / "mlflow_run.json").write_text(json.dumps({"run_id": "explicit"}))
    assert find_run_id(run_dir, 1) == "explicit"  # a pointer the trainer wrote wins


def test_register_cli_on_a_run_folder(checkpoints, store, tmp_path, capsys):
    from ssp.ops import registry
    from ssp.ops.tracking import get_client

    run_dir, run_id = _train_like_run(tmp_path, checkpoints["s1"])
    data = tmp_path / "data"
    data.mkdir()
    (data / "label2idx.json").write_text(json.dumps({"background": 1, "dog": 2}))  # the released 1-based form
    (data / "metadata.csv").write_text("vid,uid,s_min,s_sec,a_obj,split,label\n")
    parser = argparse.ArgumentParser()
    registry.add_arguments(parser)
    args = parser.parse_args(
        [
            "--run-dir",
            str(run_dir),
            "--stage",
            "1",
            "--data",
            str(data),
            "--params",
            os.devnull,
            "--out",
            str(tmp_path / "registered.json"),
        ]
    )
    assert registry.main(args) == 0
    assert "ssp-avs version 1 (val_miou=0.6100): now @champion" in capsys.readouterr().out
    record = json.loads((tmp_path / "registered.json").read_text())
    assert record["version"] == 1 and record["champion"] and record["uri"] == "models:/ssp-avs/1"
    version = get_client().get_model_version("ssp-avs", "1")
    assert version.run_id == run_id and version.tags["ssp.data_hash"].startswith("files:")
    _, manifest = resolve_model("models:/ssp-avs@champion")
    assert manifest["class_names"] == ["background", "dog"] and manifest["val_metric"] == 0.61

    args = parser.parse_args(["--run-dir", str(run_dir), "--stage", "2"])
    with pytest.raises(SSPError, match="stage-1 run"):
        registry.main(args)
    args = parser.parse_args(["--run-dir", str(run_dir), "--stage", "1", "--metric", "val_nope"])
    with pytest.raises(SSPError, match="no best"):
        registry.main(args)
