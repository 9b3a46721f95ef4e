"""The real pipeline under test: what `make demo` runs, on a shrunk demo profile.

A copy of the repository (its tracked files: its own dvc.yaml, conf/ and code) runs
``python -m flows.reproduce`` -- the Prefect flow `make demo` runs, on a temporary local
Prefect API, each DVC stage as a task (``dvc repro --single-item``) under one MLflow
parent run per experiment -- with params.yaml composed from conf/ (demo profile) and
overrides that shrink sizes and schedules only: the tiny benchmark, one epoch, one row,
one seed, one sweep point; its last stage writes reports/report.md, which `make demo`
prints. The tests check every stage of dvc.yaml ran and wrote its outputs, a plain
``dvc repro`` afterwards finds nothing to do (the flow and DVC agree), and the MLflow
runs and registry. (Plain
``dvc repro`` from scratch of the same dvc.yaml: tests/flows/test_paper_smoke.py.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssp.params import apply_overrides, compose, write_params
from tests.flows.project_copy import SMALL_SCHEDULE, copy_repository
from tests.ports import free_port

BIN = Path(sys.executable).parent

SHRINK = [
    "data.size=tiny",
    "train1.epochs=1",
    *SMALL_SCHEDULE,
    "ablation.rows=[aavs,full]",  # two rows: the UI test compares them
    "ablation.stage1_rows=[full]",
    "ablation.seeds=[0]",
    "sweep.lambda_post=[10]",
    "pipeline.jobs=2",  # what auto gives on 2 cores, set so that any machine runs stages side by side
]
# run dir -> (experiment, dvc stage) of every training the pipeline makes
TRAININGS = {
    "stage1": ("ssp-avs", "train_stage1"),
    "stage2": ("ssp-avss", "train_stage2"),
    "ablation_avs/full/seed0": ("ssp-avs", "ablation_avs@full-0"),
    "ablation/aavs/seed0": ("ssp-avss", "ablation@aavs-0"),
    "ablation/full/seed0": ("ssp-avss", "ablation@full-0"),
    "sweep/lambda_10": ("ssp-avs", "sweep@10"),
}


def run_tags(runs, run_dir: Path) -> dict[str, str]:
    """The tags of the MLflow run of ``run_dir``."""
    return {r.data.tags.get("ssp.run_dir"): r for r in runs}[str(run_dir.resolve())].data.tags


def _dvc_stages(proj: Path):
    from dvc.repo import Repo

    with Repo(str(proj)) as repo:
        return list(repo.index.stages)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, _mlflow_template_db):
    base = tmp_path_factory.mktemp("demo-pipeline")
    proj = base / "proj"
    proj.mkdir()
    copy_repository(proj)
    write_params(apply_overrides(compose(proj / "conf", "demo"), SHRINK), proj / "params.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "MLFLOW_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        MLFLOW_TRACKING_URI=f"sqlite:///{proj / 'mlruns' / 'mlflow.db'}",
        PREFECT_HOME=str(base / "prefect"),  # the temporary local API's database lives here
        DVC_NO_ANALYTICS="1",
        # the copy's own ssp package for every command, `ssp ...` included (not the venv's
        # editable install of this checkout): the stage server and its clients run one code
        PYTHONPATH=str(proj),
    )
    (proj / "mlruns").mkdir(exist_ok=True)
    shutil.copy(_mlflow_template_db, proj / "mlruns" / "mlflow.db")  # migrated once per session, not per run
    flow = subprocess.run([sys.executable, "-m", "flows.reproduce"], cwd=proj, env=env, capture_output=True, text=True)
    assert flow.returncode == 0, f"flows.reproduce failed:\n{flow.stdout[-6000:]}\n{flow.stderr[-6000:]}"
    # make demo's second command prints the report the flow's `report` stage wrote
    return proj, env, flow.stdout + flow.stderr, (proj / "reports" / "report.md").read_text()


def most_at_once(log: str) -> int:
    """The most stages the flow's log shows running at the same time (the reproduce flow's
    task logs "stage X: starting" and, once done, "stage X: ran" or "...: up to date")."""
    running = most = 0
    for m in re.finditer(r"Task run 'dvc:[^']+' - stage \S+: (starting|ran|up to date)", log):
        running += 1 if m.group(1) == "starting" else -1
        most = max(most, running)
    return most


def _runs(env) -> dict[str, list]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    return {e.name: client.search_runs([e.experiment_id]) for e in client.search_experiments()}


@pytest.mark.slow
def test_every_stage_of_dvc_yaml_ran_and_wrote_its_outputs(demo_run):
    proj, env, _, _ = demo_run
    stages = _dvc_stages(proj)
    # the flow ran every stage (its parent runs record which ones did)
    parents = [r for runs in _runs(env).values() for r in runs if r.data.tags.get("ssp.kind") == "pipeline"]
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    ran = set(parents[0].data.tags["ssp.stages_ran"].split(","))
    assert ran == {s.name for s in stages}
    for stage in stages:
        for out in stage.outs:
            path = proj / str(out.def_path)
            assert path.exists(), f"{stage.name}: {out.def_path} missing"
            if path.is_dir():
                assert any(path.iterdir()), f"{stage.name}: {out.def_path} is empty"
            elif path.suffix == ".json":
                assert json.loads(path.read_text()), f"{stage.name}: {out.def_path} is empty"
    # the flow and DVC agree: nothing is stale, a plain `dvc repro` has nothing to do
    status = subprocess.run([str(BIN / "dvc"), "status", "--json"], cwd=proj, env=env, capture_output=True, text=True)
    assert json.loads(status.stdout or "{}") == {}
    again = subprocess.run([str(BIN / "dvc"), "repro"], cwd=proj, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout[-3000:]
    # the stages' heavy ssp commands ran as forks of the flow's warm stage server, none on its own
    from ssp.cli import STAGE_SERVER_COMMANDS

    _, _, log, _ = demo_run
    heavy = [s for s in stages if re.search(rf"\bssp (launch .*-- )?({'|'.join(STAGE_SERVER_COMMANDS)})\b", s.cmd)]
    served = re.search(r"stage server: (\d+) command\(s\) served", log)
    # (the first ones may start while it still imports)
    assert served and len(heavy) // 2 <= int(served.group(1)) <= len(heavy), log[-3000:]
    assert "runs on its own" not in log
    # stages that wait for none of each other ran side by side, never more than pipeline.jobs
    assert "up to 2 at once" in log and most_at_once(log) == 2
    # and the flow's task for an up-to-date stage reports that it skipped it
    from flows.dvc_stages import run_stage

    skipped = run_stage("train_stage2", proj, env=env)
    assert skipped.returncode == 0 and skipped.ran is False, skipped.output[-2000:]


@pytest.mark.slow
def test_the_stage_outputs_hold_what_the_next_stages_and_the_report_read(demo_run):
    proj, _, _, report = demo_run
    manifest = json.loads((proj / "data/synth/manifest.json").read_text())
    videos = sorted(p.parent.name for p in (proj / "data/synth").glob("*/*/scene.json"))
    assert len(videos) == 12 and manifest
    validation = json.loads((proj / "reports/validation.json").read_text())
    assert validation["ok"] is True
    # per-video outputs for every video: flow masks, prompts, log-mel, stage-1 masks
    per_video = {"data/flow": "mask/0.png", "data/prompts": "prompts.json", "data/logmel": "logmel.npy"}
    per_video["data/stage1_masks"] = "*.png"
    for folder, name in per_video.items():
        found = {p.relative_to(proj / folder).parts[1] for p in (proj / folder).glob(f"*/*/{name}")}
        assert found == set(videos), f"{folder}: {sorted(set(videos) - found)} missing"
    stage1 = json.loads((proj / "metrics/stage1.json").read_text())
    stage2 = json.loads((proj / "metrics/stage2.json").read_text())
    assert {"v1s", "v1m", "v2"} <= set(stage1["binary"]) and "v2" in stage2["semantic"]
    for cell in (
        "metrics/ablation_avs/full/seed0.json",
        "metrics/ablation/full/seed0.json",
        "metrics/sweep/lambda_10.json",
    ):
        result = json.loads((proj / cell).read_text())
        assert result["split"] == "test", cell
    # paper Fig. 5 sweeps λ' on MS3: the sweep point is a stage-1 model with MS3 figures
    sweep = json.loads((proj / "metrics/sweep/lambda_10.json").read_text())
    assert sweep["stage"] == 1 and {"v1s", "v1m"} <= set(sweep["binary"])
    ms3 = 100 * sweep["binary"]["v1m"]["miou"], 100 * sweep["binary"]["v1m"]["fscore"]
    assert f"| 10 | {ms3[0]:.1f} | {ms3[1]:.1f} |" in report
    # the point at ablation.lambda_post (10) is the full row's S4/MS3 cell: adopted, not retrained
    cell = json.loads((proj / "metrics/ablation_avs/full/seed0.json").read_text())
    assert sweep["binary"] == cell["binary"] and sweep["trained"] == cell["trained"]
    # the report (the `report` stage; make demo prints it) filled the cells the shrunk grid ran
    full = next(line for line in report.splitlines() if line.startswith("| Full model |"))
    assert "–" not in full, full  # Table 2's full row: every column of ours filled
    assert (proj / "reports/samples/ablation_grid.png").stat().st_size > 0


@pytest.mark.slow
def test_every_training_is_an_mlflow_run_under_the_pipeline_parent_and_registered(demo_run):
    from mlflow import MlflowClient

    proj, env, _, _ = demo_run
    runs = _runs(env)
    for run_dir, (experiment, stage) in TRAININGS.items():
        by_dir = {r.data.tags.get("ssp.run_dir"): r for r in runs[experiment]}
        run = by_dir.get(str((proj / "runs" / run_dir).resolve()))
        assert run is not None, f"no MLflow run for runs/{run_dir} in {experiment}"
        assert run.info.status == "FINISHED" and run.data.tags["dvc.stage"] == stage
        parent = run.data.tags.get("mlflow.parentRunId")
        assert parent and runs[experiment], run_dir
        assert MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(parent).data.tags["ssp.kind"] == "pipeline"
        assert any(k.startswith("val") for k in run.data.metrics), (run_dir, sorted(run.data.metrics))
        # what the UI groups and filters on, as plain params
        assert run.data.params["seed"] == "0" and run.data.params["profile"] == "demo", run_dir
        assert run.data.params["data_fingerprint"] and "row" in run.data.params, run_dir
    # identical trainings are adopted, not repeated: the sweep point at λ' = 10 is the full
    # row's S4/MS3 cell, the full row's AVSS cell is the main stage-2 model
    for experiment, run_dir, source in (
        ("ssp-avs", "sweep/lambda_10", "ablation_avs/full/seed0"),
        ("ssp-avss", "ablation/full/seed0", "stage2"),
    ):
        tags = run_tags(runs[experiment], proj / "runs" / run_dir)
        assert tags["ssp.adopted_from"] == str((proj / "runs" / source).resolve()), run_dir
    assert "ssp.adopted_from" not in run_tags(runs["ssp-avss"], proj / "runs/ablation/aavs/seed0")
    # test-split metrics: the cells test in the same process, `evaluate` logs onto stage 2's run
    stage2 = next(r for r in runs["ssp-avss"] if r.data.tags.get("ssp.run_dir", "").endswith("runs/stage2"))
    assert any(k.startswith("test") for k in stage2.data.metrics), sorted(stage2.data.metrics)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    # the pipeline's parent runs hold the paper tables (MLflow tables), the plots, the Fig-8 grid
    for experiment in ("ssp-avs", "ssp-avss"):
        parent = next(r for r in runs[experiment] if r.data.tags.get("ssp.kind") == "pipeline")
        report = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report")}
        assert {"table1.json", "table2.json", "ablation.png", "lambda_sweep.png", "report.md"} <= report
        table2 = json.loads(
            Path(client.download_artifacts(parent.info.run_id, "report/table2.json", str(proj))).read_text()
        )
        assert len(table2["data"]) == 7 and "Full model" in json.dumps(table2["data"])
    avss_parent = next(r for r in runs["ssp-avss"] if r.data.tags.get("ssp.kind") == "pipeline")
    assert [a.path for a in client.list_artifacts(avss_parent.info.run_id, "samples")]
    for name, stage in (("ssp-avs", "stage1"), ("ssp-avss", "stage2")):
        registered = json.loads((proj / f"runs/{stage}/registered.json").read_text())
        champion = client.get_model_version_by_alias(name, "champion")
        assert str(champion.version) == str(registered["version"]), (name, registered)


# a desktop browser's window: at Chromium's headless default (800 px) the runs table shows
# only its first two metric columns
DESKTOP = ("--window-size=1920,1080",)


def _visible_text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.fixture
def mlflow_ui(demo_run):
    """`ssp ui` (what `make ui` runs) on the pipeline's store, on a free port of 127.0.0.1;
    its process group is killed afterwards and the port checked free."""
    proj, env, _, _ = demo_run
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "ssp"), "ui", "--port", str(port)],
        cwd=proj,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    links = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the links come first, then the server's log
            parts = line.split()
            if len(parts) == 3 and parts[2].startswith("http://"):
                links[(parts[0], parts[1])] = parts[2]
            if ("ssp-avs", "runs") in links:
                break
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail(f"`ssp ui` did not listen on port {port} within 120 s")
        yield links
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with socket.socket() as s:  # nothing left behind on the port: no process listens on it
            # (SO_REUSEADDR: connections the killed server closed may linger in TIME_WAIT;
            # they are no process, and without it they alone made the bind fail)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))


@pytest.mark.slow
def test_the_mlflow_ui_opens_on_the_table2_rows_with_their_metrics(demo_run, mlflow_ui):
    """What a person sees: the saved Table-2 view of `ssp ui`, rendered by a real headless
    Chromium, shows the rows grouped with their test metric, not MLflow's GenAI page."""
    chromium = shutil.which("chromium")
    if not chromium:  # under CI a skip fails (tests/conftest.py): .ci/run installs it
        pytest.skip("no chromium on PATH: `bash infra/ci/install-services.sh` installs Debian's")
    proj, env, _, _ = demo_run
    url = mlflow_ui[("ssp-avss", "table2")]
    assert "workflowType=machine_learning" in url and "viewStateShareKey=table2" in url
    page = ""
    for _ in range(3):  # the single-page app renders after its API calls; give it time
        shown = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                *DESKTOP,
                "--virtual-time-budget=30000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        page = _visible_text(shown.stdout)
        if "Group: full" in page:
            break
    assert "Group by: row" in page and "Token Usage" not in page, page[:2000]
    # the cells only: not the pipeline's parent run as a group without a row
    assert "Additional runs" not in page, page[:3000]
    runs = {
        r.data.params.get("row"): r
        for r in _runs(env)["ssp-avss"]
        if r.data.tags.get("dvc.stage", "").startswith("ablation@")
    }
    assert set(runs) == {"aavs", "full"}
    for row, run in runs.items():
        assert f"Group: {row}" in page
        value = run.data.metrics["test/miou_dataset"]  # one seed: the group's average is the run's value
        # the UI prints the full float; its first six decimals, not a 2-digit rounding that
        # another column's number can contain by chance
        assert repr(value)[:8] in page, (row, value, page[:3000])
