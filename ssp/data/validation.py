"""Dataset validation with great-expectations (``ssp validate``).

Before any stage consumes a dataset, two kinds of facts are collected and checked
with great-expectations (GX) suites:

1. the manifest (``metadata.csv`` for AVSBench-semantic, ``s4_meta_data.csv`` /
   ``ms3_meta_data.csv`` for AVSBench-object): required columns, unique ids, known
   splits and subsets (the ``label`` column), no empty fields, numeric start times,
   and, with ``label2idx.json`` (which must be the released 1-based form, see
   :func:`ssp.data.avsbench.load_label2idx`), ``a_obj`` names that are classes;
2. one row per file the manifest implies (every frame, mask and audio file) plus one
   row per video: present, decodable, frame count, sizes, mask colours, binary masks,
   audio rate and length.

The facts are measured here (in a thread pool: PIL and libsndfile release the GIL
while decoding); GX then evaluates the rules as ordinary expectations with
``result_format="COMPLETE"`` and ``unexpected_index_column_names=["path"]``, so every
failing row comes back with the file that caused it. Nothing is raised for bad data:
a missing or corrupt file becomes a row of the report, so one run names every problem.
When the manifests pass, :func:`ssp.data.avsbench.load_records` (what training uses)
must also accept the dataset; its complaint, if any, is one more row.

The expected files are derived from the manifest with the readers' naming rules and
the canonical frame counts (not from what is on disk), so a missing last frame is
named as such.

Rules and their thresholds:
- frames per video: v1s and v1m 5, v2 10 (``FRAMES_PER_SUBSET``);
- all frames of a video have one size; each mask has the size of its frame;
- colour masks (``labels_rgb``, the masks the readers use) use only the 71 palette
  colours (``ssp.data.palette``); the report gives the number of off-palette pixels
  and one example colour. A ``labels_semantic`` folder is not read, so not checked;
- AVSBench-object masks are binary (0/1 or 0/255; palette images by their indices);
- audio decodes with soundfile at a sample rate of at least 16 kHz (higher rates are
  resampled to 16 kHz downstream; lower ones would lose the 125-7500 Hz mel band),
  lasts at least one second per frame minus ``AUDIO_TOLERANCE_S`` (0.05 s: encoders
  pad or trim a few milliseconds) and is not digital silence (all samples zero).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import pandas as pd
import soundfile
from PIL import Image, ImageFile
from tqdm.auto import tqdm

from ssp.data.avsbench import (
    FRAMES_PER_SUBSET,
    LABEL2IDX_JSON,
    MS3_CSV,
    MS3_DATA_DIR,
    MS3_RELEASE_DIR,
    S4_CSV,
    S4_DATA_DIR,
    S4_RELEASE_DIR,
    SEMANTIC_COLUMNS,
    SEMANTIC_CSV,
    SPLITS,
    SUBSETS,
    _display_path,
    _find_object_part,
    binary_mask_values,
    class_names,
    detect_layout,
    load_records,
    split_objects,
)
from ssp.data.palette import NUM_CLASSES, colour_to_index
from ssp.errors import DataError, SSPError
from ssp.fileio import tree_digest, write_json
from ssp.params import add_params_arguments, stage_params

AUDIO_RATE = 16_000  # Hz; the rate every audio stage works at
AUDIO_TOLERANCE_S = 0.05  # audio may be this much shorter than frames x 1 s
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

S4_COLUMNS = ("name", "start", "category", "split")
MS3_COLUMNS = ("video_id", "split")  # the reader also accepts "name" for the id


# ----------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------


class Failure(NamedTuple):
    path: str  # file at fault, relative to the dataset root
    rule: str  # the rule it breaks
    detail: str  # what was found


@dataclass
class ValidationReport:
    root: str
    layout: str
    ok: bool
    failures: list[Failure]
    counts: dict[str, Any]
    summary: str
    checks_total: int = 0
    checks_passed: int = 0
    rules: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bad_files(self) -> list[str]:
        return sorted({f.path for f in self.failures})

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failures"] = [f._asdict() for f in self.failures]
        out["bad_files"] = self.bad_files
        return out

    def format(self) -> str:
        """The report as readable text: failures grouped by rule, then the summary."""
        lines = []
        by_rule: dict[str, list[Failure]] = {}
        for failure in self.failures:
            by_rule.setdefault(failure.rule, []).append(failure)
        for rule, failures in by_rule.items():
            lines.append(f"FAILED {rule} ({len(failures)}):")
            lines.extend(f"  {f.path}: {f.detail}" for f in failures)
        lines.append(self.summary)
        return "\n".join(lines)


# ----------------------------------------------------------------------------------
# What the manifest implies: one ExpectedVideo per video folder
# ----------------------------------------------------------------------------------


@dataclass
class ExpectedFile:
    path: str  # relative to root
    kind: str  # frame | colour_mask | binary_mask | audio
    index: int = -1  # frame index (masks: the frame they belong to)


@dataclass
class ExpectedVideo:
    uid: str
    subset: str
    split: str
    frames_dir: str  # folder whose image files are this video's frames
    frame_prefix: str  # frames in frames_dir start with this (object layout)
    expected_frames: int
    files: list[ExpectedFile]


@dataclass
class Manifest:
    """One manifest file and what it needs."""

    path: str  # relative to root
    columns: tuple[str, ...]  # required columns
    id_column: str  # the column that names a video (must be unique)
    subset: str | None  # object layout: v1s (S4) or v1m (MS3); semantic: per row
    data_dir: str  # object layout: folder holding visual_frames/, gt_masks/, audio_wav/


def find_manifests(root: Path, layout: str) -> list[Manifest]:
    """The manifests of ``layout`` under ``root``, where the readers look for them.
    A layout with none gets its main manifest listed anyway, to be reported missing."""
    if layout == "semantic":
        return [Manifest(SEMANTIC_CSV, SEMANTIC_COLUMNS, "uid", None, "")]
    manifests = []
    for csv_name, release_dir, data_dir, subset in (
        (S4_CSV, S4_RELEASE_DIR, S4_DATA_DIR, "v1s"),
        (MS3_CSV, MS3_RELEASE_DIR, MS3_DATA_DIR, "v1m"),
    ):
        part = _find_object_part(root, csv_name, release_dir, data_dir)
        if part is None:
            continue
        csv, data = (_display_path(p, root) for p in part)
        data = "" if data == "." else data
        if subset == "v1s":
            manifests.append(Manifest(csv, S4_COLUMNS, "name", subset, data))
        else:
            manifests.append(Manifest(csv, MS3_COLUMNS, "video_id", subset, data))
    return manifests or [Manifest(S4_CSV, S4_COLUMNS, "name", "v1s", "")]


def read_manifest(path: Path, manifest: Manifest) -> pd.DataFrame:
    """Read a manifest as strings; only empty fields count as missing (a class named
    "None" or "NA" is a name, not a null). Object-layout manifests whose header lacks
    the usual names are read by position, as the official loaders (and ours) do."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    df.columns = [str(c).strip() for c in df.columns]
    # Surrounding spaces are ignored (as the reader does); a blank cell is a missing one.
    df = df.apply(lambda column: column.str.strip()).replace("", None)
    if manifest.subset == "v1s" and "name" not in df.columns:
        df = df.rename(columns=dict(zip(df.columns[:3], ("name", "start", "category"))))
    if manifest.subset == "v1m" and "video_id" not in df.columns:
        df = df.rename(columns={("name" if "name" in df.columns else df.columns[0]): "video_id"})
    return df


