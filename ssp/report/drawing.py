"""Drawing code shared by ``ssp predict``, ``ssp samples`` (the Fig. 8 grid) and training's overlays.

- :func:`overlay`: a frame with its class mask blended in (palette colours) and a legend
  of the class names present, below the frame;
- :func:`sample_grid`: the paper's Fig. 8 layout: one column per clip, one row per
  panel kind (frame, flow mask, pre-mask, GT, each ablation row's prediction), a row
  name on the left of each row and a caption (the A1/A2 prompts) under each column;
- :func:`write_png` writes an image; :func:`log_sample_grid` logs a grid to an MLflow run.

Only drawing: building the ablation grid from trained runs (models, datasets, the predict
loop) is :func:`ssp.report.samples.ablation_sample_grid`.

Images are ``H x W x 3`` uint8 RGB numpy arrays throughout. Text is drawn with
``cv2.putText`` (Hershey fonts are built into OpenCV: no font file needed).
"""

from __future__ import annotations

import logging
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ssp.data.palette import voc_palette
from ssp.errors import SSPError
from ssp.fileio import atomic_path

log = logging.getLogger(__name__)

FONT_SCALE = 0.4
LINE_HEIGHT = 14  # pixels per text line at FONT_SCALE
CHAR_WIDTH = 7  # approximate pixels per character at FONT_SCALE (Hershey simplex)
SWATCH = 10  # legend colour square side
PADDING = 4
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)


def default_palette(num_classes: int = 256) -> np.ndarray:
    """The AVSBench colour of each class index (Pascal-VOC palette, 0 = black)."""
    return voc_palette(max(num_classes, 1))


def class_name(names: Sequence[str] | Mapping[int, str] | None, index: int) -> str:
    """Name of class ``index``; ``class {index}`` when the list does not have it."""
    if names is None:
        return f"class {index}"
    if isinstance(names, Mapping):
        return str(names.get(index, f"class {index}"))
    return str(names[index]) if 0 <= index < len(names) else f"class {index}"


