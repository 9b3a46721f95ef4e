"""ssp.report.drawing: overlays with legends, the Fig. 8 sample grid layout, PNGs and their
MLflow artifact (the ablation grid from checkpoints is tests/report/test_samples.py); the
overlays that training (``write_overlays``) and ``ssp predict`` write, checked pixel by
pixel against the class colours of the release palette (tests/avsbench_fixtures.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
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
from tests.avsbench_fixtures import CLASS_NAMES, PALETTE


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


def _scene(h=48, w=64):
    """A textured frame and a class mask with two classes at known places."""
    yy, xx = np.mgrid[0:h, 0:w]
    frame = np.stack([(3 * xx) % 256, (5 * yy) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    mask = np.zeros((h, w), np.int64)
    mask[5:20, 8:30] = 7
    mask[25:45, 40:60] = 15
    return frame, mask


def _expected_blend(frame, mask, alpha=0.55):
    out = frame.astype(np.float64)
    fg = mask > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * PALETTE[mask[fg]]
    return out


def test_predict_writes_overlays_with_the_class_colour_where_the_mask_is(tmp_path):
    """``ssp predict``'s outputs for one frame with a known class map: masks/0.png holds the
    classes, overlays/0.png the frame tinted with each class's colour exactly there (and
    untouched elsewhere), then the legend; the video's frame shows the same colours."""
    import av

    from ssp.eval.predict import write_outputs

    frame, mask = _scene()
    per_frame, video_classes = write_outputs(
        tmp_path, [frame], [(mask, np.ones(mask.shape, np.float32))], CLASS_NAMES, [0.0], 1.0, None
    )
    assert video_classes == [7, 15]
    assert {c["index"] for c in per_frame[0]["classes"]} == {0, 7, 15}
    assert (np.asarray(Image.open(tmp_path / "masks" / "0.png")) == mask).all()
    image = np.asarray(Image.open(tmp_path / "overlays" / "0.png").convert("RGB"))
    error = np.abs(image[:48] - _expected_blend(frame, mask)).max()
    assert error <= 1, f"overlays/0.png is off by up to {error:.0f} from the frame blended with its mask"
    assert (image[:48][mask == 0] == frame[mask == 0]).all()
    assert (image[10, 15] != frame[10, 15]).any() and (image[30, 50] != frame[30, 50]).any()
    for k in (7, 15):  # the legend's swatches
        assert (image[48:] == PALETTE[k]).all(-1).sum() >= 8 * 8, k
    with av.open(str(tmp_path / "overlay.mp4")) as container:
        video = next(container.decode(video=0)).to_ndarray(format="rgb24")
    expected = _expected_blend(frame, mask)
    for y, x in ((12, 18), (35, 50), (2, 2)):  # inside each class, and background (H.264: near)
        assert np.abs(video[y, x] - expected[y, x]).max() <= 24, (y, x, video[y, x], expected[y, x])


class _Planted(torch.nn.Module):
    """A stand-in model whose scores are given: what write_overlays draws is known."""

    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def predict(self, inputs):
        assert "masks" not in inputs  # the model never sees the GT
        return self.scores


@pytest.mark.parametrize("stage", [1, 2])
def test_training_overlays_show_frame_gt_and_prediction_in_class_colours(tmp_path, stage):
    """write_overlays: frame | GT | prediction, side by side, the masks in palette colours."""
    from types import SimpleNamespace

    from ssp.engine.train import write_overlays

    frame, gt = _scene()
    pred = np.zeros_like(gt)
    pred[30:40, 4:20] = 1 if stage == 1 else 23  # not where the GT is: a prediction of its own
    if stage == 1:
        scores = torch.from_numpy(np.where(pred > 0, 3.0, -3.0))[None].float()  # N x S x S logits
    else:
        scores = torch.zeros(1, 71, *gt.shape)
        scores[0, 0] = 1.0
        scores[0, 23][torch.from_numpy(pred > 0)] = 2.0
    batch = {
        "frames": torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255,
        "masks": torch.from_numpy(gt)[None],
        "labelled": torch.tensor([True]),
        "uid": ["clip"],
        "video_index": torch.tensor([0]),
        "frame_index": torch.tensor([3]),
    }
    (path,) = write_overlays(
        _Planted(scores), [batch], SimpleNamespace(stage=stage), torch.device("cpu"), tmp_path, count=5
    )
    assert path.name == "clip_3.png"
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (48, 3 * 64, 3)
    assert (image[:, :64] == frame).all(), "left panel: not the frame"
    assert (image[:, 64:128] == PALETTE[gt]).all(), "middle panel: not the GT mask in class colours"
    assert (image[:, 128:] == PALETTE[pred]).all(), "right panel: not the prediction in class colours"
    assert (image[35, 128 + 10] == PALETTE[pred[35, 10]]).all() and pred[35, 10] > 0