def _labelled(subset: str, split: str, num_frames: int) -> list[int]:
    # v1s (S4) training videos have only their first frame annotated.
    if subset == "v1s" and split == "train":
        return [0]
    return list(range(num_frames))


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def semantic_videos(root: Path, manifest: pd.DataFrame) -> list[ExpectedVideo]:
    """Videos of an AVSBench-semantic manifest: ``{root}/{label}/{uid}/...``."""
    videos: dict[str, ExpectedVideo] = {}
    for row in manifest.to_dict("records"):
        uid, subset, split = _text(row.get("uid")), _text(row.get("label")), _text(row.get("split")) or ""
        # Rows with an unusable uid or subset are reported by the manifest suite;
        # without them there is no folder or frame count to check.
        if uid is None or subset not in FRAMES_PER_SUBSET:
            continue
        rel_dir = f"{subset}/{uid}"
        if rel_dir in videos:
            continue  # duplicate uid: reported by the manifest suite, scanned once
        n = FRAMES_PER_SUBSET[subset]
        files = [ExpectedFile(f"{rel_dir}/frames/{i}.jpg", "frame", i) for i in range(n)]
        labelled = _labelled(subset, split, n)
        files += [ExpectedFile(f"{rel_dir}/labels_rgb/{i}.png", "colour_mask", i) for i in labelled]
        files.append(ExpectedFile(f"{rel_dir}/audio.wav", "audio"))
        videos[rel_dir] = ExpectedVideo(uid, subset, split, f"{rel_dir}/frames", "", n, files)
    return list(videos.values())


