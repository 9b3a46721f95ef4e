"""ssp samples: the clips it picks, the ablation grid PNG, its MLflow artifact (new run or
the pipeline's parent run), the report's link to it, and the DVC stage's wiring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.avsbench_fixtures import write_semantic_dataset
from ssp.cli import main as cli
from ssp.errors import SSPError

ROOT = Path(__file__).resolve().parents[2]

TEST_VIDEOS = [  # manifest order; scenario in the last field
    ("v2_dog", ["dog"], "still_sounding"),
    ("v2_car_man", ["car", "man"], "moving_silent"),
    ("v2_cat", ["cat"], "still_sounding"),
    ("v2_piano", ["piano"], "all_sounding"),
    ("v2_baby", ["baby"], "moving_silent"),
]


def write_dataset(root: Path, scenarios: bool = True) -> Path:
    videos = [{"uid": uid, "subset": "v2", "split": "test", "objects": objects, "n_frames": 2}
              for uid, objects, _ in TEST_VIDEOS]
    videos.append({"uid": "v2_train", "subset": "v2", "split": "train", "objects": ["dog"], "n_frames": 2})
    data = write_semantic_dataset(root, videos=videos)
    if scenarios:
        lines = ["uid,split,scenario"] + [f"{uid},test,{s}" for uid, _, s in TEST_VIDEOS] + ["v2_train,train,aaa"]
        (data / "scenarios.csv").write_text("\n".join(lines) + "\n")
    return data


def test_pick_clips_one_per_scenario_first_then_manifest_order(tmp_path):
    from ssp.report.samples import pick_clips

    data = write_dataset(tmp_path / "data")
    # scenarios in name order (all_sounding, moving_silent, still_sounding), first clip of each;
    # the train split's scenario "aaa" is not a candidate
    assert pick_clips(data, 3) == ["v2_piano", "v2_car_man", "v2_dog"]
    assert pick_clips(data, 4) == ["v2_piano", "v2_car_man", "v2_dog", "v2_cat"]
    assert pick_clips(data, 2) == ["v2_piano", "v2_car_man"]
    assert pick_clips(data, 10) == pick_clips(data, 10) and len(pick_clips(data, 10)) == 5
    plain = write_dataset(tmp_path / "plain", scenarios=False)  # AVSBench itself: no scenarios.csv
    assert pick_clips(plain, 3) == ["v2_dog", "v2_car_man", "v2_cat"]
    with pytest.raises(SSPError, match="no val videos"):
        pick_clips(data, 2, split="val")


@pytest.fixture
def ablation_setup(tmp_path):
    """Dataset, flow / prompts / stage-1 outputs for the test clips, and two rows' run
    folders (random-init tiny stage-2 models: an AAVS one and a full SSP one)."""
    from ssp.models.checkpoint import save_weights
    from ssp.models import SSPConfig, SSPModel

    data = write_dataset(tmp_path / "data")
    flow, prompts, stage1 = tmp_path / "flow", tmp_path / "prompts", tmp_path / "stage1"
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255
    for uid, objects, _ in TEST_VIDEOS:
        for i in range(2):
            for path, image in ((flow / "v2" / uid / "mask" / f"{i}.png", mask),
                                (stage1 / "v2" / uid / f"{i}.png", mask.T.copy())):
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(path)
        (prompts / "v2" / uid).mkdir(parents=True)
        (prompts / "v2" / uid / "prompts.json").write_text(
            json.dumps({"a1": f"a {objects[0]} makes a sound", "a2": objects}))
    torch.manual_seed(0)
    runs = tmp_path / "runs" / "ablation"
    configs = {"aavs": SSPConfig.tiny(2, num_points=64),
               "full": SSPConfig.tiny(2, num_points=64, pre_mask=True, text="vta", post_mask=True)}
    for row, config in configs.items():
        save_weights(runs / row / "checkpoints" / "best.safetensors", SSPModel(config))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"ablation": {"rows": ["full", "aavs"]}}))
    return {"data": data, "flow": flow, "prompts": prompts, "stage1": stage1, "runs": runs, "params": params,
            "root": tmp_path}


def samples_args(s, out: Path, *extra: str) -> list[str]:
    return ["samples", "--data", str(s["data"]), "--runs", str(s["runs"]), "--params", str(s["params"]),
            "--flow", str(s["flow"]), "--prompts", str(s["prompts"]), "--stage1-masks", str(s["stage1"]),
            "--out", str(out), "--panel-size", "64", *extra]


def test_samples_command_writes_the_grid_logs_it_and_the_report_links_it(ablation_setup, mlflow_store):
    from ssp.report.report import build_report
    from ssp.ops.tracking import get_client

    s = ablation_setup
    out = s["root"] / "reports" / "samples" / "ablation_grid.png"
    assert cli(samples_args(s, out)) == 0
    grid = np.asarray(Image.open(out))
    # 4 columns (default --clips) of 64 px + 110 px row labels; 4 fixed rows + 2 ablation rows,
    # then the captions and the legend
    assert grid.shape[1] == 110 + 4 * (2 + 64)
    assert grid.shape[0] > 6 * (64 + 2)
    assert out.stat().st_size > 5000
    flow_cell = grid[66:130, 112:176]  # row 2: the flow mask of the first clip (left half moving)
    assert (flow_cell[:, :30] == 255).all() and (flow_cell[:, 34:] == 0).all()

    # no parent in the environment: a run of its own, named `samples`, in ssp-avss
    client = get_client()
    experiment = client.get_experiment_by_name("ssp-avss")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == ["samples"]
    artifacts = [a.path for a in client.list_artifacts(runs[0].info.run_id, "samples")]
    assert artifacts == ["samples/ablation_grid.png"]

    # report.md next to reports/: the grid by a relative link
    metrics = s["root"] / "metrics"
    (metrics / "ablation").mkdir(parents=True)
    path, text = build_report(metrics, s["root"] / "reports", samples=out)
    assert "![ablation samples](samples/ablation_grid.png)" in text
    assert (path.parent / "samples" / "ablation_grid.png").is_file()
    _, text = build_report(metrics, s["root"] / "elsewhere", samples=out)
    assert "![ablation samples](../reports/samples/ablation_grid.png)" in text


def test_samples_go_into_the_pipeline_parent_run(ablation_setup, mlflow_store, monkeypatch):
    from ssp.report.samples import make_samples
    from ssp.ops.tracking import RunLogger, get_client

    s = ablation_setup
    with RunLogger("ssp-avss", "pipeline-x", parent_run_id="") as parent:
        # the reproduce flow exports one parent per experiment, as JSON
        monkeypatch.setenv("SSP_MLFLOW_PARENT_RUN_ID", json.dumps({"ssp-avs": "other", "ssp-avss": parent.run_id}))
        path, run_id = make_samples(s["data"], s["runs"], ["aavs"], s["root"] / "grid.png", flow=s["flow"],
                                    prompts=s["prompts"], stage1_masks=s["stage1"], uids=["v2_cat"],
                                    panel_size=64)
    assert run_id == parent.run_id and path.is_file()
    client = get_client()
    assert [a.path for a in client.list_artifacts(parent.run_id, "samples")] == ["samples/grid.png"]
    experiment = client.get_experiment_by_name("ssp-avss")
    assert [r.info.run_name for r in client.search_runs([experiment.experiment_id])] == ["pipeline-x"]
    assert client.get_run(parent.run_id).info.status == "FINISHED"  # ended by its owner only


def test_missing_rows_are_named_together(ablation_setup, capsys):
    s = ablation_setup
    code = cli(samples_args(s, s["root"] / "grid.png", "--rows", "aavs", "text_att", "pre_mask", "--no-track"))
    err = capsys.readouterr().err
    assert code == 2 and "2 ablation row(s)" in err
    assert "text_att/checkpoints/best.safetensors" in err and "pre_mask/checkpoints/best.safetensors" in err
    assert not (s["root"] / "grid.png").exists()


def test_dvc_stage_reads_every_ablation_row_and_writes_what_the_report_links():
    from ssp.report.report import DEFAULT_SAMPLES

    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["samples"]
    rows = yaml.safe_load((ROOT / "params.yaml").read_text())["ablation"]["rows"]
    checkpoints = [d for d in stage["deps"] if d.startswith("runs/ablation/")]
    assert checkpoints == [f"runs/ablation/{row}/checkpoints" for row in rows]  # same rows, same order
    # the data, flow masks, prompts and stage-1 masks reach it through their fingerprints
    assert "runs/stage2_inputs.json" in stage["deps"]
    inputs = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["stage2_inputs"]
    assert {"data/flow", "data/prompts", "data/stage1_masks", "reports/validation.json"} <= set(inputs["deps"])
    assert stage["params"] == ["ablation"]
    assert [next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]] == [str(DEFAULT_SAMPLES)]
    assert f"--out {DEFAULT_SAMPLES}" in stage["cmd"] and "--runs runs/ablation" in stage["cmd"]
