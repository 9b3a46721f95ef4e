"""Prefect flows over DVC stages, on a toy DVC project built in tmp_path (the real
pipeline's stages are exercised by the end-to-end test)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from flows.dvc_stages import stage_order, stale_stages

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable

# a stage that logs a nested MLflow run the way `ssp train` does
LOGGING_STAGE = textwrap.dedent(
    """
    import json, sys
    from ssp.ops.tracking import RunLogger
    out, lam = sys.argv[1], float(sys.argv[2])
    with RunLogger("ssp-avss", f"sweep-{lam}") as run:
        run.log_metrics({"miou": 1.0 / lam})
    json.dump({"miou": 1.0 / lam}, open(out, "w"))
    """
)


def make_project(tmp_path: Path, fail_validate: bool = False) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    subprocess.run([str(Path(PY).parent / "dvc"), "init", "-q"], cwd=proj, check=True)
    (proj / "log_stage.py").write_text(LOGGING_STAGE)
    (proj / "params.yaml").write_text(yaml.safe_dump({"data": {"classes": 3}, "sweep": {"lambda_post": [1, 10]}}))
    validate_cmd = (
        f"{PY} -c \"import sys; print('bad file: a/b.jpg'); sys.exit(1)\"" if fail_validate else "echo ok > valid.txt"
    )
    dvc_yaml = {
        "stages": {
            "synth": {
                "cmd": "python3 -c \"import yaml;n=yaml.safe_load(open('params.yaml'))['data']['classes'];open('data.txt','w').write('x'*n)\"".replace(
                    "python3", PY
                ),
                "params": ["data"],
                "outs": ["data.txt"],
            },
            "validate": {"cmd": validate_cmd, "deps": ["data.txt"], "outs": ["valid.txt"]},
            "train": {
                "cmd": "cat data.txt valid.txt > model.txt",
                "deps": ["data.txt", "valid.txt"],
                "outs": ["model.txt"],
            },
            "sweep": {
                "foreach": "${sweep.lambda_post}",
                "do": {
                    "cmd": f"{PY} log_stage.py sweep_${{item}}.json ${{item}}",
                    "deps": ["model.txt", "log_stage.py"],
                    "metrics": [{"sweep_${item}.json": {"cache": False}}],
                },
            },
        }
    }
    (proj / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    subprocess.run(["git", "add", "-A"], cwd=proj, check=True)
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], cwd=proj, check=True)
    return proj


def test_stage_order_follows_dependencies(tmp_path):
    proj = make_project(tmp_path)
    assert stage_order(proj) == ["synth", "validate", "train", "sweep@1", "sweep@10"]
    assert stage_order(proj, ["train"]) == ["synth", "validate", "train"]


@pytest.mark.slow  # > 20 s: Prefect flows over a DVC project, several runs
def test_reproduce_runs_stages_then_skips_them_and_nests_runs(tmp_path, mlflow_store, prefect_harness):
    from flows.reproduce import reproduce

    proj = make_project(tmp_path)
    first = reproduce(project_dir=str(proj))
    assert [s["stage"] for s in first["stages"]] == ["synth", "validate", "train", "sweep@1", "sweep@10"]
    assert all(s["ran"] for s in first["stages"])
    assert first["metrics"]["sweep_10.miou"] == pytest.approx(0.1)

    client = MlflowClient(mlflow_store)
    parent = first["parent_runs"]["ssp-avss"]
    exp = client.get_experiment_by_name("ssp-avss")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_name for r in children) == ["sweep-1.0", "sweep-10.0"]
    assert client.get_run(parent).info.status == "FINISHED"

    second = reproduce(project_dir=str(proj))
    assert not any(s["ran"] for s in second["stages"])


def test_failed_validation_stops_the_flow_before_downstream(tmp_path, mlflow_store, prefect_harness):
    from flows.reproduce import reproduce

    proj = make_project(tmp_path, fail_validate=True)
    with pytest.raises(Exception, match="bad file: a/b.jpg"):
        reproduce(project_dir=str(proj))
    assert (proj / "data.txt").exists()
    assert not (proj / "model.txt").exists()
    assert not list(proj.glob("sweep_*.json"))


@pytest.mark.slow  # > 20 s: Prefect flows over a DVC project, several runs
def test_retrain_runs_only_when_something_changed(tmp_path, mlflow_store, prefect_harness):
    from flows.retrain import retrain

    proj = make_project(tmp_path)
    assert retrain(project_dir=str(proj))["retrained"] is True
    assert stale_stages(proj) == []
    assert retrain(project_dir=str(proj)) == {"retrained": False, "stale": []}
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["data"]["classes"] = 5
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    result = retrain(project_dir=str(proj))
    assert result["retrained"] is True and "synth" in result["stale"]
    assert all(s["ran"] for s in result["stages"])


def test_deployments_load_with_schedule():
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert {"retrain", "reproduce", "ablation"} <= set(deployments)
    retrain = deployments["retrain"]
    assert retrain["schedules"][0]["cron"].split() == ["0", "3", "*", "*", "*"]
    assert retrain["work_pool"]["name"]
    for d in deployments.values():
        path, name = d["entrypoint"].split(":")
        flow = load_flow_from_entrypoint(str(ROOT / path) + ":" + name)
        assert flow.name == name