# ---------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------
def put_text(image: np.ndarray, text: str, x: int, y: int, colour=TEXT_COLOUR, scale: float = FONT_SCALE) -> None:
    """Draw one line of ASCII text with its baseline at ``y`` (in place)."""
    ascii_text = text.encode("ascii", "replace").decode("ascii")  # Hershey fonts are ASCII only
    cv2.putText(image, ascii_text, (int(x), int(y)), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def wrap(text: str, width_px: int) -> list[str]:
    """Split ``text`` into lines that fit ``width_px`` (keeps explicit newlines)."""
    chars = max(4, (width_px - 2 * PADDING) // CHAR_WIDTH)
    lines: list[str] = []
    for paragraph in text.split("\n"):
        lines += textwrap.wrap(paragraph, chars) or [""]
    return lines


def text_panel(text: str, width: int, max_lines: int | None = None) -> np.ndarray:
    """A white ``? x width`` panel with ``text`` wrapped to the width."""
    lines = wrap(text, width)
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [lines[max_lines - 1][:-3] + "..."]
    panel = np.full((len(lines) * LINE_HEIGHT + 2 * PADDING, width, 3), BACKGROUND, np.uint8)
    for i, line in enumerate(lines):
        put_text(panel, line, PADDING, PADDING + (i + 1) * LINE_HEIGHT - 3)
    return panel


# ---------------------------------------------------------------------------------------
# Overlay + legend
# ---------------------------------------------------------------------------------------
def colourise(class_mask: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """``H x W`` class indices -> ``H x W x 3`` palette colours."""
    class_mask = np.asarray(class_mask, dtype=np.int64)
    palette = default_palette(int(class_mask.max(initial=0)) + 1) if palette is None else np.asarray(palette)
    if class_mask.min(initial=0) < 0 or class_mask.max(initial=0) >= len(palette):
        raise SSPError(f"class indices must be in [0, {len(palette) - 1}] for this palette")
    return palette[class_mask].astype(np.uint8)


def blend(
    frame: np.ndarray, class_mask: np.ndarray, palette: np.ndarray | None = None, alpha: float = 0.55
) -> np.ndarray:
    """The frame with every non-background pixel tinted by its class colour."""
    frame = np.asarray(frame, dtype=np.uint8)
    if frame.shape[:2] != np.shape(class_mask):
        raise SSPError(f"mask {np.shape(class_mask)} does not match the frame {frame.shape[:2]}")
    colours = colourise(class_mask, palette).astype(np.float32)
    out = frame.astype(np.float32)
    foreground = np.asarray(class_mask) > 0
    out[foreground] = (1 - alpha) * out[foreground] + alpha * colours[foreground]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def legend(classes: Sequence[int], palette: np.ndarray | None, names, width: int) -> np.ndarray:
    """A white strip, ``width`` wide, listing colour swatch + name of each class, wrapped
    over as many lines as needed ("background only" when ``classes`` is empty)."""
    palette = default_palette(max([*classes, 0]) + 1) if palette is None else np.asarray(palette)
    entries = [(int(c), class_name(names, int(c))) for c in classes]
    if not entries:
        return text_panel("background only", width)
    lines: list[list[tuple[int, str, int]]] = [[]]
    x = PADDING
    for index, name in entries:
        item_width = SWATCH + 4 + len(name) * CHAR_WIDTH + 10
        if lines[-1] and x + item_width > width:
            lines.append([])
            x = PADDING
        lines[-1].append((index, name, x))
        x += item_width
    strip = np.full((len(lines) * LINE_HEIGHT + 2 * PADDING, width, 3), BACKGROUND, np.uint8)
    for row, items in enumerate(lines):
        top = PADDING + row * LINE_HEIGHT + 1
        for index, name, x0 in items:
            colour = tuple(int(v) for v in palette[index])
            strip[top : top + SWATCH, x0 : x0 + SWATCH] = colour
            strip[top : top + SWATCH, x0 : x0 + 1] = strip[top : top + SWATCH, x0 + SWATCH - 1 : x0 + SWATCH] = 96
            strip[top : top + 1, x0 : x0 + SWATCH] = strip[top + SWATCH - 1 : top + SWATCH, x0 : x0 + SWATCH] = 96
            put_text(strip, name, x0 + SWATCH + 4, top + SWATCH - 1)
    return strip


def overlay(
    frame: np.ndarray,
    class_mask: np.ndarray,
    palette: np.ndarray | None = None,
    names: Sequence[str] | Mapping[int, str] | None = None,
    alpha: float = 0.55,
    classes: Sequence[int] | None = None,
) -> np.ndarray:
    """The frame blended with its class mask, with a legend of the classes below it.

    ``classes`` fixes the legend's entries (e.g. every class of a whole video, so that all
    frames of the overlay video have the same height); default: the non-background
    classes present in ``class_mask``.
    """
    if classes is None:
        classes = [int(c) for c in np.unique(class_mask) if c != 0]
    image = blend(frame, class_mask, palette, alpha)
    return np.concatenate([image, legend(classes, palette, names, image.shape[1])], axis=0)


def mask_panel(mask: np.ndarray) -> np.ndarray:
    """A binary or [0, 1] mask as a gray RGB image (1 = white)."""
    gray = np.clip(np.asarray(mask, dtype=np.float32) * 255 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


# ---------------------------------------------------------------------------------------
# The sample grid
# ---------------------------------------------------------------------------------------
def fit_panel(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``(height, width)`` (nearest: keeps masks crisp; panels are small)."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[:2] == size:
        return image
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def sample_grid(
    rows: Mapping[str, Sequence[np.ndarray]],
    clips: Sequence[str],
    panel_size: int | tuple[int, int] = 128,
    label_width: int = 110,
    caption_lines: int = 6,
) -> np.ndarray:
    """Fig. 8-style grid: a column per clip, a row per entry of ``rows``.

    ``rows`` maps a row name (shown at the left) to one panel per clip, in the order of
    ``clips``; ``clips`` are the column captions (clip id and prompts), drawn under the
    columns, wrapped to the panel width and cut at ``caption_lines`` lines. Panels of
    other sizes are resized to ``panel_size``. Returns the grid image.
    """
    if not rows:
        raise SSPError("sample_grid needs at least one row")
    height, width = (panel_size, panel_size) if isinstance(panel_size, int) else panel_size
    for name, panels in rows.items():
        if len(panels) != len(clips):
            raise SSPError(
                f"row {name!r} has {len(panels)} panels for {len(clips)} clips (every row must show the same clips)"
            )
    gap = 2
    grid_rows = []
    for name, panels in rows.items():
        label = np.full((height, label_width, 3), BACKGROUND, np.uint8)
        for i, line in enumerate(wrap(name, label_width)[: max(1, height // LINE_HEIGHT)]):
            put_text(label, line, PADDING, height // 2 - 4 + i * LINE_HEIGHT)
        cells = [label]
        for panel in panels:
            cells += [np.full((height, gap, 3), BACKGROUND, np.uint8), fit_panel(panel, (height, width))]
        grid_rows.append(np.concatenate(cells, axis=1))
        grid_rows.append(np.full((gap, grid_rows[-1].shape[1], 3), BACKGROUND, np.uint8))
    captions = [text_panel(c, width, caption_lines) for c in clips]
    caption_height = max([c.shape[0] for c in captions], default=0)
    caption_row = [np.full((caption_height, label_width, 3), BACKGROUND, np.uint8)]
    for caption in captions:
        padded = np.full((caption_height, width, 3), BACKGROUND, np.uint8)
        padded[: caption.shape[0]] = caption
        caption_row += [np.full((caption_height, gap, 3), BACKGROUND, np.uint8), padded]
    grid_rows.append(np.concatenate(caption_row, axis=1))
    return np.concatenate(grid_rows, axis=0)


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an RGB image as PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(tmp, format="PNG")
    return path


# ---------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------
def log_sample_grid(
    run_logger: Any, grid: str | Path | np.ndarray, artifact_path: str = "samples", name: str = "sample_grid.png"
) -> None:
    """Log a grid image (a PNG path or an RGB array) as an artifact of an MLflow run
    (a :class:`ssp.ops.tracking.RunLogger`; a disabled logger does nothing)."""
    if isinstance(grid, (str, Path)):
        run_logger.log_artifact(Path(grid), artifact_path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        run_logger.log_artifact(write_png(Path(tmp) / name, grid), artifact_path)
