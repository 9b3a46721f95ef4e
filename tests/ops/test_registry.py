"""ssp.ops.registry: versions of ssp-avs / ssp-avss with their provenance tags, champions
per (task, dataset fingerprint, profile) moving only on a better validation metric, the
plain champion following the key registered last, stage-2 versions stored with their
stage-1 model, models:/ URIs resolving to the exact checkpoint, and `ssp register` on a
training run folder."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
from mlflow.artifacts import download_artifacts

from ssp.errors import DataError, SSPError
from ssp.fileio import tree_digest
from ssp.models import SSPConfig, SSPModel
from ssp.models.checkpoint import save_weights
from ssp.ops.registry import (
    CHAMPION,
    ChampionKey,
    bundled_stage1,
    champion_uri,
    dataset_fingerprint,
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
        params={"profile": "demo", "train2": {"lr": 0.001}},
        data_fingerprint="abc0123456789",
        class_names=["background", "dog"],
    )
    assert (first.name, first.version, first.champion, first.previous_champion) == ("ssp-avss", 1, True, None)
    assert first.key_alias == "champion-demo-abc01234" and first.champion_version == 1
    key = {"data_fingerprint": "abc0123456789", "profile": "demo"}
    worse = register_checkpoint(first.run_id, checkpoints["b"], 2, 0.35, **key)
    assert (worse.version, worse.champion, worse.previous_champion, worse.champion_version) == (2, False, 1, 1)
    better = register_checkpoint(first.run_id, checkpoints["b"], 2, 0.55, **key)
    assert (better.version, better.champion, better.previous_champion, better.champion_version) == (3, True, 1, 3)

    client = get_client()
    assert int(client.get_model_version_by_alias("ssp-avss", CHAMPION).version) == 3
    assert int(client.get_model_version_by_alias("ssp-avss", "champion-demo-abc01234").version) == 3
    tags = client.get_model_version("ssp-avss", "1").tags
    assert tags["ssp.val_metric"] == "0.4" and tags["ssp.data_fingerprint"] == "abc0123456789"
    assert tags["ssp.profile"] == "demo" and tags["ssp.champion_alias"] == "champion-demo-abc01234"
    assert tags["ssp.task"] == "avss" and tags["ssp.servable"] == "false"  # no stage-1 model for the key
    assert json.loads(tags["ssp.params"]) == {"profile": "demo", "train2": {"lr": 0.001}}
    assert tags["ssp.metric"] == "val_miou" and "ssp.git_commit" in tags


def test_champion_is_per_dataset_fingerprint_and_profile(checkpoints, store):
    """A better model on another dataset or profile takes its own key's champion, never the
    first key's; the plain alias follows the key registered last."""
    from ssp.ops.tracking import get_client

    client = get_client()

    def holder(alias: str) -> int:
        return int(client.get_model_version_by_alias("ssp-avss", alias).version)

    synth = {"data_fingerprint": "5a5a5a5a00", "profile": "demo"}
    first = register_checkpoint(None, checkpoints["a"], 2, 0.40, **synth)
    other_data = register_checkpoint(first.run_id, checkpoints["b"], 2, 0.90, data_fingerprint="avsbench01")
    assert other_data.key_alias == "champion-unknown-avsbench" and other_data.champion
    other_profile = register_checkpoint(
        first.run_id, checkpoints["b"], 2, 0.95, data_fingerprint="5a5a5a5a00", profile="paper"
    )
    assert other_profile.key_alias == "champion-paper-5a5a5a5a" and other_profile.champion
    assert holder("champion-demo-5a5a5a5a") == 1  # neither better model took the first key's champion
    assert (holder("champion-unknown-avsbench"), holder("champion-paper-5a5a5a5a"), holder(CHAMPION)) == (2, 3, 3)

    worse = register_checkpoint(first.run_id, checkpoints["b"], 2, 0.30, **synth)  # compared with 0.40 only
    assert (worse.champion, worse.previous_champion, worse.champion_version) == (False, 1, 1)
    assert holder(CHAMPION) == 1 and holder("champion-demo-5a5a5a5a") == 1  # back to the last key's champion
    better = register_checkpoint(first.run_id, checkpoints["b"], 2, 0.50, **synth)  # 0.90 and 0.95 do not count
    assert (better.champion, better.version, holder(CHAMPION)) == (True, 5, 5)
    assert champion_uri(2, ChampionKey(1, "5a5a5a5a00", "demo")) == "models:/ssp-avss@champion-demo-5a5a5a5a"


