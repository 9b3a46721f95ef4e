"""ssp.report.drawing: overlays with legends, the Fig. 8 sample grid layout, PNGs and their
MLflow artifact (the ablation grid from checkpoints is tests/report/test_samples.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ssp.data.palette import index_to_colour
from ssp.errors import SSPError
from ssp.report.drawing import (
    LINE_HEIGHT,
    PADDING,
    SWATCH,
    blend,
    legend,
    log_sample_grid,
    overlay,
    sample_grid,
    write_png,
)
from tests.avsbench_fixtures import CLASS_NAMES


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
    assert (strip[:, PADDING + SWATCH + 2 :] < 128).all(-1).sum() > 20  # and its name ("axe") as dark text


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
    grid = sample_grid({"frame": panels, "full": panels}, ["clip a\nA1: x", "clip b"], panel_size=40, label_width=70)
    assert grid.shape[1] == 70 + 2 * (2 + 40)
    assert grid.shape[0] > 2 * (40 + 2)  # two rows, gaps, then captions
    assert (grid[0:40, 70 + 2 : 70 + 2 + 40] == 0).all()  # first panel resized into its cell
    assert (grid[0:40, 70 + 44 : 70 + 84] == 255).all()
    with pytest.raises(SSPError, match="same clips"):
        sample_grid({"frame": panels, "full": panels[:1]}, ["a", "b"])


def test_write_png_and_log_sample_grid(tmp_path, mlflow_store):
    from ssp.ops.tracking import RunLogger, get_client

    grid = sample_grid({"frame": [_frame(32, 32, 0)]}, ["clip"], panel_size=32)
    path = write_png(tmp_path / "grid.png", grid)
    assert (np.asarray(Image.open(path)) == grid).all()
    with RunLogger("ssp-avss", "grid") as run:
        log_sample_grid(run, path)
        log_sample_grid(run, grid, name="again.png")
    names = sorted(a.path for a in get_client().list_artifacts(run.run_id, "samples"))
    assert names == ["samples/again.png", "samples/grid.png"]
