"""ssp samples: the clips it picks, the ablation grid built from checkpoints (run folders
{runs}/{row}/seed{seed}, the first seed of ablation.seeds), its MLflow artifact (new run or
the pipeline's parent run), the report's link to it, and the DVC stage's wiring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ssp.cli import main as cli
from ssp.errors import SSPError
from tests.avsbench_fixtures import PALETTE, write_semantic_dataset

ROOT = Path(__file__).resolve().parents[2]

TEST_VIDEOS = [  # manifest order; scenario in the last field
    ("v2_dog", ["dog"], "still_sounding"),
    ("v2_car_man", ["car", "man"], "moving_silent"),
    ("v2_cat", ["cat"], "still_sounding"),
    ("v2_piano", ["piano"], "all_sounding"),
    ("v2_baby", ["baby"], "moving_silent"),
]


def write_dataset(root: Path, scenarios: bool = True) -> Path:
    videos = [
        {"uid": uid, "subset": "v2", "split": "test", "objects": objects, "n_frames": 2}
        for uid, objects, _ in TEST_VIDEOS
    ]
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
    from ssp.models import SSPConfig, SSPModel
    from ssp.models.checkpoint import save_weights

    data = write_dataset(tmp_path / "data")
    flow, prompts, stage1 = tmp_path / "flow", tmp_path / "prompts", tmp_path / "stage1"
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255
    for uid, objects, _ in TEST_VIDEOS:
        for i in range(2):
            for path, image in (
                (flow / "v2" / uid / "mask" / f"{i}.png", mask),
                (stage1 / "v2" / uid / f"{i}.png", mask.T.copy()),
            ):
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(path)
        (prompts / "v2" / uid).mkdir(parents=True)
        (prompts / "v2" / uid / "prompts.json").write_text(
            json.dumps({"a1": f"a {objects[0]} makes a sound", "a2": objects})
        )
    torch.manual_seed(0)
    runs = tmp_path / "runs" / "ablation"
    configs = {
        "aavs": SSPConfig.tiny(2, num_points=64),
        "full": SSPConfig.tiny(2, num_points=64, pre_mask=True, text="vta", post_mask=True),
    }
    for row, config in configs.items():
        for seed in (3, 5):
            save_weights(runs / row / f"seed{seed}" / "checkpoints" / "best.safetensors", SSPModel(config))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"ablation": {"rows": ["full", "aavs"], "seeds": [3, 5]}}))
    return {
        "data": data,
        "flow": flow,
        "prompts": prompts,
        "stage1": stage1,
        "runs": runs,
        "params": params,
        "root": tmp_path,
    }


def samples_args(s, out: Path, *extra: str) -> list[str]:
    return [
        "samples",
        "--data",
        str(s["data"]),
        "--runs",
        str(s["runs"]),
        "--params",
        str(s["params"]),
        "--flow",
        str(s["flow"]),
        "--prompts",
        str(s["prompts"]),
        "--stage1-masks",
        str(s["stage1"]),
        "--out",
        str(out),
        "--panel-size",
        "64",
        *extra,
    ]


def test_samples_command_writes_the_grid_logs_it_and_the_report_links_it(ablation_setup, mlflow_store):
    from ssp.ops.tracking import get_client
    from ssp.report.report import build_report

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


# The predictions the rows' models are made to give (their scores replaced after the real
# predict loop): a class in a known region, different for each row, so that the grid
# shows which row is which. Keyed by the model's pre_mask switch: the full row / AAVS row.
PLANTED = {True: (5, "top"), False: (9, "left")}


def planted_region(size: int, where: str) -> np.ndarray:
    region = np.zeros((size, size), bool)
    if where == "top":
        region[: size // 2] = True
    else:
        region[:, : size // 2] = True
    return region


def blended(frame: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The frame with each pixel of class k > 0 mixed 45/55 with the release palette's
    colour of k (written here, not with ssp's drawing code)."""
    out = frame.astype(np.float64)
    fg = classes > 0
    out[fg] = 0.45 * out[fg] + 0.55 * PALETTE[classes[fg]]
    return out


