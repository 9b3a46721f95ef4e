"""AVSBench readers: both on-disk layouts, one record type, torch datasets on top.

Layouts (``docs/design.md``, "Datasets"):
- ``semantic``: AVSBench-semantic (subsets v1s = S4, v1m = MS3, v2 = AVSS).
  ``metadata.csv`` (vid,uid,s_min,s_sec,a_obj,split,label), ``label2idx.json``,
  where the ``label`` column holds the SUBSET (v1s / v1m / v2, as in the official
  AVSS loader) and ``a_obj`` the sounding object categories (joined with ``_``);
  ``{root}/{label}/{uid}/frames/{i}.jpg``, ``audio.wav``, ``labels_rgb/{i}.png``.
  ``label2idx.json`` is the released 1-based file (``{"background": 1, "accordion":
  2, ...}``); a class's index in the masks is its position in it (background 0), see
  :func:`load_label2idx`. Masks are read from ``labels_rgb`` (palette colours), as the
  official loader does; a ``labels_semantic`` folder is ignored.
  The generated benchmark (``ssp synth``) uses this layout and adds per video
  ``scene.json`` (ground truth of the scene, for the ``scene`` prompt backend and
  the per-scenario tables).
- ``object``: AVSBench-object v1 (S4 ``s4_meta_data.csv``, MS3 ``ms3_meta_data.csv``),
  either flat under the root or as the official release tree
  (``Single-source/s4_meta_data.csv`` + ``Single-source/s4_data/...``,
  ``Multi-sources/ms3_meta_data.csv`` + ``Multi-sources/ms3_data/...``).
  S4 becomes subset ``v1s``, MS3 ``v1m``.

Every reader returns :class:`VideoRecord` objects. Preprocessing stages write their
outputs under ``{out}/{record.rel_dir}/...`` so outputs mirror the dataset layout:
``{label}/{uid}`` (semantic), ``v1s/{split}/{category}/{name}`` (S4) and
``v1m/{split}/{name}`` (MS3). Frame ``i`` of a record (0-based) is
``record.frame_paths[i]`` in both layouts, and per-frame outputs use that ``i``.

The readers build paths from the manifest and the labelling rules; they do not check
that every referenced file exists (that is :mod:`ssp.data.validation`'s job, which
reports all bad files at once). Reading a missing or broken file raises a
:class:`~ssp.errors.DataError` naming it.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from ssp.data.palette import NUM_CLASSES, colour_to_index
from ssp.errors import DataError, SSPError

Layout = Literal["semantic", "object"]
Subset = Literal["v1s", "v1m", "v2"]
Split = Literal["train", "val", "test"]

SUBSETS: tuple[str, ...] = ("v1s", "v1m", "v2")
SPLITS: tuple[str, ...] = ("train", "val", "test")
LAYOUTS: tuple[str, ...] = ("semantic", "object")
MASK_TASKS: tuple[str, ...] = ("avs", "avss")
FRAMES_PER_SUBSET = {"v1s": 5, "v1m": 5, "v2": 10}
SAMPLE_RATE = 16_000

SEMANTIC_CSV = "metadata.csv"
SEMANTIC_COLUMNS: tuple[str, ...] = ("vid", "uid", "s_min", "s_sec", "a_obj", "split", "label")
LABEL2IDX_JSON = "label2idx.json"

# AVSBench-object v1: (csv name, folder of the official release, data folder inside it)
S4_CSV, S4_RELEASE_DIR, S4_DATA_DIR = "s4_meta_data.csv", "Single-source", "s4_data"
MS3_CSV, MS3_RELEASE_DIR, MS3_DATA_DIR = "ms3_meta_data.csv", "Multi-sources", "ms3_data"
OBJECT_FRAMES = 5  # both S4 and MS3 clips are 5 s, one frame per second, files numbered 1..5


# AVSBench-semantic's 70 sound-source classes in the order of the released label2idx.json
# (after background). `ssp synth` fills the label slots its K classes leave free with them.
AVSBENCH_CLASS_NAMES = (
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
)


@dataclass
class VideoRecord:
    uid: str  # unique id (semantic: `uid` column; object: video name)
    subset: str  # v1s | v1m | v2
    split: str  # train | val | test
    category: str  # semantic: `a_obj` column; S4: category; MS3: "" (multi-source)
    root: Path  # dataset root
    rel_dir: str  # per-video folder relative to root; outputs mirror it
    frame_paths: list[Path]  # one per second, in order
    audio_path: Path
    mask_paths: list[Path | None]  # colour (semantic) or binary (object) masks; None = unlabelled
    labelled: list[bool] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)  # a_obj, split into names
    layout: str = "semantic"
    start: float = 0.0  # clip start in the source video (s), if known

    @property
    def num_frames(self) -> int:
        return len(self.frame_paths)

    @property
    def labelled_indices(self) -> list[int]:
        """0-based indices of the frames that have a ground-truth mask."""
        return [i for i, flag in enumerate(self.labelled) if flag]

    @property
    def video_dir(self) -> Path | None:
        """The video's own folder (semantic layout: ``{root}/{label}/{uid}``, where e.g.
        ``scene.json`` of the generated benchmark lives); None for the object layout,
        whose files are spread over ``visual_frames/``, ``gt_masks/``, ``audio_wav/``."""
        return self.root / self.rel_dir if self.layout == "semantic" else None

    def referenced_paths(self) -> list[Path]:
        """Every file the record points at: frames, audio and the masks of labelled frames."""
        paths = [*self.frame_paths, self.audio_path]
        paths += [p for p in self.mask_paths if p is not None]
        return paths

    def display_path(self, path: str | Path) -> str:
        """``path`` relative to the dataset root when it lies inside it (for messages)."""
        return _display_path(path, self.root)


# ---------------------------------------------------------------------------------
# Layout detection
# ---------------------------------------------------------------------------------
def _display_path(path: str | Path, root: str | Path | None = None) -> str:
    path = Path(path)
    if root is not None:
        try:
            return str(path.relative_to(root))
        except ValueError:
            pass
    return str(path)


def _find_object_part(root: Path, csv_name: str, release_dir: str, data_dir: str) -> tuple[Path, Path] | None:
    """``(csv, data folder)`` of one AVSBench-object part (S4 or MS3), or None."""
    for csv_dir in (root, root / release_dir):
        csv = csv_dir / csv_name
        if csv.is_file():
            data = csv_dir / data_dir
            return csv, data if data.is_dir() else csv_dir
    return None


def detect_layout(root: str | Path) -> str:
    """``"semantic"`` if ``root`` holds ``metadata.csv``, ``"object"`` if it holds an
    AVSBench-object manifest (S4 and/or MS3, flat or release tree). A folder holding
    both is read as semantic; ``load_records(root, layout="object")`` overrides that."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder does not exist")
    if (root / SEMANTIC_CSV).is_file():
        return "semantic"
    if _find_object_part(root, S4_CSV, S4_RELEASE_DIR, S4_DATA_DIR) or _find_object_part(
        root, MS3_CSV, MS3_RELEASE_DIR, MS3_DATA_DIR
    ):
        return "object"
    raise DataError(
        root,
        f"not an AVSBench dataset: no {SEMANTIC_CSV} (AVSBench-semantic) and no {S4_CSV} / "
        f"{MS3_CSV} (AVSBench-object, also looked in {S4_RELEASE_DIR}/ and {MS3_RELEASE_DIR}/)",
    )