def object_videos(manifest: Manifest, table: pd.DataFrame) -> list[ExpectedVideo]:
    """Videos of an AVSBench-object v1 manifest (S4 -> v1s, MS3 -> v1m), with the
    file names of the official release (frames and masks numbered from 1)."""
    videos: dict[str, ExpectedVideo] = {}
    subset = manifest.subset
    n = FRAMES_PER_SUBSET[subset]
    data = f"{manifest.data_dir}/" if manifest.data_dir else ""
    for row in table.to_dict("records"):
        name, split = _text(row.get(manifest.id_column)), _text(row.get("split"))
        category = _text(row.get("category"))
        if name is None or split is None or (subset == "v1s" and category is None):
            continue  # reported by the manifest suite
        if subset == "v1s":
            frames_dir = f"{data}visual_frames/{split}/{category}/{name}"
            frames = [f"{frames_dir}/{name}_{i + 1}.png" for i in range(n)]
            mask_dir = f"{data}gt_masks/{split}/{category}/{name}"
            audio = f"{data}audio_wav/{split}/{category}/{name}.wav"
        else:
            frames_dir = f"{data}visual_frames/{name}"
            frames = [f"{frames_dir}/{name}.mp4_{i + 1}.png" for i in range(n)]
            mask_dir = f"{data}gt_masks/{split}/{name}"
            audio = f"{data}audio_wav/{split}/{name}.wav"
        if frames_dir in videos:
            continue
        files = [ExpectedFile(p, "frame", i) for i, p in enumerate(frames)]
        files += [ExpectedFile(f"{mask_dir}/{name}_{i + 1}.png", "binary_mask", i) for i in _labelled(subset, split, n)]
        files.append(ExpectedFile(audio, "audio"))
        videos[frames_dir] = ExpectedVideo(name, subset, split, frames_dir, name, n, files)
    return list(videos.values())


def expected_videos(root: str | Path, layout: str = "auto") -> list[ExpectedVideo]:
    """Every video, and every file of it, that the manifests of ``root`` imply (rows
    too broken to name a folder are skipped; :func:`validate_dataset` reports them)."""
    root = Path(root)
    layout = detect_layout(root) if layout == "auto" else layout
    videos: list[ExpectedVideo] = []
    for manifest in find_manifests(root, layout):
        if (root / manifest.path).is_file():
            table = read_manifest(root / manifest.path, manifest)
            videos += semantic_videos(root, table) if manifest.subset is None else object_videos(manifest, table)
    return videos


# ----------------------------------------------------------------------------------
# Measuring files (runs in worker threads; never raises for bad data)
# ----------------------------------------------------------------------------------


def _size(width: int, height: int) -> str:
    return f"{width}x{height}"


def _decode_image(path: Path) -> Any:
    """Fully decode an image with PIL. With ``LOAD_TRUNCATED_IMAGES`` off (forced by
    :func:`validate_dataset`), a truncated JPEG or PNG raises instead of being padded."""
    with Image.open(path) as image:
        image.load()  # the pixels stay in memory after the file is closed
    return image


def _measure_image(path: Path, kind: str, row: dict[str, Any]) -> None:
    image = _decode_image(path)
    row["size"] = _size(*image.size)
    if kind == "colour_mask":
        rgb = np.asarray(image.convert("RGB"))
        _, unknown = colour_to_index(rgb)
        row["off_palette_pixels"] = int(unknown.sum())
        if unknown.any():
            y, x = np.argwhere(unknown)[0]
            row["off_palette_example"] = f"rgb{tuple(int(c) for c in rgb[y, x])} at (x={x}, y={y})"
    elif kind == "binary_mask":
        grey = binary_mask_values(image)
        high = 255 if grey.max(initial=0) > 1 else 1
        row["non_binary_pixels"] = int(((grey != 0) & (grey != high)).sum())