def cell_of(grid: np.ndarray, row: int, column: int, size: int = 64, label_width: int = 110) -> np.ndarray:
    """Panel (row, column) of a sample grid: rows and columns are 2 px apart."""
    y, x = row * (size + 2), label_width + 2 + column * (size + 2)
    return grid[y : y + size, x : x + size]


def test_every_grid_row_shows_the_mask_it_claims(ablation_setup, monkeypatch):
    """Frame row = the frame on disk; GT row = the frame tinted where the mask file has a
    class, in that class's colour; each model row = the frame tinted where that row's model
    predicts, in the predicted class's colour; the legend has a swatch of every class shown."""
    import ssp.report.samples as samples

    real = samples.predict_batches

    def planted(model, batches, device=None, *args, **kwargs):
        label, where = PLANTED[bool(model.config.pre_mask)]
        for batch, scores in real(model, batches, device, *args, **kwargs):
            fake = torch.zeros_like(scores)  # N x C x S x S: argmax = background ...
            fake[:, label][:, torch.from_numpy(planted_region(scores.shape[-1], where))] = 1.0  # ... but here
            yield batch, fake

    monkeypatch.setattr(samples, "predict_batches", planted)
    s = ablation_setup
    out = s["root"] / "grid.png"
    assert cli(samples_args(s, out, "--no-track")) == 0  # rows: full, then aavs (ablation.rows)
    grid = np.asarray(Image.open(out).convert("RGB"))
    uids = ["v2_piano", "v2_car_man", "v2_dog", "v2_cat"]  # pick_clips' choice (its own test)
    shown = {5, 9}
    for c, uid in enumerate(uids):
        video = s["data"] / "v2" / uid
        frame = np.asarray(Image.open(video / "frames" / "0.jpg").convert("RGB"))
        assert (cell_of(grid, 0, c) == frame).all(), f"{uid}, row 0: not the frame on disk"
        # the GT colour mask decoded with the release palette, here
        rgb = np.asarray(Image.open(video / "labels_rgb" / "0.png").convert("RGB"))
        gt = (rgb[:, :, None, :] == PALETTE[None, None]).all(-1).argmax(-1)
        assert (gt > 0).sum() > 20, uid
        shown |= {int(k) for k in np.unique(gt) if k}
        for row, classes in (
            (3, gt),
            (4, np.where(planted_region(64, "top"), 5, 0)),  # Full model
            (5, np.where(planted_region(64, "left"), 9, 0)),  # AAVS
        ):
            error = np.abs(cell_of(grid, row, c) - blended(frame, classes)).max()
            assert error <= 1, f"{uid}, row {row}: off by up to {error:.0f} from its mask"
    # one legend under the grid for every class shown: a swatch in each one's colour
    below = grid[6 * 66 :]
    assert len(shown) == 2 + 5  # piano, car, man, dog, cat
    for k in shown:
        assert (below == PALETTE[k]).all(-1).sum() >= 8 * 8, k


def test_samples_go_into_the_pipeline_parent_run(ablation_setup, mlflow_store, monkeypatch):
    from ssp.ops.tracking import RunLogger, get_client
    from ssp.report.samples import make_samples

    s = ablation_setup
    with RunLogger("ssp-avss", "pipeline-x", parent_run_id="") as parent:
        # the reproduce flow exports one parent per experiment, as JSON
        monkeypatch.setenv("SSP_MLFLOW_PARENT_RUN_ID", json.dumps({"ssp-avs": "other", "ssp-avss": parent.run_id}))
        path, run_id = make_samples(
            s["data"],
            s["runs"],
            ["aavs"],
            s["root"] / "grid.png",
            flow=s["flow"],
            prompts=s["prompts"],
            stage1_masks=s["stage1"],
            uids=["v2_cat"],
            panel_size=64,
            seed=3,
        )
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
    assert "text_att/seed3/checkpoints/best.safetensors" in err and "pre_mask/seed3/checkpoints" in err
    assert not (s["root"] / "grid.png").exists()
    # another seed than the first of ablation.seeds: --seed
    code = cli(samples_args(s, s["root"] / "grid.png", "--rows", "aavs", "--seed", "4", "--no-track"))
    assert code == 2 and "aavs/seed4/checkpoints/best.safetensors" in capsys.readouterr().err


