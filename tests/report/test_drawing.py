"""ssp.report.drawing: overlays with legends, the Fig. 8 sample grid, the ablation grid from
checkpoints and its MLflow artifact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.avsbench_fixtures import CLASS_NAMES, write_semantic_dataset
from ssp.data.palette import index_to_colour
from ssp.errors import SSPError
from ssp.report.drawing import (
    LINE_HEIGHT,
    PADDING,
    SWATCH,
    ablation_sample_grid,
    blend,
    legend,
    log_sample_grid,
    overlay,
    sample_grid,
)


def _frame(h=40, w=60, value=100):
    return np.full((h, w, 3), value, np.uint8)


def test_overlay_tints_only_foreground_and_adds_a_legend_below():
    frame = _frame()
    mask = np.zeros((40, 60), np.int64)
    mask[10:20, 5:25] = 3  # (128, 128, 0)
    image = overlay(frame, mask, names=CLASS_NAMES, alpha=0.5)
    assert image.shape[1] == 60 and image.shape[0] == 40 + LINE_HEIGHT + 2 * PADDING  # one legend line
    assert (image[:40][mask == 0] == 100).all()  # background untouched
    assert (image[15, 10] == [114, 114, 50]).all()  # 0.5 * 100 + 0.5 * (128, 128, 0), rounded
    strip = image[40:]
    colour = index_to_colour(np.array([[3]]))[0, 0]
    assert (strip == colour).all(-1).sum() >= 8 * 8  # the class's swatch is drawn
    assert (strip[:, PADDING + SWATCH + 2:] < 128).all(-1).sum() > 20  # and its name ("axe") as dark text


def test_legend_wraps_and_lists_background_only_when_empty():
    one = legend([1], None, CLASS_NAMES, 80)
    many = legend(list(range(1, 13)), None, CLASS_NAMES, 80)
    assert many.shape[0] >= one.shape[0] + 5 * LINE_HEIGHT  # several lines on a narrow frame
    empty = legend([], None, CLASS_NAMES, 80)
    assert empty.shape[1] == 80 and (empty < 128).any()  # "background only" is written


def test_overlay_with_fixed_classes_has_the_same_height_for_every_frame():
    a, b = np.zeros((40, 60), np.int64), np.zeros((40, 60), np.int64)
    a[:5, :5] = 1
    shapes = {overlay(_frame(), m, names=CLASS_NAMES, classes=[1, 2, 3, 4, 5, 6]).shape for m in (a, b)}
    assert len(shapes) == 1


def test_blend_rejects_a_mask_of_another_size():
    with pytest.raises(SSPError, match="does not match"):
        blend(_frame(), np.zeros((10, 10), np.int64))


def test_sample_grid_layout_and_same_clips_per_row():
    panels = [_frame(32, 32, 0), _frame(50, 20, 255)]
    grid = sample_grid({"frame": panels, "full": panels}, ["clip a\nA1: x", "clip b"], panel_size=40,
                       label_width=70)
    assert grid.shape[1] == 70 + 2 * (2 + 40)
    assert grid.shape[0] > 2 * (40 + 2)  # two rows, gaps, then captions
    assert (grid[0:40, 70 + 2: 70 + 2 + 40] == 0).all()  # first panel resized into its cell
    assert (grid[0:40, 70 + 44: 70 + 84] == 255).all()
    with pytest.raises(SSPError, match="same clips"):
        sample_grid({"frame": panels, "full": panels[:1]}, ["a", "b"])


def test_ablation_sample_grid_from_checkpoints(tmp_path, mlflow_store):
    from ssp.models.checkpoint import save_weights
    from ssp.models import SSPConfig, SSPModel
    from ssp.ops.tracking import RunLogger

    root = write_semantic_dataset(tmp_path / "data", videos=[
        {"uid": "v2_dog", "subset": "v2", "split": "test", "objects": ["dog"], "n_frames": 2},
        {"uid": "v2_car_man", "subset": "v2", "split": "test", "objects": ["car", "man"], "n_frames": 2},
    ])
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

    out = ablation_sample_grid({"aavs": run_dir, "full": checkpoint}, root, flow, prompts, stage1,
                               ["v2_dog", "v2_car_man"], out=tmp_path / "grid.png", panel_size=64)
    grid = np.asarray(Image.open(out))
    assert grid.shape[1] == 110 + 2 * (2 + 64)
    assert grid.shape[0] > 6 * (64 + 2)  # frame, flow, pre-mask, GT, two rows, captions, legend
    flow_cell = grid[66:130, 112:176]  # row 2 = the flow mask: left half white, right half black
    assert (flow_cell[:, :30] == 255).all() and (flow_cell[:, 34:] == 0).all()
    premask_cell = grid[132:196, 112:176]  # eq. 2: 1 on flow ∩ stage1, 0.5 on the rest of the union
    assert premask_cell[5, 5, 0] == 255 and premask_cell[50, 5, 0] in (127, 128) and premask_cell[50, 50, 0] == 0

    with RunLogger("ssp-avss", "grid") as run:
        log_sample_grid(run, out)
        log_sample_grid(run, grid, name="again.png")
    from ssp.ops.tracking import get_client

    names = sorted(a.path for a in get_client().list_artifacts(run.run_id, "samples"))
    assert names == ["samples/again.png", "samples/grid.png"]