def _measure_audio(path: Path, num_frames: int, row: dict[str, Any]) -> None:
    # Read the samples, not just the header: a truncated file has a header that
    # promises more than the data holds.
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    seconds = samples.shape[0] / rate
    row["audio_rate"] = int(rate)
    row["audio_seconds"] = round(seconds, 4)
    row["audio_margin_s"] = round(seconds - num_frames, 4)
    row["audio_peak"] = float(np.abs(samples).max(initial=0.0))


def scan_video(root: Path, video: ExpectedVideo) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Measure every expected file of one video. Returns (file rows, video row)."""
    rows = []
    for expected in video.files:
        row: dict[str, Any] = {
            "path": expected.path,
            "video": video.frames_dir,
            "kind": expected.kind,
            "index": expected.index,
            "present": False,
            "decodable": None,
            "error": None,
            "size": None,
            "video_frame_size": None,
            "paired_frame_size": None,
            "off_palette_pixels": None,
            "off_palette_example": None,
            "non_binary_pixels": None,
            "audio_rate": None,
            "audio_seconds": None,
            "audio_margin_s": None,
            "audio_peak": None,
            "frames_expected": video.expected_frames,
        }
        path = root / expected.path
        try:
            row["present"] = path.is_file()
        except OSError as e:  # e.g. a folder we may not read: the file is not usable
            row["error"] = f"{type(e).__name__}: {e}"
        if row["present"]:
            try:
                if expected.kind == "audio":
                    _measure_audio(path, video.expected_frames, row)
                else:
                    _measure_image(path, expected.kind, row)
                row["decodable"] = True
            except Exception as e:  # any decoder error is a finding about this file
                row["decodable"] = False
                row["error"] = f"{type(e).__name__}: {e}"
        rows.append(row)

    # Sizes: frames against the video's most common frame size, masks against the
    # frame they annotate.
    frame_sizes = {r["index"]: r["size"] for r in rows if r["kind"] == "frame" and r["size"]}
    common = Counter(frame_sizes.values()).most_common(1)
    video_size = common[0][0] if common else None
    for r in rows:
        if r["kind"] == "frame":
            r["video_frame_size"] = video_size
        elif r["kind"] != "audio":
            r["paired_frame_size"] = frame_sizes.get(r["index"])

    try:
        found = sum(
            1
            for name in os.listdir(root / video.frames_dir)
            if Path(name).suffix.lower() in IMAGE_SUFFIXES and name.startswith(video.frame_prefix)
        )
    except OSError:  # no folder (or an unreadable one): no frames
        found = 0
    video_row = {
        "path": video.frames_dir,
        "subset": video.subset,
        "split": video.split,
        "frames_found": found,
        "frames_expected": video.expected_frames,
    }
    return rows, video_row


# ----------------------------------------------------------------------------------
# The rules, as great-expectations expectations
# ----------------------------------------------------------------------------------


@dataclass
class Rule:
    name: str
    expectation: Any  # a gx Expectation
    describe: Callable[[dict[str, Any]], str]  # failing row -> detail text


def _fmt_size(r: dict[str, Any], other: str) -> str:
    return f"{r['size']} vs {r[other]}"


def manifest_rules(gxe: Any, columns: tuple[str, ...], id_column: str, present: list[str]) -> list[Rule]:
    def line(r: dict[str, Any]) -> str:
        return f"line {r['line']} ({id_column}={r.get(id_column)!r})"

    rules = [
        Rule(
            "manifest columns",
            gxe.ExpectTableColumnsToMatchSet(column_set=list(columns), exact_match=False),
            lambda r: f"missing required columns {r['missing']}",
        ),
        Rule("manifest not empty", gxe.ExpectTableRowCountToBeBetween(min_value=1), lambda r: "no rows"),
    ]
    for column in columns:
        if column in present:
            rules.append(
                Rule(
                    f"{column} not null",
                    gxe.ExpectColumnValuesToNotBeNull(column=column),
                    lambda r, c=column: f"{line(r)}: empty {c}",
                )
            )
    if id_column in present:
        rules.append(
            Rule(
                f"{id_column} unique",
                gxe.ExpectColumnValuesToBeUnique(column=id_column),
                lambda r: f"{line(r)}: {id_column} {r[id_column]!r} appears more than once",
            )
        )
    if "split" in present:
        rules.append(
            Rule(
                "split known",
                gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
                lambda r: f"{line(r)}: split {r['split']!r} not in {list(SPLITS)}",
            )
        )
    if "label" in present:
        rules.append(
            Rule(
                "subset known",
                gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(SUBSETS)),
                lambda r: f"{line(r)}: subset (label column) {r['label']!r} not in {list(SUBSETS)}",
            )
        )
    if "objects_known" in present:
        rules.append(
            Rule(
                "a_obj names are classes",
                gxe.ExpectColumnValuesToBeInSet(column="objects_known", value_set=[True]),
                lambda r: f"{line(r)}: a_obj names {r['unknown_objects']} are not in {LABEL2IDX_JSON}",
            )
        )
    for column in ("s_min", "s_sec", "start"):
        if column in present:
            rules.append(
                Rule(
                    f"{column} is a number",
                    gxe.ExpectColumnValuesToMatchRegex(column=column, regex=r"^\s*\d+(?:\.\d*)?\s*$"),
                    lambda r, c=column: f"{line(r)}: {c} {r[c]!r} is not a non-negative number",
                )
            )
    return rules


def file_rules(gxe: Any) -> list[Rule]:
    def between(column: str, **kwargs: Any) -> Any:
        return gxe.ExpectColumnValuesToBeBetween(column=column, **kwargs)

    return [
        Rule(
            "file present",
            gxe.ExpectColumnValuesToBeInSet(column="present", value_set=[True]),
            lambda r: f"missing ({r['kind'].replace('_', ' ')})" + (f": {r['error']}" if r["error"] else ""),
        ),
        Rule(
            "file decodable",
            gxe.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True]),
            lambda r: f"cannot decode: {r['error']}",
        ),
        Rule(
            "frame size consistent within video",
            gxe.ExpectColumnPairValuesToBeEqual(
                column_A="size", column_B="video_frame_size", ignore_row_if="either_value_is_missing"
            ),
            lambda r: f"frame is {r['size']}, the video's other frames are {r['video_frame_size']}",
        ),
        Rule(
            "mask size matches frame",
            gxe.ExpectColumnPairValuesToBeEqual(
                column_A="size", column_B="paired_frame_size", ignore_row_if="either_value_is_missing"
            ),
            lambda r: f"mask is {r['size']}, its frame is {r['paired_frame_size']}",
        ),
        Rule(
            "mask colours in palette",
            between("off_palette_pixels", min_value=0, max_value=0),
            lambda r: (
                f"{r['off_palette_pixels']} pixels with colours outside the {NUM_CLASSES}-colour "
                f"palette, e.g. {r['off_palette_example']}"
            ),
        ),
        Rule(
            "mask binary",
            between("non_binary_pixels", min_value=0, max_value=0),
            lambda r: f"{r['non_binary_pixels']} pixels neither background nor foreground",
        ),
        Rule(
            "audio sample rate",
            between("audio_rate", min_value=AUDIO_RATE),
            lambda r: f"{r['audio_rate']} Hz < {AUDIO_RATE} Hz",
        ),
        Rule(
            "audio length",
            between("audio_margin_s", min_value=-AUDIO_TOLERANCE_S),
            lambda r: (
                f"{r['audio_seconds']:.3f} s of audio for {r['frames_expected']} frames "
                f"(needs >= {r['frames_expected'] - AUDIO_TOLERANCE_S:.2f} s)"
            ),
        ),
        Rule("audio not silent", between("audio_peak", min_value=0, strict_min=True), lambda r: "all samples are zero"),
    ]


def video_rules(gxe: Any) -> list[Rule]:
    return [
        Rule(
            "frame count",
            gxe.ExpectColumnPairValuesToBeEqual(column_A="frames_found", column_B="frames_expected"),
            lambda r: f"{r['frames_found']} frames on disk, subset {r['subset']} has {r['frames_expected']}",
        ),
    ]


def _exception_message(info: dict[str, Any] | None) -> str | None:
    """The error of an expectation that could not run. GX reports it either at the top
    level or per metric (``{metric id: {"raised_exception": ..., ...}}``)."""
    if not info:
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


class _Validator:
    """One ephemeral GX context per run; one dataframe asset per table."""

    def __init__(self) -> None:
        # Analytics off before GX is imported (it reads the variable at import).
        os.environ["GX_ANALYTICS_ENABLED"] = "false"
        # GX logs its import-time bookkeeping at INFO; the CLI's INFO level would show it.
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        # GX takes ~5 s to import: only `ssp validate` pays it, not every importer of this module
        import great_expectations as gx  # noqa: PLC0415  (optional backend: validation engine, ~5 s import)
        import great_expectations.expectations as gxe  # noqa: PLC0415  (optional backend: as above)
        from great_expectations.data_context.types.base import (  # noqa: PLC0415  (optional backend: as above)
            ProgressBarsConfig,
        )

        # Again after import: some GX modules pin their own logger to INFO.
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("great_expectations"):
                logging.getLogger(name).setLevel(logging.WARNING)

        self.gx, self.gxe = gx, gxe
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        self.source = self.context.data_sources.add_pandas("ssp_dataset")
        self.checks_total = 0
        self.checks_passed = 0
        self.rule_names: list[str] = []

    def validate(
        self,
        table: str,
        records: list[dict[str, Any]],
        rules: list[Rule],
        index_columns: list[str],
        source: str | None = None,
        columns: list[str] | None = None,
    ) -> list[Failure]:
        """Run ``rules`` over the table of ``records``; return one Failure per failing
        row (table-level rules: one per table). Failures name ``source`` (the manifest
        a table was read from) when given, else each failing row's ``path``."""
        # dtype=object keeps ints as ints and None as None (pandas would make floats).
        df = pd.DataFrame(records, columns=columns, dtype=object)
        asset = self.source.add_dataframe_asset(table)
        batch = asset.add_batch_definition_whole_dataframe(table).get_batch(batch_parameters={"dataframe": df})
        suite = self.gx.ExpectationSuite(name=f"ssp_{table}")
        for i, rule in enumerate(rules):
            rule.expectation.meta = {"rule_id": i}
            suite.add_expectation(rule.expectation)
        result = batch.validate(
            suite,
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": index_columns,
            },
        )

        rows_by_key = {tuple(r[c] for c in index_columns): r for r in records}
        failures = []
        for res in result.results:
            rule = rules[res.expectation_config.meta["rule_id"]]
            self.rule_names.append(rule.name)
            info = res.result or {}
            if "unexpected_index_list" in info or "element_count" in info:
                checked = int(info.get("element_count", 0)) - int(info.get("missing_count") or 0)
                unexpected = info.get("unexpected_index_list") or []
            else:
                checked, unexpected = 1, []
            self.checks_total += checked
            message = _exception_message(res.exception_info)
            if message is not None:
                failures.append(Failure(source or table, rule.name, f"check could not run: {message}"))
                continue
            if res.success:
                self.checks_passed += checked
                continue
            if not unexpected:  # a table-level rule
                self.checks_passed += checked - 1
                missing = (info.get("details") or {}).get("mismatched", {}).get("missing", [])
                failures.append(Failure(source or table, rule.name, rule.describe({"missing": missing})))
                continue
            self.checks_passed += checked - len(unexpected)
            for hit in unexpected:
                row = rows_by_key[tuple(hit[c] for c in index_columns)]
                failures.append(Failure(source or row["path"], rule.name, rule.describe(row)))
        return failures