def test_dvc_stage_reads_the_ablation_matrix_runs_and_writes_what_the_report_links():
    from ssp.report.report import DEFAULT_SAMPLES
    from ssp.report.samples import run_dir

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    stage = stages["samples"]
    # the matrix's cells are the run folders the command reads: runs/ablation/{row}/seed{seed}
    cells = [next(iter(o)) if isinstance(o, dict) else o for o in stages["ablation"]["outs"]]  # persist: a mapping
    assert "runs/ablation/${item.row}/seed${item.seed}/checkpoints" in cells
    assert run_dir("runs/ablation", "${item.row}", "${item.seed}").as_posix() + "/checkpoints" in cells
    assert "runs/ablation" in stage["deps"]  # every row and seed
    # the data, flow masks, prompts and stage-1 masks reach it through their fingerprints
    assert "runs/stage2_inputs.json" in stage["deps"]
    inputs = stages["stage2_inputs"]
    assert {"data/flow", "data/prompts", "data/stage1_masks", "reports/validation.json"} <= set(inputs["deps"])
    assert stage["params"] == ["ablation"]
    assert [next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"]] == [str(DEFAULT_SAMPLES)]
    assert f"--out {DEFAULT_SAMPLES}" in stage["cmd"] and "--runs runs/ablation" in stage["cmd"]
    assert "--params params.yaml" in stage["cmd"]


def test_ablation_sample_grid_from_checkpoints(tmp_path):
    from ssp.models import SSPConfig, SSPModel
    from ssp.models.checkpoint import save_weights
    from ssp.report.samples import ablation_sample_grid

    root = write_semantic_dataset(
        tmp_path / "data",
        videos=[
            {"uid": "v2_dog", "subset": "v2", "split": "test", "objects": ["dog"], "n_frames": 2},
            {"uid": "v2_car_man", "subset": "v2", "split": "test", "objects": ["car", "man"], "n_frames": 2},
        ],
    )
    flow, prompts, stage1 = tmp_path / "flow", tmp_path / "prompts", tmp_path / "stage1"
    for uid, label in (("v2_dog", "v2"), ("v2_car_man", "v2")):
        (flow / label / uid / "mask").mkdir(parents=True)
        (stage1 / label / uid).mkdir(parents=True)
        (prompts / label / uid).mkdir(parents=True)
        m = np.zeros((64, 64), np.uint8)
        m[:, :32] = 255
        Image.fromarray(m).save(flow / label / uid / "mask" / "0.png")
        Image.fromarray(m.T.copy()).save(stage1 / label / uid / "0.png")
        (prompts / label / uid / "prompts.json").write_text(json.dumps({"a1": f"a {uid} plays", "a2": ["dog"]}))
    torch.manual_seed(0)
    checkpoint = tmp_path / "full.safetensors"
    save_weights(checkpoint, SSPModel(SSPConfig.tiny(2, num_points=64, pre_mask=True)))
    run_dir = tmp_path / "run_aavs"
    save_weights(run_dir / "checkpoints" / "best.safetensors", SSPModel(SSPConfig.tiny(2, num_points=64)))

    out = ablation_sample_grid(
        {"aavs": run_dir, "full": checkpoint},
        root,
        flow,
        prompts,
        stage1,
        ["v2_dog", "v2_car_man"],
        out=tmp_path / "grid.png",
        panel_size=64,
    )
    grid = np.asarray(Image.open(out))
    assert grid.shape[1] == 110 + 2 * (2 + 64)
    assert grid.shape[0] > 6 * (64 + 2)  # frame, flow, pre-mask, GT, two rows, captions, legend
    flow_cell = grid[66:130, 112:176]  # row 2 = the flow mask: left half white, right half black
    assert (flow_cell[:, :30] == 255).all() and (flow_cell[:, 34:] == 0).all()
    premask_cell = grid[132:196, 112:176]  # eq. 2: 1 on flow ∩ stage1, 0.5 on the rest of the union
    assert premask_cell[5, 5, 0] == 255 and premask_cell[50, 5, 0] in (127, 128) and premask_cell[50, 50, 0] == 0
    with pytest.raises(SSPError, match="no video with uid v2_cow"):
        ablation_sample_grid({"aavs": run_dir}, root, flow, prompts, stage1, ["v2_cow"])