def test_stage2_versions_carry_the_stage1_model_of_their_key(checkpoints, store, tmp_path):
    """What `mlflow models serve` and `ssp predict` run a stage-2 model with: the stage-1
    champion of the same key, or the one given; the version is a pyfunc model."""
    from ssp.ops.tracking import get_client

    key = {"data_fingerprint": "feedbeef99", "profile": "demo"}
    register_checkpoint(None, checkpoints["s1"], 1, 0.7, data_fingerprint="0ther0ther", profile="demo")
    lonely = register_checkpoint(None, checkpoints["a"], 2, 0.4, **key)
    assert not lonely.servable  # the only stage-1 model is another dataset's
    stage1 = register_checkpoint(None, checkpoints["s1"], 1, 0.6, **key)
    served = register_checkpoint(None, checkpoints["b"], 2, 0.5, **key)
    assert served.servable
    weights, manifest = resolve_model(f"models:/ssp-avss/{served.version}")
    assert manifest["stage1"]["uri"] == "models:/ssp-avs@champion-demo-feedbeef"
    assert manifest["stage1"]["version"] == stage1.version
    assert bundled_stage1(weights, manifest).read_bytes() == checkpoints["s1"].read_bytes()
    assert bundled_stage1(*resolve_model(f"models:/ssp-avss/{lonely.version}")) is None

    source = get_client().get_model_version_download_uri("ssp-avss", str(served.version))
    mlmodel = (Path(download_artifacts(artifact_uri=source, dst_path=str(tmp_path / "dl"))) / "MLmodel").read_text()
    assert "loader_module: ssp.eval.serving" in mlmodel and "python_function" in mlmodel

    explicit = register_checkpoint(None, checkpoints["b"], 2, 0.1, stage1=str(checkpoints["s1"]), **key)
    assert explicit.servable
    with pytest.raises(SSPError, match="must be stage 1"):
        register_checkpoint(None, checkpoints["b"], 2, 0.1, stage1=str(checkpoints["a"]), **key)
    with pytest.raises(SSPError, match="for a stage-2 model"):
        register_checkpoint(None, checkpoints["s1"], 1, 0.1, stage1=str(checkpoints["s1"]), **key)


def test_dataset_fingerprint_is_the_validation_reports(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "metadata.csv").write_text("vid,uid\n")
    report = tmp_path / "validation.json"
    report.write_text(json.dumps({"root": str(data), "fingerprint": tree_digest(data)}))
    assert dataset_fingerprint(report, data) == dataset_fingerprint(None, data) == tree_digest(data)["md5"]
    assert dataset_fingerprint() is None
    with pytest.raises(DataError, match="not of --data"):
        dataset_fingerprint(report, tmp_path)
    report.write_text(json.dumps({"root": str(data)}))
    with pytest.raises(DataError, match="no fingerprint.md5"):
        dataset_fingerprint(report, data)
    with pytest.raises(DataError, match="missing"):
        dataset_fingerprint(tmp_path / "nope.json")


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
    fingerprint = tree_digest(data)["md5"]  # what `ssp validate --report` records
    alias = f"champion-demo-{fingerprint[:8]}"  # params: the defaults, profile demo
    assert f"ssp-avs version 1 (val_miou=0.6100): now @{alias}; @champion -> version 1" in capsys.readouterr().out
    record = json.loads((tmp_path / "registered.json").read_text())
    assert record["version"] == 1 and record["champion"] and record["uri"] == "models:/ssp-avs/1"
    assert record["key_alias"] == alias and record["champion_uri"] == f"models:/ssp-avs@{alias}"
    assert record["data_fingerprint"] == fingerprint and record["profile"] == "demo" and record["servable"]
    version = get_client().get_model_version("ssp-avs", "1")
    assert version.run_id == run_id and version.tags["ssp.data_fingerprint"] == fingerprint
    _, manifest = resolve_model("models:/ssp-avs@champion")
    assert manifest["class_names"] == ["background", "dog"] and manifest["val_metric"] == 0.61

    # the key from ssp validate's report: the same fingerprint, so the same champion to beat
    report = tmp_path / "validation.json"
    report.write_text(json.dumps({"root": str(data), "fingerprint": {"md5": fingerprint}}))
    args = parser.parse_args(["--run-dir", str(run_dir), "--stage", "1", "--validation", str(report)])
    assert registry.main(args) == 0
    assert f"version 2 (val_miou=0.6100): @{alias} stays on version 1" in capsys.readouterr().out
    assert "--validation" in parser.format_help() and "champion-{profile}-{fingerprint[:8]}" in parser.format_help()

    args = parser.parse_args(["--run-dir", str(run_dir), "--stage", "2"])
    with pytest.raises(SSPError, match="stage-1 run"):
        registry.main(args)
    args = parser.parse_args(["--run-dir", str(run_dir), "--stage", "1", "--metric", "val_nope"])
    with pytest.raises(SSPError, match="no best"):
        registry.main(args)