# ----------------------------------------------------------------------------------
# The whole run
# ----------------------------------------------------------------------------------


def _relative(path: str | Path, root: Path) -> str:
    """A reader's error path, relative to the dataset root ("." for the root)."""
    shown = _display_path(path, root)
    return "." if shown in ("", ".") or Path(shown) == root else shown


def _class_key(name: str) -> str:
    """Class names compared loosely ("Emergency car" == "emergency-car"): the check is
    about unknown classes, not about spelling conventions."""
    return "-".join(name.lower().replace("_", " ").replace("-", " ").split())


def _check_classes(root: Path, failures: list[Failure]) -> set[str] | None:
    """Class names of ``label2idx.json`` (semantic layout), or None (reported) when the
    file is missing or malformed. The reader's own checks decide what is malformed."""
    try:
        return {_class_key(name) for name in class_names(root)}
    except DataError as e:
        failures.append(Failure(_relative(e.path, root), "class list", e.problem))
        return None


def _check_reader(root: Path, layout: str, failures: list[Failure]) -> None:
    """The training code reads the dataset with ``load_records``: it must accept it.
    Its first complaint becomes one more row; it never stops the other checks."""
    try:
        load_records(root, layout=layout)
    except DataError as e:
        failures.append(Failure(_relative(e.path, root), "loads with ssp.data.avsbench", e.problem))
    except Exception as e:  # a reader bug must not hide the data report
        failures.append(Failure(".", "loads with ssp.data.avsbench", f"{type(e).__name__}: {e}"))


