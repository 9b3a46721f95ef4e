"""The MLflow hook: runs, nesting, params/metrics/artifacts, concurrent writers."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time

from mlflow import MlflowClient

from ssp.ops.tracking import RunLogger, data_hash, flatten, node_system_metrics, node_tags


def test_run_logs_params_metrics_artifacts_and_nests(mlflow_store, tmp_path, monkeypatch):
    artifact = tmp_path / "metrics.json"
    artifact.write_text('{"miou": 0.5}')
    with RunLogger("ssp-avss", "parent") as parent:
        monkeypatch.setenv("SSP_MLFLOW_PARENT_RUN_ID", parent.run_id)
        with RunLogger("ssp-avss", "child", params={"train": {"lr": 1e-3}}, tags={"row": "full"}) as child:
            child.log_metrics({"loss": 2.0}, step=0)
            child.log_metrics({"loss": 1.0, "val": {"miou": 0.25}}, step=1)
            child.log_artifact(artifact, "eval")

    client = MlflowClient(mlflow_store)
    run = client.get_run(child.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.001"
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.tags["row"] == "full"
    assert run.data.metrics == {"loss": 1.0, "val.miou": 0.25}
    history = client.get_metric_history(child.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.0), (1, 1.0)]
    assert [a.path for a in client.list_artifacts(child.run_id, "eval")] == ["eval/metrics.json"]


def test_failed_block_marks_run_failed(mlflow_store):
    try:
        with RunLogger("ssp-avs", "boom") as run:
            raise ValueError("x")
    except ValueError:
        pass
    assert MlflowClient(mlflow_store).get_run(run.run_id).info.status == "FAILED"


def test_disabled_logger_touches_nothing(mlflow_store):
    with RunLogger("ssp-avs", "rank1", enabled=False) as run:
        run.log_metrics({"loss": 1.0})
    assert run.run_id is None
    assert MlflowClient(mlflow_store).get_experiment_by_name("ssp-avs") is None


def test_two_processes_logging_at_once_both_land(mlflow_store):
    script = textwrap.dedent(
        """
        import sys
        from ssp.ops.tracking import RunLogger
        with RunLogger("ssp-avss", sys.argv[1]) as run:
            for step in range(30):
                run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, f"run{i}"]) for i in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    client = MlflowClient(mlflow_store)
    exp = client.get_experiment_by_name("ssp-avss")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["run0", "run1"]
    for r in runs:
        assert len(client.get_metric_history(r.info.run_id, "loss")) == 30


def test_flatten_and_data_hash(tmp_path):
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
    (tmp_path / "metadata.csv").write_text("uid\nx\n")
    h1 = data_hash(tmp_path)
    (tmp_path / "extra.bin").write_bytes(b"123")
    assert data_hash(tmp_path) != h1


def test_parent_mapping_env_nests_per_experiment(mlflow_store, monkeypatch):
    import json

    with RunLogger("ssp-avs", "pipeline") as p_avs, RunLogger("ssp-avss", "pipeline") as p_avss:
        monkeypatch.setenv("SSP_MLFLOW_PARENT_RUN_ID", json.dumps({"ssp-avs": p_avs.run_id, "ssp-avss": p_avss.run_id}))
        with RunLogger("ssp-avs", "stage1") as c1, RunLogger("ssp-avss", "stage2") as c2, RunLogger("other", "x") as c3:
            pass
    client = MlflowClient(mlflow_store)
    assert client.get_run(c1.run_id).data.tags["mlflow.parentRunId"] == p_avs.run_id
    assert client.get_run(c2.run_id).data.tags["mlflow.parentRunId"] == p_avss.run_id
    assert "mlflow.parentRunId" not in client.get_run(c3.run_id).data.tags


def test_node_tags_come_from_torchrun_variables():
    tags = node_tags({"GROUP_RANK": "3", "WORLD_SIZE": "32", "LOCAL_WORLD_SIZE": "8"})
    assert tags["ssp.node_rank"] == "3" and tags["ssp.world_size"] == "32" and tags["ssp.local_world_size"] == "8"
    assert tags["ssp.host"] == socket.gethostname()
    assert node_tags({})["ssp.node_rank"] == "0"


def test_every_run_says_where_it_ran(mlflow_store, monkeypatch):
    """RunLogger sets the node tags on the run it opens (the main process of a torchrun job)."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("GROUP_RANK", "0")
    with RunLogger("ssp-avs", "ddp-job", tags={"ssp.row": "full"}) as run:
        pass
    tags = MlflowClient(mlflow_store).get_run(run.run_id).data.tags
    assert (tags["ssp.world_size"], tags["ssp.local_world_size"], tags["ssp.node_rank"]) == ("4", "2", "0")
    assert tags["ssp.host"] == socket.gethostname() and tags["ssp.row"] == "full"


def test_system_metrics_land_in_the_run_under_the_node_id(mlflow_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    env = {"MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "true", "GROUP_RANK": "1", "LOCAL_RANK": "0"}
    with RunLogger("ssp-avs", "ddp-job") as run:
        with node_system_metrics(run.run_id, env=env):
            time.sleep(0.6)
        with node_system_metrics(run.run_id, env={**env, "LOCAL_RANK": "1"}):  # not the node's first process
            pass
        with node_system_metrics(run.run_id, env={"GROUP_RANK": "2"}):  # logging not enabled
            pass
    metrics = MlflowClient(mlflow_store).get_run(run.run_id).data.metrics
    assert "system/node1/cpu_utilization_percentage" in metrics
    assert "system/node1/system_memory_usage_megabytes" in metrics
    assert not [k for k in metrics if k.startswith("system/") and not k.startswith("system/node1/")]