# ---------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------
def _read_csv(path: Path, root: Path) -> pd.DataFrame:
    shown = _display_path(path, root)
    try:
        # everything as text: uids such as "0001" or "1e5" must stay what they are
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(shown, "manifest is missing") from None
    except pd.errors.EmptyDataError:
        raise DataError(shown, "manifest is empty (no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(shown, f"manifest is not a readable CSV ({e})") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _require_columns(df, columns: Iterable[str], shown: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(shown, f"missing column(s) {', '.join(missing)}; header is {','.join(df.columns)}")


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return 0.0


def split_objects(a_obj: str) -> list[str]:
    """``a_obj`` cell -> object names. Real AVSBench joins several names with ``_``
    (multi-word class names use ``-``, e.g. ``emergency-car``); we also accept comma,
    semicolon and ``|``."""
    return [name.strip() for name in re.split(r"[,;|_]", a_obj or "") if name.strip()]


def _check_filters(subsets: Iterable[str] | None, splits: Iterable[str] | None):
    subsets = None if subsets is None else tuple(subsets)
    splits = None if splits is None else tuple(splits)
    for value in subsets or ():
        if value not in SUBSETS:
            raise SSPError(f"unknown subset {value!r}; choose from {', '.join(SUBSETS)}")
    for value in splits or ():
        if value not in SPLITS:
            raise SSPError(f"unknown split {value!r}; choose from {', '.join(SPLITS)}")
    return subsets, splits


def _indexed_count(folder: Path, suffix: str) -> int | None:
    """1 + the largest ``{i}{suffix}`` index in ``folder`` (None if none / no folder).
    Gaps stay in the count, so a missing file shows up as a missing path, not a shift."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return None
    indices = [int(n[: -len(suffix)]) for n in names if n.endswith(suffix) and n[: -len(suffix)].isdigit()]
    return max(indices) + 1 if indices else None


def _semantic_records(root: Path, subsets, splits) -> list[VideoRecord]:
    csv = root / SEMANTIC_CSV
    shown = _display_path(csv, root)
    df = _read_csv(csv, root)
    _require_columns(df, ("uid", "split", "label"), shown)
    records = []
    for row_number, row in enumerate(df.to_dict("records")):
        line = row_number + 2  # 1-based, after the header
        uid, subset, split = row["uid"].strip(), row["label"].strip(), row["split"].strip()
        if not uid:
            raise DataError(shown, f"line {line}: empty uid")
        if subset not in SUBSETS:
            raise DataError(shown, f"line {line} ({uid}): label {subset!r} is not a subset ({', '.join(SUBSETS)})")
        if split not in SPLITS:
            raise DataError(shown, f"line {line} ({uid}): split {split!r} is not one of {', '.join(SPLITS)}")
        if (subsets and subset not in subsets) or (splits and split not in splits):
            continue
        rel_dir = f"{subset}/{uid}"
        video_dir = root / rel_dir
        num_frames = _indexed_count(video_dir / "frames", ".jpg") or FRAMES_PER_SUBSET[subset]
        # Official rule: a v1s (S4) train video has only its first frame annotated.
        first_only = subset == "v1s" and split == "train"
        labelled = [i == 0 for i in range(num_frames)] if first_only else [True] * num_frames
        a_obj = row.get("a_obj", "").strip()
        records.append(
            VideoRecord(
                uid=uid,
                subset=subset,
                split=split,
                category=a_obj,
                root=root,
                rel_dir=rel_dir,
                frame_paths=[video_dir / "frames" / f"{i}.jpg" for i in range(num_frames)],
                audio_path=video_dir / "audio.wav",
                mask_paths=[video_dir / "labels_rgb" / f"{i}.png" if labelled[i] else None for i in range(num_frames)],
                labelled=labelled,
                objects=split_objects(a_obj),
                layout="semantic",
                start=60.0 * _parse_float(row.get("s_min", "")) + _parse_float(row.get("s_sec", "")),
            )
        )
    return records


def _column_or_position(df, name: str, position: int, shown: str) -> str:
    """Column ``name`` if the header has it, else the column at ``position`` (the
    official loaders index these manifests by position)."""
    if name in df.columns:
        return name
    if position < len(df.columns):
        return df.columns[position]
    raise DataError(shown, f"missing column {name!r}; header is {','.join(df.columns)}")


def _object_rows(
    root: Path, part: tuple[Path, Path], splits, columns: dict[str, tuple[str, int]], id_column: str | None = None
) -> Iterator[tuple[Path, dict[str, str]]]:
    """``(data folder, row)`` of one AVSBench-object manifest, rows stripped and checked,
    in the wanted splits. ``columns``: name -> (header name, position when the header
    lacks it); ``id_column``: header name of the video name when present (MS3's
    ``video_id``), else ``columns["name"]``."""
    csv, data = part
    shown = _display_path(csv, root)
    df = _read_csv(csv, root)
    _require_columns(df, ("split",), shown)
    where = {key: _column_or_position(df, name, position, shown) for key, (name, position) in columns.items()}
    if id_column is not None and id_column in df.columns:
        where["name"] = id_column
    for row_number, row in enumerate(df.to_dict("records")):
        values = {key: row[column].strip() for key, column in where.items()}
        values["split"] = row["split"].strip()
        _check_object_row(values["name"], values["split"], row_number, shown)
        if splits and values["split"] not in splits:
            continue
        yield data, values


def _s4_records(root: Path, part: tuple[Path, Path], splits) -> list[VideoRecord]:
    records = []
    columns = {"name": ("name", 0), "start": ("start", 1), "category": ("category", 2)}
    for data, row in _object_rows(root, part, splits, columns):
        name, category, split = row["name"], row["category"], row["split"]
        frames_dir = data / "visual_frames" / split / category / name
        masks_dir = data / "gt_masks" / split / category / name
        labelled = [i == 0 for i in range(OBJECT_FRAMES)] if split == "train" else [True] * OBJECT_FRAMES
        records.append(
            VideoRecord(
                uid=name,
                subset="v1s",
                split=split,
                category=category,
                root=root,
                rel_dir=f"v1s/{split}/{category}/{name}",
                frame_paths=[frames_dir / f"{name}_{i + 1}.png" for i in range(OBJECT_FRAMES)],
                audio_path=data / "audio_wav" / split / category / f"{name}.wav",
                mask_paths=[masks_dir / f"{name}_{i + 1}.png" if labelled[i] else None for i in range(OBJECT_FRAMES)],
                labelled=labelled,
                objects=[category] if category else [],
                layout="object",
                start=_parse_float(row["start"]),
            )
        )
    return records


def _ms3_records(root: Path, part: tuple[Path, Path], splits) -> list[VideoRecord]:
    records = []
    for data, row in _object_rows(root, part, splits, {"name": ("name", 0)}, id_column="video_id"):
        name, split = row["name"], row["split"]
        masks_dir = data / "gt_masks" / split / name
        records.append(
            VideoRecord(
                uid=name,
                subset="v1m",
                split=split,
                category="",
                root=root,
                rel_dir=f"v1m/{split}/{name}",
                # frames were extracted from "{name}.mp4", hence the odd file names
                frame_paths=[data / "visual_frames" / name / f"{name}.mp4_{i + 1}.png" for i in range(OBJECT_FRAMES)],
                audio_path=data / "audio_wav" / split / f"{name}.wav",
                mask_paths=[masks_dir / f"{name}_{i + 1}.png" for i in range(OBJECT_FRAMES)],
                labelled=[True] * OBJECT_FRAMES,
                objects=[],
                layout="object",
            )
        )
    return records


def _object_records(root: Path, subsets, splits) -> list[VideoRecord]:
    records = []
    s4 = _find_object_part(root, S4_CSV, S4_RELEASE_DIR, S4_DATA_DIR)
    if s4 and (not subsets or "v1s" in subsets):
        records += _s4_records(root, s4, splits)
    ms3 = _find_object_part(root, MS3_CSV, MS3_RELEASE_DIR, MS3_DATA_DIR)
    if ms3 and (not subsets or "v1m" in subsets):
        records += _ms3_records(root, ms3, splits)
    return records


def _check_object_row(name: str, split: str, row_number: int, shown: str) -> None:
    line = row_number + 2
    if not name:
        raise DataError(shown, f"line {line}: empty video name")
    if split not in SPLITS:
        raise DataError(shown, f"line {line} ({name}): split {split!r} is not one of {', '.join(SPLITS)}")


def load_records(
    root: str | Path,
    layout: str = "auto",
    subsets: Iterable[str] | None = None,
    splits: Iterable[str] | None = None,
) -> list[VideoRecord]:
    """Read a dataset's manifest(s) into :class:`VideoRecord` objects, in manifest order.

    ``layout``: ``"auto"`` (see :func:`detect_layout`), ``"semantic"`` or ``"object"``.
    ``subsets`` / ``splits``: keep only these (default: all).
    """
    root = Path(root)
    subsets, splits = _check_filters(subsets, splits)
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "semantic":
        return _semantic_records(root, subsets, splits)
    if layout == "object":
        if not root.is_dir():
            raise DataError(root, "dataset folder does not exist")
        if not (
            _find_object_part(root, S4_CSV, S4_RELEASE_DIR, S4_DATA_DIR)
            or _find_object_part(root, MS3_CSV, MS3_RELEASE_DIR, MS3_DATA_DIR)
        ):
            raise DataError(root, f"no AVSBench-object manifest ({S4_CSV} or {MS3_CSV})")
        return _object_records(root, subsets, splits)
    raise SSPError(f"unknown layout {layout!r}; choose from auto, {', '.join(LAYOUTS)}")


# ---------------------------------------------------------------------------------
# Classes
# ---------------------------------------------------------------------------------
def read_json(path: Path, missing: str, root: Path | None = None) -> Any:
    """A JSON file's content. Missing: a :class:`DataError` saying ``missing``; not JSON: a
    DataError saying so; both name the file (relative to ``root`` when given)."""
    shown = _display_path(path, root)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(shown, missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(shown, f"not valid JSON ({e})") from None


LABEL2IDX_FORM = (
    'expected the released AVSBench form {"background": 1, "accordion": 2, ...}: '
    "indices 1..N in file order, background first"
)


class _Pairs(list):
    """A JSON object read as its (key, value) pairs, in file order, duplicates kept."""


def _label2idx_pairs(path: Path, shown: str) -> list[tuple[str, int]]:
    """The (name, index) pairs of ``label2idx.json`` in file order, duplicates kept."""
    try:
        pairs = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_Pairs)
    except FileNotFoundError:
        raise DataError(shown, "class list is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(shown, f"not valid JSON ({e})") from None
    if not isinstance(pairs, _Pairs) or not all(isinstance(v, int) and not isinstance(v, bool) for _, v in pairs):
        raise DataError(shown, f"expected a JSON object mapping class name -> integer index; {LABEL2IDX_FORM}")
    return pairs


def _label2idx_problem(pairs: list[tuple[str, int]]) -> str | None:
    """What is wrong with ``label2idx.json``'s pairs against the released form, or None."""
    if not pairs:
        return "no classes"
    names = [k for k, _ in pairs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return f"class name(s) {twice} appear more than once"
    if len(pairs) > NUM_CLASSES:
        return f"{len(pairs)} classes, the AVSBench palette has {NUM_CLASSES}"
    if names[0] != "background":
        return f"the first entry is {names[0]!r}, not 'background'"
    if pairs[0][1] == 0:
        return "indices start at 0 (background: 0), the older 0-based convention"
    for position, (name, value) in enumerate(pairs, start=1):
        if value != position:
            return (
                f"entry {position} ({name!r}) has index {value}, expected {position} (a gap or an out-of-order index)"
            )
    return None


def load_label2idx(root: str | Path) -> dict[str, int]:
    """``label2idx.json`` of an AVSBench-semantic dataset: class name -> class index in
    the masks (0 = background), in file order.

    The file must be in the released form ``{"background": 1, "accordion": 2, ...}``
    (1-based, indices 1..N in file order). As in the official AVSS code, a class's
    index in the masks (and its palette colour) is its position in the file: the
    file's value minus one. Any other form (0-based, gaps, duplicates, background not
    first, more than 71 classes) is a :class:`DataError` naming the file.
    """
    path = Path(root) / LABEL2IDX_JSON
    shown = _display_path(path, root)
    pairs = _label2idx_pairs(path, shown)
    problem = _label2idx_problem(pairs)
    if problem is not None:
        raise DataError(shown, f"{problem}; {LABEL2IDX_FORM}")
    return {name: value - 1 for name, value in pairs}


def class_names(root: str | Path) -> list[str]:
    """Class names ordered by their index in the masks (index 0 = background).

    AVSBench-semantic: from ``label2idx.json`` (see :func:`load_label2idx`).
    AVSBench-object has no classes: ``["background", "sounding"]``.
    """
    if detect_layout(root) == "object":
        return ["background", "sounding"]
    return list(load_label2idx(root))


# ---------------------------------------------------------------------------------
# Frames and masks
# ---------------------------------------------------------------------------------
def open_image(path: Path, root: Path | None, what: str, missing_hint: str = "") -> Image.Image:
    """An image, decoded now (a truncated file fails here, not later). Missing or
    undecodable: a :class:`DataError` naming the file (relative to ``root`` when given)
    and ``what`` it is, with ``missing_hint`` (e.g. the stage that writes it) when missing."""
    shown = _display_path(path, root)
    try:
        image = Image.open(path)
        image.load()
        return image
    except FileNotFoundError:
        raise DataError(shown, f"{what} is missing" + (f" ({missing_hint})" if missing_hint else "")) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(shown, f"cannot decode {what} ({e})") from None


def read_frame(path: str | Path, root: str | Path | None = None) -> np.ndarray:
    """Read an image as ``H x W x 3`` uint8 RGB. ``root`` shortens paths in errors."""
    image = open_image(Path(path), Path(root) if root else None, "frame")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _read_class_indices(record: VideoRecord, i: int, strict: bool) -> np.ndarray:
    """Class-index mask of frame ``i`` of a semantic-layout record (H x W uint8), decoded
    from its ``labels_rgb`` colour mask with the palette, as the official AVSS loader
    does (``labels_semantic``, when a copy has it, is not read)."""
    path = record.mask_paths[i]
    image = open_image(path, record.root, "colour mask")
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    index, unknown = colour_to_index(rgb)
    if unknown.any() and strict:
        colours = np.unique(rgb[unknown].reshape(-1, 3), axis=0)[:5]
        shown_colours = ", ".join(str(tuple(int(v) for v in c)) for c in colours)
        raise DataError(
            record.display_path(path),
            f"{int(unknown.sum())} pixels have colours outside the AVSBench palette, e.g. {shown_colours}",
        )
    # strict=False: unknown colours stay 0 (background), as in the official loader
    return index.astype(np.uint8)


def binary_mask_values(image: Image.Image) -> np.ndarray:
    """The values of an AVSBench-object mask whose non-zero pixels are foreground
    (H x W uint8): a palette image's indices (the official MS3 loader opens masks in
    mode ``P``), else its gray levels."""
    if image.mode == "P":
        return np.asarray(image, dtype=np.uint8)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def read_mask(record: VideoRecord, i: int, task: str = "avs", strict: bool = True) -> np.ndarray:
    """Ground-truth mask of frame ``i`` (0-based) as ``H x W`` uint8.

    ``task="avs"``: binary {0, 1}, 1 = sounding pixel (semantic layout: any non-background
    class; object layout: value > 0, see :func:`binary_mask_values`). ``task="avss"``:
    class indices 0..70 (semantic layout only), decoded from the ``labels_rgb`` colour mask.
    ``strict``: a colour outside the palette is a DataError naming the file;
    ``strict=False`` maps such pixels to background like the official loader.
    """
    if task not in MASK_TASKS:
        raise SSPError(f"unknown task {task!r}; choose from {', '.join(MASK_TASKS)}")
    if not 0 <= i < record.num_frames:
        raise IndexError(f"frame {i} out of range for {record.uid} ({record.num_frames} frames)")
    if not record.labelled[i] or record.mask_paths[i] is None:
        raise DataError(record.rel_dir, f"frame {i} has no ground-truth mask")
    if record.layout == "object":
        if task == "avss":
            raise DataError(record.rel_dir, "AVSBench-object masks are binary; task 'avss' needs the semantic layout")
        image = open_image(record.mask_paths[i], record.root, "binary mask")
        return (binary_mask_values(image) > 0).astype(np.uint8)
    index = _read_class_indices(record, i, strict)
    return index if task == "avss" else (index > 0).astype(np.uint8)


def read_scenarios(data: str | Path) -> dict[str, str]:
    """uid -> scenario from ``scenarios.csv`` at the data root (the generated benchmark);
    empty for a dataset without one (AVSBench itself)."""
    path = Path(data) / "scenarios.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row["uid"]: row["scenario"] for row in csv.DictReader(f)}