def validate_dataset(root: str | Path, layout: str = "auto", workers: int | None = None) -> ValidationReport:
    """Validate an AVSBench dataset (either layout). Never raises for bad data: every
    problem becomes a :class:`Failure` naming its file (relative to ``root``).

    ``layout``: ``auto`` (detected, as the readers do), ``semantic`` or ``object``.
    ``workers``: threads that decode files (default: min(8, CPU count)).
    """
    started = time.perf_counter()
    root = Path(root)
    if not root.is_dir():
        raise SSPError(f"{root}: dataset root is not a directory")
    if workers is not None and workers < 1:
        raise SSPError(f"--workers must be at least 1, got {workers}")
    if layout not in ("auto", "semantic", "object"):
        raise SSPError(f"unknown layout {layout!r} (auto, semantic or object)")
    if layout == "auto":
        try:
            layout = detect_layout(root)
        except DataError as e:
            failure = Failure(".", "manifest present", e.problem)
            return ValidationReport(str(root), "unknown", False, [failure], {}, f"INVALID: {e.problem}")

    validator = _Validator()
    failures, videos, counts = _check_manifests(root, layout, validator)
    # The reader stops at its first complaint, which, when a manifest rule failed, is
    # most likely that same problem again; ask it only about manifests that passed.
    if not failures:
        _check_reader(root, layout, failures)

    file_rows, video_rows = _scan_videos(root, videos, workers or min(8, os.cpu_count() or 1))
    if videos:
        failures += validator.validate("files", file_rows, file_rules(validator.gxe), ["path"])
        failures += validator.validate("videos", video_rows, video_rules(validator.gxe), ["path"])

    kinds = Counter(r["kind"] for r in file_rows)
    counts.update(
        {
            "videos": len(videos),
            "frames": kinds.get("frame", 0),
            "masks": sum(v for k, v in kinds.items() if k.endswith("_mask")),
            "audio": kinds.get("audio", 0),
        }
    )
    ok = not failures
    checks = f"{validator.checks_passed}/{validator.checks_total} checks passed"
    if ok:
        summary = f"OK: {layout} layout, {counts['videos']} videos, {counts['frames']} frames, {checks}"
    else:
        bad = len({f.path for f in failures})
        summary = (
            f"INVALID: {layout} layout, {counts['videos']} videos, {counts['frames']} frames, {checks}; "
            f"{len(failures)} problems in {bad} files"
        )
    return ValidationReport(
        root=str(root),
        layout=layout,
        ok=ok,
        failures=failures,
        counts=counts,
        summary=summary,
        checks_total=validator.checks_total,
        checks_passed=validator.checks_passed,
        rules=sorted(set(validator.rule_names)),
        seconds=round(time.perf_counter() - started, 3),
    )


