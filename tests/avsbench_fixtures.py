"""Tiny but complete AVSBench datasets on disk, for tests, in the RELEASED formats.

Two writers, one per official on-disk layout:

- :func:`write_semantic_dataset`: AVSBench-semantic (subsets v1s / v1m / v2).
- :func:`write_object_dataset`: AVSBench-object v1 (S4 and / or MS3), by default in the
  release tree (``Single-source/``, ``Multi-sources/``).

The conventions are those of the official AVSBench code (GitHub OpenNLPLab/AVSBench),
written down HERE, independently of ``ssp.data``, so that the tests do not share the
code's assumptions:

- ``label2idx.json`` is the released 1-based file ``{"background": 1, "accordion": 2,
  ...}`` (71 entries, :data:`RELEASED_LABEL2IDX`); a class's index in the masks is its
  position in the file (background 0), :data:`CLASS_INDEX`;
- colour masks use :data:`PALETTE`, computed by :func:`release_palette` the way
  ``get_v2_pallete`` of ``avs_scripts/avss/color_dataloader.py`` does;
- ``metadata.csv``: ``vid,uid,s_min,s_sec,a_obj,split,label`` with ``label`` the subset
  and ``a_obj`` the sounding classes joined with ``_`` (no quoting needed);
- S4: ``s4_meta_data.csv`` ``name,start,category,split``; MS3: ``ms3_meta_data.csv``
  ``video_id,split`` (both loaders index the columns by position).

Both writers are deterministic from ``seed``. Every object of a video is drawn as a
filled rectangle in its own vertical band of the image, so every labelled mask contains
exactly the classes of the video's ``objects`` (plus background) and the frames show
the objects where the masks say they are. Import them from any test file::

    from tests.avsbench_fixtures import write_semantic_dataset, write_object_dataset

(pytest's default ``prepend`` import mode puts ``tests/`` on ``sys.path``.)
Tests that need broken data write a valid dataset first and then break one file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
from PIL import Image

SAMPLE_RATE = 16_000

# The released label2idx.json: background, then the 70 sounding-object classes, in
# file order.
CLASS_NAMES: list[str] = [
    "background",
    "accordion",
    "airplane",
    "axe",
    "baby",
    "bassoon",
    "bell",
    "bird",
    "boat",
    "boy",
    "bus",
    "car",
    "cat",
    "cello",
    "clarinet",
    "clipper",
    "clock",
    "dog",
    "donkey",
    "drum",
    "duck",
    "elephant",
    "emergency-car",
    "erhu",
    "flute",
    "frying-food",
    "girl",
    "goose",
    "guitar",
    "gun",
    "guzheng",
    "hair-dryer",
    "handpan",
    "harmonica",
    "harp",
    "helicopter",
    "hen",
    "horse",
    "keyboard",
    "leopard",
    "lion",
    "man",
    "marimba",
    "missile-rocket",
    "motorcycle",
    "mower",
    "parrot",
    "piano",
    "pig",
    "pipa",
    "saw",
    "saxophone",
    "sheep",
    "sitar",
    "sorna",
    "squirrel",
    "tabla",
    "tank",
    "tiger",
    "tractor",
    "train",
    "trombone",
    "truck",
    "trumpet",
    "tuba",
    "ukulele",
    "utv",
    "vacuum-cleaner",
    "violin",
    "wolf",
    "woman",
]
assert len(CLASS_NAMES) == 71 and len(set(CLASS_NAMES)) == 71
RELEASED_LABEL2IDX: dict[str, int] = {name: k + 1 for k, name in enumerate(CLASS_NAMES)}  # the file
CLASS_INDEX: dict[str, int] = {name: k for k, name in enumerate(CLASS_NAMES)}  # the masks


def release_palette(num_classes: int = 71) -> np.ndarray:
    """``num_classes x 3`` uint8: row k = the colour of class index k in AVSBench masks.

    Transcribed from the official definition (``_getpallete`` in ``get_v2_pallete``,
    avs_scripts/avss/color_dataloader.py): the index's bits are read three at a time
    from the lowest; the t-th triple sets bit ``7 - t`` of red (its lowest bit), green
    (its middle bit) and blue (its highest bit).
    """
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for k in range(num_classes):
        rest, bit = k, 7
        red = green = blue = 0
        while rest > 0:
            red |= (rest & 1) << bit
            green |= ((rest >> 1) & 1) << bit
            blue |= ((rest >> 2) & 1) << bit
            rest >>= 3
            bit -= 1
        colours[k] = (red, green, blue)
    return colours


PALETTE = release_palette()

FRAMES_PER_SUBSET = {"v1s": 5, "v1m": 5, "v2": 10}

# Covers every subset and every split; v1s train has only frame 0 labelled.
DEFAULT_SEMANTIC_VIDEOS: list[dict[str, Any]] = [
    {"uid": "s4_dog_train", "subset": "v1s", "split": "train", "objects": ["dog"]},
    {"uid": "s4_cat_test", "subset": "v1s", "split": "test", "objects": ["cat"]},
    {"uid": "ms3_guitar_man_train", "subset": "v1m", "split": "train", "objects": ["guitar", "man"]},
    {"uid": "ms3_piano_woman_val", "subset": "v1m", "split": "val", "objects": ["piano", "woman"]},
    {"uid": "v2_car_dog_train", "subset": "v2", "split": "train", "objects": ["car", "dog"]},
    {"uid": "v2_violin_val", "subset": "v2", "split": "val", "objects": ["violin"]},
    {"uid": "v2_baby_girl_bird_test", "subset": "v2", "split": "test", "objects": ["baby", "girl", "bird"]},
]

# AVSBench-object S4: one category per video; only frame 1 of a train video is labelled.
DEFAULT_S4_VIDEOS: list[dict[str, Any]] = [
    {"name": "s4vid_dog_train", "category": "dog_barking", "split": "train", "start": 0},
    {"name": "s4vid_violin_train", "category": "playing_violin", "split": "train", "start": 2},
    {"name": "s4vid_dog_val", "category": "dog_barking", "split": "val", "start": 0},
    {"name": "s4vid_helicopter_test", "category": "helicopter", "split": "test", "start": 5},
]

# AVSBench-object MS3: several sources, binary masks of all of them, every frame labelled.
DEFAULT_MS3_VIDEOS: list[dict[str, Any]] = [
    {"name": "ms3vid_a_train", "split": "train", "n_objects": 2},
    {"name": "ms3vid_b_val", "split": "val", "n_objects": 1},
    {"name": "ms3vid_c_test", "split": "test", "n_objects": 3},
]


# ---------------------------------------------------------------------------------
# Drawing helpers
# ---------------------------------------------------------------------------------
def _object_boxes(rng: np.random.Generator, n_objects: int, height: int, width: int):
    """One box (y0, y1, x0, x1) per object, each inside its own vertical band, so
    objects never overlap and every object stays visible in the mask."""
    band = width // max(n_objects, 1)
    boxes = []
    for k in range(n_objects):
        bw = int(rng.integers(max(2, band // 2), max(3, band - 1)))
        bh = int(rng.integers(max(2, height // 4), max(3, height // 2)))
        x0 = k * band + int(rng.integers(0, max(1, band - bw)))
        y0 = int(rng.integers(0, max(1, height - bh)))
        boxes.append((y0, y0 + bh, x0, x0 + bw))
    return boxes


def _draw_frame(rng: np.random.Generator, boxes, colours, height: int, width: int) -> np.ndarray:
    """A smooth background with the objects as flat-coloured boxes (uint8 RGB)."""
    base = rng.integers(40, 200, size=3)
    yy, xx = np.mgrid[0:height, 0:width]
    frame = np.empty((height, width, 3), dtype=np.float64)
    for c in range(3):
        frame[..., c] = base[c] + 30 * np.sin((xx + 3 * c) / 7.0) * np.cos(yy / 9.0)
    for (y0, y1, x0, x1), colour in zip(boxes, colours):
        frame[y0:y1, x0:x1] = colour
    return np.clip(frame, 0, 255).astype(np.uint8)


def tone(hz: float, seconds: float, rate: int = SAMPLE_RATE, amplitude: float = 0.5) -> np.ndarray:
    """A pure sine (float64): the audio test signal of the log-mel and VGGish tests."""
    return amplitude * np.sin(2 * np.pi * hz * np.arange(int(round(seconds * rate))) / rate)


def _tone(seconds: int, pitch: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * pitch * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t))).astype(np.float32)


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _write_wav(path: Path, seconds: int, pitch: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), _tone(seconds, pitch), SAMPLE_RATE, subtype="PCM_16")


def _object_colour(class_index: int) -> np.ndarray:
    # A distinctive, deterministic RGB per class for the frames (not the mask palette).
    rng = np.random.default_rng(1000 + class_index)
    return rng.integers(0, 256, size=3)


# ---------------------------------------------------------------------------------
# AVSBench-semantic
# ---------------------------------------------------------------------------------
def write_semantic_dataset(
    root: str | Path,
    videos: list[dict[str, Any]] | None = None,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    semantic_labels: bool = False,
) -> Path:
    """Write an AVSBench-semantic dataset under ``root`` and return ``root``.

    ``videos``: one dict per video (default :data:`DEFAULT_SEMANTIC_VIDEOS`). Keys, all
    optional except ``uid``: ``subset`` (v1s / v1m / v2, default v2), ``split``
    (default train), ``label`` (the ``label`` column and folder name, default the
    subset: override it to write an inconsistent manifest), ``n_frames`` (default 5 for
    v1s / v1m, 10 for v2), ``objects`` (class names from :data:`CLASS_NAMES`, default
    ``["dog"]``), ``labelled`` (frame indices that get a mask; default frame 0 for v1s
    train, every frame otherwise), ``size`` (H, W) for this video, ``vid``, ``s_min``,
    ``s_sec``, ``a_obj`` (the cell as written; default the objects joined with ``_``).

    ``size`` is (height, width). Colour masks ``labels_rgb/{i}.png`` use :data:`PALETTE`
    at :data:`CLASS_INDEX`; ``label2idx.json`` is :data:`RELEASED_LABEL2IDX`.
    ``semantic_labels`` also writes ``labels_semantic/{i}.png`` (class indices, 8-bit
    grayscale), which the official loaders, and ssp, do not read.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    videos = DEFAULT_SEMANTIC_VIDEOS if videos is None else videos
    rng = np.random.default_rng(seed)
    rows = []
    for n, spec in enumerate(videos):
        uid = spec["uid"]
        subset = spec.get("subset", "v2")
        split = spec.get("split", "train")
        label = spec.get("label", subset)
        n_frames = int(spec.get("n_frames", FRAMES_PER_SUBSET.get(subset, 10)))
        objects = list(spec.get("objects", ["dog"]))
        height, width = spec.get("size", size)
        if "labelled" in spec:
            labelled = set(spec["labelled"])
        elif subset == "v1s" and split == "train":
            labelled = {0}
        else:
            labelled = set(range(n_frames))
        class_ids = [CLASS_INDEX[name] for name in objects]
        video_dir = root / label / uid
        for i in range(n_frames):
            boxes = _object_boxes(rng, len(objects), height, width)
            frame = _draw_frame(rng, boxes, [_object_colour(c) for c in class_ids], height, width)
            (video_dir / "frames").mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame).save(video_dir / "frames" / f"{i}.jpg", quality=95)
            if i in labelled:
                index = np.zeros((height, width), dtype=np.uint8)
                for (y0, y1, x0, x1), c in zip(boxes, class_ids):
                    index[y0:y1, x0:x1] = c
                _write_png(video_dir / "labels_rgb" / f"{i}.png", PALETTE[index])
                if semantic_labels:
                    _write_png(video_dir / "labels_semantic" / f"{i}.png", index)
        _write_wav(video_dir / "audio.wav", n_frames, pitch=220.0 + 40.0 * n)
        rows.append(
            {
                "vid": spec.get("vid", f"yt{n:04d}"),
                "uid": uid,
                "s_min": spec.get("s_min", 0),
                "s_sec": spec.get("s_sec", n % 50),
                "a_obj": spec.get("a_obj", "_".join(objects)),
                "split": split,
                "label": label,
            }
        )
    columns = ["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"]
    pd.DataFrame(rows, columns=columns).to_csv(root / "metadata.csv", index=False)
    (root / "label2idx.json").write_text(json.dumps(RELEASED_LABEL2IDX) + "\n")
    return root


