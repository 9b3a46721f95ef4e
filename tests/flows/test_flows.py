"""Prefect flows over DVC stages, on a toy DVC project built in tmp_path: ordering,
skipping, failure, retrain (pull / push with a local DVC remote, the dvc.lock record, the
workspace lock) and deployments (schedule, concurrency limits) in seconds. The repository's own dvc.yaml runs
through the reproduce flow in tests/flows/test_demo_pipeline.py and through plain
`dvc repro` in tests/flows/test_paper_smoke.py."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from flows.dvc_stages import PlannedStage, adopted_folders, run_ssp_commands, stage_plan, stale_stages

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


DVC = str(Path(PY).parent / "dvc")


def make_project(tmp_path: Path, fail_validate: bool = False) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=proj, check=True)
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


def test_stage_plan_follows_dependencies(tmp_path):
    proj = make_project(tmp_path)
    assert [s.name for s in stage_plan(proj)] == ["synth", "validate", "train", "sweep@1", "sweep@10"]
    assert [s.name for s in stage_plan(proj, ["train"])] == ["synth", "validate", "train"]
    # no ssp command here: the reproduce flow starts no stage server for it; the pipeline's do
    assert not run_ssp_commands(stage_plan(proj))
    assert run_ssp_commands(stage_plan(ROOT, ["train_stage1"])) and not run_ssp_commands([])


def test_stage_plan_says_what_each_stage_waits_for_adopted_runs_included():
    after = {s.name: s.after for s in stage_plan(ROOT)}
    assert after["train_stage2"] == {"stage2_inputs"}
    # DVC's graph: the stage-1 cells need the data stages only, so they can run beside
    # train_stage1 and the stage-2 chain
    assert after["ablation_avs@aavs-0"] == {"ablation_avs_inputs"}
    # --adopt: the cell that can take a finished run over waits for the stage writing it
    assert {"train_stage2", "stage2_inputs"} <= after["ablation@full-0"]
    assert "ablation_avs@full-0" in after["sweep@10"]
    assert adopted_folders("ssp train --out x --adopt runs/a runs/b --no-progress") == ["runs/a", "runs/b"]
    assert adopted_folders("ssp evaluate --out x") == []
    assert adopted_folders("ssp train --adopt runs/a && echo done") == ["runs/a"]


def test_run_plan_runs_ready_stages_side_by_side_and_after_a_failure_starts_nothing(prefect_harness):
    from prefect import flow, task

    from flows.reproduce import run_plan

    events: list[tuple[str, str]] = []
    together = threading.Barrier(2, timeout=60)  # b and c pass only if both run at once
    bad_failing = threading.Event()

    @task
    def stage(name: str) -> dict:
        events.append(("start", name))
        if name in ("b", "c"):
            together.wait()
        if name == "bad":
            bad_failing.set()
            raise RuntimeError("stage bad failed")
        if name == "slow":  # still running when "bad" fails
            assert bad_failing.wait(timeout=60)
            time.sleep(2)
        events.append(("end", name))
        return {"stage": name, "ran": True}

    @flow
    def run(plan: list[PlannedStage], jobs: int) -> list[dict]:
        return run_plan(plan, jobs, lambda s: stage.submit(s.name))

    def p(name, *after):
        return PlannedStage(name, "", frozenset(after))

    results = run([p("a"), p("b", "a"), p("c", "a"), p("d", "b", "c")], 2)
    assert sorted(r["stage"] for r in results) == ["a", "b", "c", "d"]
    assert events[:2] == [("start", "a"), ("end", "a")]
    assert events[-2:] == [("start", "d"), ("end", "d")]  # after both

    events.clear()
    with pytest.raises(RuntimeError, match="stage bad failed"):
        run([p("a"), p("bad", "a"), p("slow", "a"), p("after_bad", "bad"), p("next", "slow")], 2)
    assert ("end", "slow") in events  # a running stage finishes: its work is kept
    assert {name for _, name in events} == {"a", "bad", "slow"}  # nothing new after the failure

    events.clear()
    run([p("a"), p("x"), p("y")], 1)
    assert events == [(e, n) for n in "axy" for e in ("start", "end")]  # one at a time, in order


def test_the_flows_set_writes_params_yaml_as_dvc_exp_run_s_does(tmp_path):
    from flows.reproduce import pipeline_params

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    params = pipeline_params(tmp_path, overrides=["ablation.seeds=[0,1,2]", "pipeline.jobs=2"])
    assert (params["ablation"]["seeds"], params["pipeline"]["jobs"]) == ([0, 1, 2], 2)
    written = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert (written["ablation"]["seeds"], written["train1"]) == ([0, 1, 2], params["train1"])
    before = (tmp_path / "params.yaml").read_text()
    with pytest.raises(Exception, match="ablation"):
        pipeline_params(tmp_path, overrides=["ablation.seeds=many"])
    assert (tmp_path / "params.yaml").read_text() == before  # a bad value is not written


def test_failed_validation_stops_the_flow_before_downstream(tmp_path, mlflow_store, prefect_harness):
    from flows.reproduce import reproduce

    proj = make_project(tmp_path, fail_validate=True)
    with pytest.raises(Exception, match="bad file: a/b.jpg"):
        reproduce(project_dir=str(proj))
    assert (proj / "data.txt").exists()
    assert not (proj / "model.txt").exists()
    assert not list(proj.glob("sweep_*.json"))


def git_head(proj: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=proj, capture_output=True, text=True).stdout.strip()


@pytest.mark.slow  # ~40 s: four retrain runs over a DVC project, two of them reproduce it
def test_retrain_pulls_before_pushes_after_and_records_dvc_lock(tmp_path, mlflow_store, prefect_harness, monkeypatch):
    from flows.retrain import retrain

    # what the work-pool templates set: every MLflow run samples the node's system metrics
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    flow_log: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: flow_log.append(record.getMessage())
    logging.getLogger("prefect.flow_runs").addHandler(handler)
    proj = make_project(tmp_path)
    client = MlflowClient(mlflow_store)
    try:
        # a fresh clone: no remote; said once, and the run goes on locally
        first = retrain(project_dir=str(proj))
        assert first["retrained"] is True and first["dvc_remote"] is None and "pushed" not in first
        assert len([m for m in flow_log if "no default DVC remote" in m]) == 1
        assert stale_stages(proj) == []

        # the exact dvc.lock, its git commit and the system metrics are on the parent runs
        record = first["record"]
        lock_text = (proj / "dvc.lock").read_text()
        assert record["git_commit"] == git_head(proj) and record["uncommitted"] == []
        assert set(record["mlflow_runs"]) == {"ssp-avs", "ssp-avss"}
        for run_id in record["mlflow_runs"].values():
            (tmp_path / run_id).mkdir()
            stored = Path(client.download_artifacts(run_id, "retrain/dvc.lock", str(tmp_path / run_id)))
            assert stored.read_text() == lock_text
            run = client.get_run(run_id)
            assert run.data.tags["ssp.dvc_lock_md5"] == record["dvc_lock_md5"]
            assert run.data.metrics["system/node0/system_memory_usage_megabytes"] > 0
            assert "system/node0/cpu_utilization_percentage" in run.data.metrics

        # with a remote (in .dvc/config.local: git sees no change), the next run pushes
        # every cached output even though nothing is stale
        remote = tmp_path / "remote"
        subprocess.run([DVC, "remote", "add", "--local", "-d", "-q", "local", str(remote)], cwd=proj, check=True)
        second = retrain(project_dir=str(proj))
        assert second == {"dvc_remote": "local", "retrained": False, "stale": [], "pushed": "3 files pushed"}
        cached = {"data.txt", "valid.txt", "model.txt"}
        lock = yaml.safe_load(lock_text)["stages"]
        md5s = {out["md5"] for stage in lock.values() for out in stage["outs"] if out["path"] in cached}
        assert len(md5s) == 3
        assert all((remote / "files" / "md5" / m[:2] / m[2:]).is_file() for m in md5s)

        # a workspace without the outputs and without a cache (a new volume): the pull
        # before the run brings them back from the remote, so nothing needs retraining
        for name in cached:
            (proj / name).unlink()
        subprocess.run(["rm", "-rf", str(proj / ".dvc" / "cache")], check=True)
        third = retrain(project_dir=str(proj))
        assert third["retrained"] is False and third["stale"] == []
        assert (proj / "model.txt").read_text() == "xxx" + "ok\n"

        # changed params: retrain, a new record, the new outputs pushed
        params = yaml.safe_load((proj / "params.yaml").read_text())
        params["data"]["classes"] = 5
        (proj / "params.yaml").write_text(yaml.safe_dump(params))
        fourth = retrain(project_dir=str(proj))
        assert fourth["retrained"] is True and "synth" in fourth["stale"]
        assert all(s["ran"] for s in fourth["stages"])
        assert fourth["record"]["dvc_lock_md5"] != record["dvc_lock_md5"]
        assert fourth["record"]["uncommitted"] == ["params.yaml"]  # and its diff is in the record
        (run_id, *_) = fourth["record"]["mlflow_runs"].values()
        (tmp_path / "diff").mkdir()
        diff = Path(client.download_artifacts(run_id, "retrain/uncommitted.diff", str(tmp_path / "diff")))
        assert "+  classes: 5" in diff.read_text()
        assert fourth["pushed"] == "2 files pushed"  # data.txt and model.txt changed; valid.txt did not
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(handler)


def test_retrain_stops_at_once_on_a_workspace_another_run_holds(tmp_path, mlflow_store, prefect_harness):
    from flows.retrain import WorkspaceBusy, retrain, workspace_lock

    proj = make_project(tmp_path)
    with workspace_lock(proj, {"flow_run": "nightly-otter", "host": "gpu-3", "pid": 4242}):
        started = time.monotonic()
        with pytest.raises(WorkspaceBusy, match="nightly-otter.*gpu-3"):
            retrain(project_dir=str(proj))
        assert time.monotonic() - started < 15  # refused, not queued behind the holder
    assert not (proj / "data.txt").exists()  # before touching the workspace


def test_workspace_lock_waits_for_the_holder_when_asked(tmp_path):
    from flows.retrain import WorkspaceBusy, workspace_lock

    first = workspace_lock(tmp_path, {"flow_run": "first"})
    first.__enter__()
    with pytest.raises(WorkspaceBusy, match="first.*after waiting 0.3 s"):
        with workspace_lock(tmp_path, {"flow_run": "second"}, wait_s=0.3):
            pass
    released = threading.Timer(0.5, first.__exit__, (None, None, None))
    released.start()
    waited: list[str] = []
    started = time.monotonic()
    with workspace_lock(tmp_path, {"flow_run": "third"}, wait_s=30, on_wait=waited.append) as path:
        assert 0.4 < time.monotonic() - started < 10
        assert json.loads(path.read_text())["flow_run"] == "third"
    released.join()
    assert len(waited) == 1 and '"flow_run": "first"' in waited[0]
    assert path.read_text() == ""  # released: nobody named as holder


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
    # one run at a time per deployment; a run that finds one running waits (ENQUEUE)
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    for d in deployments.values():
        assert d["concurrency_limit"]["limit"] == 1
        assert (
            ConcurrencyLimitStrategy(d["concurrency_limit"]["collision_strategy"]) == ConcurrencyLimitStrategy.ENQUEUE
        )


def load_deploy_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ssp_infra_deploy", ROOT / "infra/prefect/deploy.py")
    deploy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deploy)
    return deploy


def test_deploy_gives_the_work_pool_a_concurrency_limit_of_1(prefect_harness, capsys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    deploy = load_deploy_script()

    async def limits() -> dict[str, int | None]:
        async with get_client() as client:
            await client.create_work_pool(WorkPoolCreate(name="ssp-unlimited", type="process"))
            await client.create_work_pool(WorkPoolCreate(name="ssp-chosen", type="process", concurrency_limit=3))
            created = await deploy.ensure_work_pool("ssp-new", "process")
            assert created and not await deploy.ensure_work_pool("ssp-unlimited", "process")
            assert not await deploy.ensure_work_pool("ssp-chosen", "process")
            names = ("ssp-new", "ssp-unlimited", "ssp-chosen")
            return {name: (await client.read_work_pool(name)).concurrency_limit for name in names}

    assert asyncio.run(limits()) == {"ssp-new": 1, "ssp-unlimited": 1, "ssp-chosen": 3}  # a chosen limit stays
    assert "keeps its concurrency limit 3" in capsys.readouterr().err


def test_the_flows_give_prefects_local_api_time_to_start():
    """Prefect's default 20 s for its temporary API to answer ran out on a busy 2-core
    machine (`make test`: the reproduce flow failed before its first stage). In a fresh
    process: this module's Prefect harness holds settings of its own."""
    from flows.reproduce import LOCAL_API_STARTUP_ENV, LOCAL_API_STARTUP_S

    probe = (
        "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as s\n"
        "from flows.reproduce import patient_local_api\n"
        "before = s.value(); patient_local_api(); print(before, s.value())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}

    def startup_seconds(**extra: str) -> list[str]:
        done = subprocess.run([PY, "-c", probe], cwd=ROOT, env={**env, **extra}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.split()

    assert startup_seconds() == ["20", str(LOCAL_API_STARTUP_S)]  # Prefect's own default, then ours
    assert LOCAL_API_STARTUP_S >= 120
    assert startup_seconds(**{LOCAL_API_STARTUP_ENV: "33"}) == ["33", "33"]  # the user's value stays