def _check_manifests(
    root: Path, layout: str, validator: _Validator
) -> tuple[list[Failure], list[ExpectedVideo], dict[str, Any]]:
    """Every manifest of ``layout`` through the manifest rules: (failures, the videos the
    manifests imply, counts per subset/split and per category)."""
    failures: list[Failure] = []
    videos: list[ExpectedVideo] = []
    counts: dict[str, Any] = {"manifest_rows": 0, "videos_per_subset_split": {}}
    has_manifest = layout == "semantic" and (root / SEMANTIC_CSV).is_file()
    classes = _check_classes(root, failures) if has_manifest else None
    for manifest in find_manifests(root, layout):
        manifest_path = root / manifest.path
        if not manifest_path.is_file():
            failures.append(Failure(manifest.path, "manifest present", "missing"))
            continue
        try:
            table = read_manifest(manifest_path, manifest)
        except Exception as e:  # empty file, bad encoding, broken quoting...
            failures.append(Failure(manifest.path, "manifest readable", f"{type(e).__name__}: {e}"))
            continue
        present = [c for c in table.columns if c in manifest.columns]
        check_objects = classes is not None and "a_obj" in table.columns
        records = _manifest_records(table, classes if check_objects else None)
        extra = ["objects_known", "unknown_objects"] if check_objects else []
        present += extra[:1]
        failures += validator.validate(
            f"manifest_{Path(manifest.path).stem}",
            records,
            manifest_rules(validator.gxe, manifest.columns, manifest.id_column, present),
            ["line"],
            source=manifest.path,
            columns=["line", *table.columns, *extra],
        )
        counts["manifest_rows"] += len(table)
        if manifest.subset is None:
            videos += semantic_videos(root, table)
        else:
            videos += object_videos(manifest, table)
        _count_videos(counts, manifest, table, records)
    return failures, videos, counts