# ---------------------------------------------------------------------------------
# AVSBench-object v1
# ---------------------------------------------------------------------------------
def write_object_dataset(
    root: str | Path,
    s4: bool = True,
    ms3: bool = True,
    s4_videos: list[dict[str, Any]] | None = None,
    ms3_videos: list[dict[str, Any]] | None = None,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    release_tree: bool = True,
) -> Path:
    """Write an AVSBench-object v1 dataset under ``root`` and return ``root``.

    ``s4`` / ``ms3`` choose the parts written. The tree of the official release
    (default; paths of ``avs_scripts/avs_s4/config.py`` and ``avs_ms3/config.py``, file
    names of their ``dataloader.py``)::

        Single-source/s4_meta_data.csv                name,start,category,split
        Single-source/s4_data/visual_frames/{split}/{category}/{name}/{name}_{1..5}.png
        Single-source/s4_data/gt_masks/{split}/{category}/{name}/{name}_{k}.png
                                                      (train: k=1 only)
        Single-source/s4_data/audio_wav/{split}/{category}/{name}.wav
        Multi-sources/ms3_meta_data.csv               video_id,split
        Multi-sources/ms3_data/visual_frames/{name}/{name}.mp4_{1..5}.png
        Multi-sources/ms3_data/gt_masks/{split}/{name}/{name}_{1..5}.png
        Multi-sources/ms3_data/audio_wav/{split}/{name}.wav

    ``release_tree=False`` writes the same files flat under ``root`` (no
    ``Single-source/s4_data`` / ``Multi-sources/ms3_data`` prefixes).

    S4 entries: ``name``, ``category``, ``split``, ``start``; MS3 entries: ``name``,
    ``split``, ``n_objects``. Masks are 8-bit grayscale, 0 or 255. ``size`` is (H, W).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    height, width = size

    if s4:
        csv_dir = root / "Single-source" if release_tree else root
        data_dir = csv_dir / "s4_data" if release_tree else root
        rows = []
        for n, spec in enumerate(DEFAULT_S4_VIDEOS if s4_videos is None else s4_videos):
            name, category, split = spec["name"], spec["category"], spec.get("split", "train")
            labelled = [1] if split == "train" else [1, 2, 3, 4, 5]
            for i in range(1, 6):
                (box,) = _object_boxes(rng, 1, height, width)
                frame = _draw_frame(rng, [box], [_object_colour(n)], height, width)
                _write_png(data_dir / "visual_frames" / split / category / name / f"{name}_{i}.png", frame)
                if i in labelled:
                    mask = np.zeros((height, width), dtype=np.uint8)
                    y0, y1, x0, x1 = box
                    mask[y0:y1, x0:x1] = 255
                    _write_png(data_dir / "gt_masks" / split / category / name / f"{name}_{i}.png", mask)
            _write_wav(data_dir / "audio_wav" / split / category / f"{name}.wav", 5, pitch=300.0 + 30.0 * n)
            rows.append({"name": name, "start": spec.get("start", 0), "category": category, "split": split})
        csv_dir.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows, columns=["name", "start", "category", "split"]).to_csv(
            csv_dir / "s4_meta_data.csv", index=False
        )

    if ms3:
        csv_dir = root / "Multi-sources" if release_tree else root
        data_dir = csv_dir / "ms3_data" if release_tree else root
        rows = []
        for n, spec in enumerate(DEFAULT_MS3_VIDEOS if ms3_videos is None else ms3_videos):
            name, split = spec["name"], spec.get("split", "train")
            n_objects = int(spec.get("n_objects", 2))
            for i in range(1, 6):
                boxes = _object_boxes(rng, n_objects, height, width)
                colours = [_object_colour(10 * n + k) for k in range(n_objects)]
                frame = _draw_frame(rng, boxes, colours, height, width)
                _write_png(data_dir / "visual_frames" / name / f"{name}.mp4_{i}.png", frame)
                mask = np.zeros((height, width), dtype=np.uint8)
                for y0, y1, x0, x1 in boxes:
                    mask[y0:y1, x0:x1] = 255
                _write_png(data_dir / "gt_masks" / split / name / f"{name}_{i}.png", mask)
            _write_wav(data_dir / "audio_wav" / split / f"{name}.wav", 5, pitch=500.0 + 30.0 * n)
            rows.append({"video_id": name, "split": split})
        csv_dir.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows, columns=["video_id", "split"]).to_csv(csv_dir / "ms3_meta_data.csv", index=False)

    return root
