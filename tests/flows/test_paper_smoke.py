"""The paper smoke: `dvc repro` of the repository's own dvc.yaml under the paper profile.

A copy of the repository (its tracked files) gets a small dataset in the official
AVSBench-semantic layout (the released 1-based label2idx.json, palette masks written by
the fixture's own transcription of the official palette) and, in a hub cache read with
``HF_HUB_OFFLINE=1``, a stand-in for every pretrained weights spec the paper profile
names, filed under the profile's own repository ids and pinned commits
(``tests/standins.py``: ``save_pretrained`` of reduced configs of the same classes,
torchvggish's state dict, MiniCPM-o-style remote code). params.yaml is the paper
profile's composition with overrides that shrink sizes and schedules only (image size,
epochs, frames, points, one row, one sweep point): every stage runs the paper's code path
-- Perceiver IO flow, MiniCPM-o through its own chat call, the Swin Mask2Former read from
its config.json, VGGish, BERT + CLIP VTA, AAVS's recipe with the phase switch, the
stage-1 and stage-2 Table cells -- on CPU. Its heavy commands start warm (``ssp
stage-server``, as under the reproduce flow): the same commands, forks of one process.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows.dvc_stages import stage_environment, stage_server
from ssp.hub import sha256_file
from ssp.params import Params, apply_overrides, compose, write_params
from tests.flows.project_copy import SMALL_SCHEDULE, copy_repository

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# sizes and schedules only; the profile's weights, components and recipe stay
SHRINK = [
    "data.root=data/avsbench",
    "data.size=tiny",
    "model.image_size=64",
    "flow.size=32",  # Perceiver IO's 24x32 tiles: 3 per frame pair instead of 44 at 64 px (34 s -> 8 s)
    "model.num_points=256",
    "train1.epochs=2",
    "train1.phase2_epoch=1",  # AAVS's phase switch happens inside the smoke
    *SMALL_SCHEDULE,
    "ablation.rows=[full]",
    "ablation.stage1_rows=[full]",
    "sweep.lambda_post=[10]",
]
TRAININGS = ("stage1", "stage2", "ablation_avs/full/seed0", "ablation/full/seed0", "sweep/lambda_10")


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory, _mlflow_template_db):
    from ssp.ops.weights import weight_specs
    from tests.avsbench_fixtures import DEFAULT_SEMANTIC_VIDEOS, write_semantic_dataset
    from tests.standins import paper_profile_standins

    base = tmp_path_factory.mktemp("paper-smoke")
    proj, cache = base / "proj", base / "hf"
    proj.mkdir()
    copy_repository(proj)
    # the fixture's default videos (every subset and split) + an MS3 test video, so the
    # test split has all three Table columns
    ms3_test = {"uid": "ms3_violin_dog_test", "subset": "v1m", "split": "test", "objects": ["violin", "dog"]}
    write_semantic_dataset(proj / "data" / "avsbench", [*DEFAULT_SEMANTIC_VIDEOS, ms3_test])
    composed = apply_overrides(compose(proj / "conf", "paper"), SHRINK)
    params = Params.from_dict(composed)
    write_params(composed, proj / "params.yaml")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(base / "modules"),  # MiniCPM's remote code is copied here
        "MLFLOW_TRACKING_URI": f"sqlite:///{proj / 'mlruns' / 'mlflow.db'}",
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": str(proj),  # the copy's own ssp package for every command, `ssp ...` included
    }
    os.environ["HF_HUB_CACHE"] = str(cache)  # where the stand-in builders file them
    try:
        standins = paper_profile_standins(cache, weight_specs(params))
    finally:
        os.environ.pop("HF_HUB_CACHE")
    (proj / "mlruns").mkdir(exist_ok=True)
    shutil.copy(_mlflow_template_db, proj / "mlruns" / "mlflow.db")  # migrated once per session, not per run
    # the stages' heavy ssp commands start warm, as under the reproduce flow (each a fork of
    # one `ssp stage-server` that imported the paper path's libraries once; plain `dvc repro`
    # with cold starts: tests/engine/test_dvc_resume.py, tests/flows/test_pipeline.py)
    with open(base / "stage-server.log", "w+") as log, stage_server(proj, env, log=log) as served:
        out = subprocess.run(
            [str(BIN / "dvc"), "repro"], cwd=proj, env=stage_environment(served), capture_output=True, text=True
        )
    assert out.returncode == 0, f"dvc repro (paper profile) failed:\n{out.stdout[-6000:]}\n{out.stderr[-4000:]}"
    server_log = (base / "stage-server.log").read_text()
    assert re.search(r"stage server: [1-9]\d* command\(s\) served", server_log), server_log[-3000:]
    assert "runs on its own" not in server_log, server_log[-3000:]
    return proj, env, params, standins


def _commit(spec: str) -> str | None:
    return spec.split("@", 1)[1] if "@" in spec and not spec.startswith("https://") else None


@pytest.mark.slow
def test_every_stage_ran_and_nothing_is_stale(paper_run):
    proj, env, _, _ = paper_run
    status = subprocess.run([str(BIN / "dvc"), "status", "--json"], cwd=proj, env=env, capture_output=True, text=True)
    assert json.loads(status.stdout or "{}") == {}
    for path in ("reports/validation.json", "reports/samples/ablation_grid.png", "metrics/stage1.json"):
        assert (proj / path).is_file(), path
    stage1, stage2 = (json.loads((proj / f"metrics/{n}.json").read_text()) for n in ("stage1", "stage2"))
    assert {"v1s", "v1m", "v2"} <= set(stage1["binary"]) and "all" in stage2["semantic"]
    # Table 1/2 cells: S4/MS3 from the stage-1 cell, AVSS from the stage-2 cell
    avs = json.loads((proj / "metrics/ablation_avs/full/seed0.json").read_text())
    avss = json.loads((proj / "metrics/ablation/full/seed0.json").read_text())
    assert set(avs["binary"]) == {"v1s", "v1m"} and 0 <= avss["semantic"]["v2"]["miou"] <= 1
    with open(proj / "runs/ablation_avs/full/seed0/history.csv") as f:  # AAVS's phase switch after epoch 1
        assert [(r["phase"], float(r["lr"])) for r in csv.DictReader(f)] == [("1", 1e-3), ("2", 1e-4)]


@pytest.mark.slow
def test_preprocessing_used_the_paper_estimators_and_records_them(paper_run):
    proj, _, params, standins = paper_run
    flow = json.loads((proj / "data/flow/flow_summary.json").read_text())
    assert flow["params"]["method"] == "perceiver"
    assert flow["weights"]["revision"] == _commit(params.flow.weights)
    prompts = json.loads((proj / "data/prompts/prompts_summary.json").read_text())
    assert prompts["backend"] == "hf" and prompts["settings"]["hf_api"] == "model_chat"
    assert prompts["weights"]["revision"] == _commit(params.prompts.model)
    answers = [json.loads(p.read_text()) for p in sorted((proj / "data/prompts").rglob("prompts.json"))]
    assert answers and all(a.get("a1") or a.get("frames") for a in answers)


@pytest.mark.slow
def test_every_training_run_records_its_pretrained_weights(paper_run):
    from mlflow import MlflowClient

    proj, env, params, standins = paper_run
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = {
        r.data.tags.get("ssp.run_dir", ""): r
        for e in client.search_experiments()
        for r in client.search_runs([e.experiment_id])
    }
    cache = Path(env["HF_HUB_CACHE"])
    for training in TRAININGS:
        run_dir = proj / "runs" / training
        run = runs[str(run_dir.resolve())]
        recorded = json.loads((run_dir / "pretrained_weights.json").read_text())
        expected = {"model.mask2former_weights", "model.vggish_weights"}
        if training != "stage1":  # every SSP model reads prompts (BERT + CLIP) and flow masks
            expected |= {"model.text_model", "model.clip_model", "flow.weights", "prompts.model"}
        assert set(recorded) == expected, training
        for what, record in recorded.items():
            key = f"pretrained.{what.removeprefix('model.')}"
            assert run.data.params[f"{key}.spec"] == record["spec"]
            assert run.data.params[f"{key}.revision"] == (record["revision"] or "")
            pinned = _commit(record["spec"])
            assert pinned is None or record["revision"] == pinned
            # the sha256 of the files actually read (preprocessing records carry no local path)
            if "path" in record:
                folder = Path(record["path"])
            else:
                folder = cache / f"models--{record['repo_id'].replace('/', '--')}" / "snapshots" / record["revision"]
            for name, digest in record["files"].items():
                assert sha256_file(folder / name if folder.is_dir() else folder) == digest
        assert str(cache) in recorded["model.mask2former_weights"]["path"]
    # the checkpoint carries the same record (used where the run's folder is gone)
    from ssp.models.checkpoint import read_weights

    _, _, info = read_weights(proj / "runs/stage2/checkpoints/best.safetensors")
    assert info["pretrained"]["model.clip_model"]["revision"] == _commit(params.model.clip_model)


@pytest.mark.slow
def test_a_missing_weight_stops_training_before_it_starts_and_names_it(paper_run):
    proj, env, _, _ = paper_run
    out = subprocess.run(
        [str(BIN / "ssp"), "train", "--stage", "1", "--data", "data/avsbench", "--out", "runs/no_vggish"]
        + ["--params", "params.yaml", "--logmel", "data/logmel", "--set", "model.vggish_weights=''"],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    assert "model.vggish_weights (VGGish" in out.stderr and "allow_random_init" in out.stderr
    assert not (proj / "runs/no_vggish/checkpoints").exists()


@pytest.mark.slow
def test_the_gpu_benchmark_script_runs_the_paper_profile(paper_run):
    proj, env, _, _ = paper_run
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "paper_gpu.py"), "--params", "params.yaml", "--profile", "paper"]
        + ["--device", "cpu", "--steps", "1", "--warmup", "0", "--frames", "2"],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout[out.stdout.index("{") :])
    assert result["profile"] == "paper" and result["stage"] == 2 and result["step_s_median"] > 0
    assert 0 < result["trainable_parameters"] < result["parameters"]  # AAVS's recipe: mostly frozen
    assert set(result["pretrained"]) >= {"model.mask2former_weights", "model.text_model", "model.clip_model"}