def _manifest_records(table: pd.DataFrame, classes: set[str] | None) -> list[dict[str, Any]]:
    """The manifest's rows with their csv ``line``; with ``classes``, whether each row's
    a_obj names are classes (``objects_known``) and which are not (``unknown_objects``)."""
    records = table.to_dict("records")
    for line, record in enumerate(records, start=2):  # csv line numbers (header = 1)
        record["line"] = line
        if classes is not None:
            a_obj = record["a_obj"] if isinstance(record["a_obj"], str) else None  # null: its own rule
            unknown = [n for n in split_objects(a_obj or "") if _class_key(n) not in classes]
            record["objects_known"] = None if a_obj is None else not unknown
            record["unknown_objects"] = unknown
    return records


def _count_videos(
    counts: dict[str, Any], manifest: Manifest, table: pd.DataFrame, records: list[dict[str, Any]]
) -> None:
    """Add one manifest's videos per subset/split and per sounding-object category."""
    if manifest.subset is None:
        subset_split = [(r.get("label"), r.get("split")) for r in records]
    else:
        subset_split = [(manifest.subset, r.get("split")) for r in records]
    per = Counter(f"{subset}/{split}" for subset, split in subset_split)
    for key, n in sorted(per.items()):
        counts["videos_per_subset_split"][key] = counts["videos_per_subset_split"].get(key, 0) + n
    # videos per sounding-object category (a_obj may name several per video)
    category_column = "a_obj" if manifest.subset is None else "category"
    if category_column in table.columns:
        per_category = counts.setdefault("videos_per_category", {})
        for value in table[category_column].dropna():
            for name in split_objects(value) if category_column == "a_obj" else [value]:
                per_category[name] = per_category.get(name, 0) + 1


def _scan_videos(
    root: Path, videos: list[ExpectedVideo], workers: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Measure every file, in parallel threads: (file rows, video rows). PIL must not pad
    truncated images here."""
    previous_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    file_rows: list[dict[str, Any]] = []
    video_rows: list[dict[str, Any]] = []
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            scans = pool.map(lambda v: scan_video(root, v), videos)
            for rows, video_row in tqdm(scans, total=len(videos), desc="validate", unit="video", disable=None):
                file_rows += rows
                video_rows.append(video_row)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous_truncated
    return file_rows, video_rows


# ----------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "data_root",
        type=Path,
        metavar="DATA_ROOT",
        help="dataset root (holds metadata.csv, or s4_meta_data.csv / ms3_meta_data.csv for AVSBench-object)",
    )
    add_params_arguments(parser, "data.layout=object")
    parser.add_argument(
        "--layout",
        choices=["auto", "semantic", "object"],
        default=None,
        help="dataset layout, overriding the params' data.layout; auto detects it from the manifest file present",
    )
    parser.epilog = (
        "Reads data.layout of the params file (see ssp/params.py, DataParams). "
        "Exit status 0 when every check passes (one summary line is printed); otherwise the "
        "failures are listed, each with the file (relative to DATA_ROOT) and the rule it breaks, "
        "and the exit status is 2."
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="FILE.json",
        help="also write the full report as JSON to this file, whether or not the data is valid (default: no file)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="threads that decode files in parallel (default: min(8, CPU count))",
    )


def main(args: argparse.Namespace) -> int:
    layout = args.layout or stage_params(args).data.layout
    report = validate_dataset(args.data_root, layout=layout, workers=args.workers)
    if args.report is not None:
        content = json.loads(json.dumps(report.to_dict(), default=str))
        # the dataset's content digest: stages downstream depend on this report instead of
        # re-hashing the dataset folder each (see ssp/ops/fingerprint.py)
        content["fingerprint"] = tree_digest(args.data_root)
        write_json(args.report, content)
    if report.ok:
        print(report.summary)
        return 0
    print(report.format())
    where = f"; full report in {args.report}" if args.report else ""
    raise SSPError(
        f"{args.data_root}: dataset is invalid: {len(report.failures)} problems in {len(report.bad_files)} files{where}"
    )
