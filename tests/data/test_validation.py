"""`ssp validate`: valid datasets pass; every defect is rejected and its file named."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from ssp.cli import main as cli_main
from ssp.data.validation import AUDIO_TOLERANCE_S, ValidationReport, validate_dataset
from ssp.fileio import tree_digest
from tests.avsbench_fixtures import write_object_dataset, write_semantic_dataset

# Small datasets: one video per subset, covering the v1s-train labelling rule.
SEMANTIC_VIDEOS = [
    {"uid": "s4_dog_train", "subset": "v1s", "split": "train", "objects": ["dog"]},
    {"uid": "ms3_guitar_man_val", "subset": "v1m", "split": "val", "objects": ["guitar", "man"]},
    {"uid": "v2_violin_test", "subset": "v2", "split": "test", "objects": ["violin"]},
]
S4_VIDEOS = [
    {"name": "s4vid_dog_train", "category": "dog_barking", "split": "train"},
    {"name": "s4vid_violin_val", "category": "playing_violin", "split": "val"},
]
MS3_VIDEOS = [{"name": "ms3vid_a_test", "split": "test", "n_objects": 2}]

# Files of those datasets that the tests break (the object dataset is in the release tree).
V2_DIR = "v2/v2_violin_test"
MS3_DIR = "ms3_guitar_man_val"
S4_CSV = "Single-source/s4_meta_data.csv"
S4_DATA = "Single-source/s4_data"
S4_FRAMES = f"{S4_DATA}/visual_frames/val/playing_violin/s4vid_violin_val"
S4_MASKS = f"{S4_DATA}/gt_masks/val/playing_violin/s4vid_violin_val"
S4_AUDIO = f"{S4_DATA}/audio_wav/val/playing_violin/s4vid_violin_val.wav"
MS3_CSV = "Multi-sources/ms3_meta_data.csv"
MS3_DATA = "Multi-sources/ms3_data"
MS3_FRAMES = f"{MS3_DATA}/visual_frames/ms3vid_a_test"
MS3_MASKS = f"{MS3_DATA}/gt_masks/test/ms3vid_a_test"


@pytest.fixture
def semantic(tmp_path) -> Path:
    return write_semantic_dataset(tmp_path / "semantic", videos=SEMANTIC_VIDEOS)


@pytest.fixture
def obj(tmp_path) -> Path:
    return write_object_dataset(tmp_path / "object", s4_videos=S4_VIDEOS, ms3_videos=MS3_VIDEOS)


def problems(report: ValidationReport) -> dict[str, set[str]]:
    """bad file -> the rules it breaks."""
    out: dict[str, set[str]] = {}
    for path, rule, _ in report.failures:
        out.setdefault(path, set()).add(rule)
    return out


def detail(report: ValidationReport, path: str, rule: str) -> str:
    return next(f.detail for f in report.failures if f.path == path and f.rule == rule)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_tone(path: Path, seconds: float, rate: int = 16_000, amplitude: float = 0.2) -> None:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(str(path), (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)


def edit_csv(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


# ----------------------------------------------------------------------------------
# Valid data passes
# ----------------------------------------------------------------------------------


def test_valid_semantic_fixture_passes(tmp_path):
    root = write_semantic_dataset(tmp_path / "d")  # the full default fixture, released label2idx.json
    report = validate_dataset(root, workers=2)
    assert report.ok, report.format()
    assert report.layout == "semantic" and report.failures == []
    assert report.counts["videos"] == 7
    assert report.counts["frames"] == 2 * 5 + 2 * 5 + 3 * 10
    assert report.counts["videos_per_subset_split"] == {
        "v1m/train": 1,
        "v1m/val": 1,
        "v1s/test": 1,
        "v1s/train": 1,
        "v2/test": 1,
        "v2/train": 1,
        "v2/val": 1,
    }
    assert report.counts["videos_per_category"]["dog"] == 2 and report.counts["videos_per_category"]["man"] == 1
    assert 0 < report.checks_passed == report.checks_total
    assert report.summary.startswith("OK: semantic layout, 7 videos, 50 frames")


@pytest.mark.parametrize("release_tree", [False, True])
def test_valid_object_fixture_passes(tmp_path, release_tree):
    root = write_object_dataset(tmp_path / "d", release_tree=release_tree)
    report = validate_dataset(root)
    assert report.ok, report.format()
    assert report.layout == "object"
    assert report.counts["videos"] == 4 + 3 and report.counts["frames"] == 35
    assert report.counts["masks"] == (2 * 1 + 2 * 5) + 3 * 5  # S4 train: frame 1 only
    assert 0 < report.checks_passed == report.checks_total


# ----------------------------------------------------------------------------------
# Per-file defects, both layouts
# ----------------------------------------------------------------------------------


def test_truncated_jpg_is_rejected_and_named(semantic):
    frame = semantic / V2_DIR / "frames" / "3.jpg"
    truncate(frame)
    # The defect is real: a strict decoder refuses the file.
    with pytest.raises(OSError):
        Image.open(io.BytesIO(frame.read_bytes())).load()
    report = validate_dataset(semantic)
    assert not report.ok
    assert problems(report) == {f"{V2_DIR}/frames/3.jpg": {"file decodable"}}


def test_truncated_png_frame_and_mask_are_rejected_object_layout(obj):
    truncate(obj / S4_FRAMES / "s4vid_violin_val_2.png")
    truncate(obj / S4_MASKS / "s4vid_violin_val_4.png")
    report = validate_dataset(obj)
    assert problems(report) == {
        f"{S4_FRAMES}/s4vid_violin_val_2.png": {"file decodable"},
        f"{S4_MASKS}/s4vid_violin_val_4.png": {"file decodable"},
    }


def test_missing_frame_is_named_semantic(semantic):
    (semantic / V2_DIR / "frames" / "9.jpg").unlink()  # the last one: no gap to spot
    report = validate_dataset(semantic)
    assert problems(report) == {
        f"{V2_DIR}/frames/9.jpg": {"file present"},
        f"{V2_DIR}/frames": {"frame count"},
    }
    assert detail(report, f"{V2_DIR}/frames", "frame count") == "9 frames on disk, subset v2 has 10"


def test_missing_frame_mask_and_audio_are_named_object(obj):
    (obj / MS3_FRAMES / "ms3vid_a_test.mp4_3.png").unlink()
    (obj / MS3_MASKS / "ms3vid_a_test_5.png").unlink()
    (obj / S4_AUDIO).unlink()
    report = validate_dataset(obj)
    assert problems(report) == {
        f"{MS3_FRAMES}/ms3vid_a_test.mp4_3.png": {"file present"},
        MS3_FRAMES: {"frame count"},
        f"{MS3_MASKS}/ms3vid_a_test_5.png": {"file present"},
        S4_AUDIO: {"file present"},
    }


def test_off_palette_mask_colour_reports_count_and_example(semantic):
    mask_path = semantic / "v1m" / MS3_DIR / "labels_rgb" / "2.png"
    mask = np.array(Image.open(mask_path).convert("RGB"))
    mask[3, 5] = (1, 2, 3)
    mask[7, 1] = (1, 2, 3)
    mask[8, 8] = (250, 0, 7)
    Image.fromarray(mask).save(mask_path)
    report = validate_dataset(semantic)
    path = f"v1m/{MS3_DIR}/labels_rgb/2.png"
    assert problems(report) == {path: {"mask colours in palette"}}
    text = detail(report, path, "mask colours in palette")
    assert text.startswith("3 pixels")
    assert "rgb(1, 2, 3) at (x=5, y=3)" in text  # first off-palette pixel in scan order


def test_non_binary_object_mask_is_rejected(obj):
    path = obj / S4_MASKS / "s4vid_violin_val_1.png"
    mask = np.array(Image.open(path))
    mask[:2, :2] = 128
    Image.fromarray(mask).save(path)
    report = validate_dataset(obj)
    assert problems(report) == {f"{S4_MASKS}/s4vid_violin_val_1.png": {"mask binary"}}
    assert detail(report, f"{S4_MASKS}/s4vid_violin_val_1.png", "mask binary").startswith("4 pixels")


def test_short_audio_is_rejected_within_tolerance(semantic, obj):
    # 5 frames need 5 s: 4.96 s is inside the tolerance, 4.9 s is not.
    assert AUDIO_TOLERANCE_S == 0.05
    write_tone(semantic / "v1s" / "s4_dog_train" / "audio.wav", 4.96)
    write_tone(semantic / "v1m" / MS3_DIR / "audio.wav", 4.9)
    report = validate_dataset(semantic)
    assert problems(report) == {f"v1m/{MS3_DIR}/audio.wav": {"audio length"}}
    assert "4.900 s of audio for 5 frames" in detail(report, f"v1m/{MS3_DIR}/audio.wav", "audio length")

    write_tone(obj / S4_AUDIO, 3.0)
    assert problems(validate_dataset(obj)) == {S4_AUDIO: {"audio length"}}


def test_low_sample_rate_silent_and_corrupt_audio(semantic):
    write_tone(semantic / "v1s" / "s4_dog_train" / "audio.wav", 5.0, rate=8000)
    write_tone(semantic / "v1m" / MS3_DIR / "audio.wav", 5.0, amplitude=0.0)
    (semantic / V2_DIR / "audio.wav").write_bytes(b"RIFF\x00\x00not a wave file")
    report = validate_dataset(semantic)
    assert problems(report) == {
        "v1s/s4_dog_train/audio.wav": {"audio sample rate"},
        f"v1m/{MS3_DIR}/audio.wav": {"audio not silent"},
        f"{V2_DIR}/audio.wav": {"file decodable"},
    }


def test_wrong_frame_count_is_rejected(tmp_path):
    videos = [
        {"uid": "v2_too_short", "subset": "v2", "split": "val", "n_frames": 5},
        {"uid": "v1s_too_long", "subset": "v1s", "split": "test", "n_frames": 7},
    ]
    root = write_semantic_dataset(tmp_path / "d", videos=videos)
    report = validate_dataset(root)
    found = problems(report)
    assert found["v1s/v1s_too_long/frames"] == {"frame count"}
    assert detail(report, "v1s/v1s_too_long/frames", "frame count") == "7 frames on disk, subset v1s has 5"
    assert found["v2/v2_too_short/frames"] == {"frame count"}
    # every missing frame, mask and second of audio of the short video is named too
    for i in range(5, 10):
        assert found[f"v2/v2_too_short/frames/{i}.jpg"] == {"file present"}
        assert found[f"v2/v2_too_short/labels_rgb/{i}.png"] == {"file present"}
    assert found["v2/v2_too_short/audio.wav"] == {"audio length"}
    assert set(found) - {p for p in found if p.startswith("v2/v2_too_short")} == {"v1s/v1s_too_long/frames"}


def test_extra_frame_is_rejected_object(obj):
    extra = obj / MS3_FRAMES / "ms3vid_a_test.mp4_6.png"
    extra.write_bytes((obj / MS3_FRAMES / "ms3vid_a_test.mp4_5.png").read_bytes())
    report = validate_dataset(obj)
    assert problems(report) == {MS3_FRAMES: {"frame count"}}


def test_mask_and_frame_size_mismatch(semantic, obj):
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(semantic / V2_DIR / "labels_rgb" / "4.png")
    report = validate_dataset(semantic)
    assert problems(report) == {f"{V2_DIR}/labels_rgb/4.png": {"mask size matches frame"}}
    assert (
        detail(report, f"{V2_DIR}/labels_rgb/4.png", "mask size matches frame") == "mask is 64x48, its frame is 64x64"
    )

    Image.fromarray(np.zeros((64, 32), np.uint8)).save(obj / S4_MASKS / "s4vid_violin_val_3.png")
    assert problems(validate_dataset(obj)) == {f"{S4_MASKS}/s4vid_violin_val_3.png": {"mask size matches frame"}}


def test_frame_size_inconsistent_within_video(semantic):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(semantic / V2_DIR / "frames" / "6.jpg")
    report = validate_dataset(semantic)
    # the odd frame, and its mask, which no longer matches it
    assert problems(report) == {
        f"{V2_DIR}/frames/6.jpg": {"frame size consistent within video"},
        f"{V2_DIR}/labels_rgb/6.png": {"mask size matches frame"},
    }


# ----------------------------------------------------------------------------------
# Manifest defects
# ----------------------------------------------------------------------------------


def test_duplicate_uid_is_rejected(semantic, obj):
    csv = semantic / "metadata.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines + [lines[2].replace("yt0001", "yt9999")]) + "\n")
    report = validate_dataset(semantic)
    assert problems(report) == {"metadata.csv": {"uid unique"}}
    assert [f.detail.split(":")[0] for f in report.failures] == [
        "line 3 (uid='ms3_guitar_man_val')",
        "line 5 (uid='ms3_guitar_man_val')",
    ]

    edit_csv(obj / S4_CSV, "s4vid_violin_val,", "s4vid_dog_train,")
    report = validate_dataset(obj)
    assert problems(report)[S4_CSV] == {"name unique"}


def test_unknown_split_and_subset_are_rejected(semantic, obj):
    edit_csv(semantic / "metadata.csv", ",test,v2", ",testing,v2")
    edit_csv(semantic / "metadata.csv", ",val,v1m", ",val,v3")
    report = validate_dataset(semantic)
    assert problems(report) == {"metadata.csv": {"split known", "subset known"}}
    assert "split 'testing'" in detail(report, "metadata.csv", "split known")
    assert "'v3'" in detail(report, "metadata.csv", "subset known")

    edit_csv(obj / MS3_CSV, "ms3vid_a_test,test", "ms3vid_a_test,tst")
    report = validate_dataset(obj)
    assert problems(report)[MS3_CSV] == {"split known"}


def test_manifest_columns_nulls_and_classes(semantic):
    csv = semantic / "metadata.csv"
    text = csv.read_text().replace("vid,uid,s_min", "video,uid,s_min", 1)  # wrong column name
    text = text.replace(",guitar_man,", ",guitar_unicorn,")  # unknown class
    text = text.replace(",violin,", ",,")  # empty a_obj
    csv.write_text(text)
    report = validate_dataset(semantic)
    assert problems(report) == {"metadata.csv": {"manifest columns", "a_obj not null", "a_obj names are classes"}}
    assert "['vid']" in detail(report, "metadata.csv", "manifest columns")
    assert "['unicorn']" in detail(report, "metadata.csv", "a_obj names are classes")


def test_missing_class_list_and_manifest(semantic, tmp_path):
    (semantic / "label2idx.json").unlink()
    assert problems(validate_dataset(semantic)) == {"label2idx.json": {"class list"}}

    empty = tmp_path / "empty"
    empty.mkdir()
    report = validate_dataset(empty)
    assert not report.ok and problems(report) == {".": {"manifest present"}}
    assert problems(validate_dataset(empty, layout="semantic")) == {"metadata.csv": {"manifest present"}}


# ----------------------------------------------------------------------------------
# Several defects at once; the CLI and its JSON report
# ----------------------------------------------------------------------------------


def test_cli_report_names_every_bad_file(semantic, tmp_path, capsys):
    truncate(semantic / V2_DIR / "frames" / "0.jpg")
    (semantic / "v1s" / "s4_dog_train" / "labels_rgb" / "0.png").unlink()
    report_path = tmp_path / "out" / "report.json"
    code = cli_main(["validate", str(semantic), "--report", str(report_path), "--workers", "2"])
    assert code == 2
    out, err = capsys.readouterr()
    assert f"{V2_DIR}/frames/0.jpg" in out and "v1s/s4_dog_train/labels_rgb/0.png" in out
    assert "dataset is invalid: 2 problems in 2 files" in err

    report = json.loads(report_path.read_text())
    assert report["ok"] is False
    assert report["bad_files"] == ["v1s/s4_dog_train/labels_rgb/0.png", f"{V2_DIR}/frames/0.jpg"]
    assert {(f["path"], f["rule"]) for f in report["failures"]} == {
        (f"{V2_DIR}/frames/0.jpg", "file decodable"),
        ("v1s/s4_dog_train/labels_rgb/0.png", "file present"),
    }
    assert [p.name for p in report_path.parent.iterdir()] == ["report.json"]  # no temp file left


@pytest.mark.parametrize("layout_args", [["--set", "data.layout=object"], ["--layout", "object"]])
def test_cli_valid_dataset_prints_summary_and_writes_report(obj, tmp_path, capsys, layout_args):
    report_path = tmp_path / "report.json"
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  layout: semantic\n")  # overridden by --set or by --layout
    argv = ["validate", str(obj), "--params", str(params), *layout_args, "--report", str(report_path)]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("OK: object layout, 3 videos, 15 frames")
    report = json.loads(report_path.read_text())
    assert report["ok"] is True and report["failures"] == [] and report["checks_passed"] == report["checks_total"]
    # the report carries the data's content digest: what the stages after validate depend on
    assert report["fingerprint"] == tree_digest(obj)


def test_missing_root_is_a_user_error(tmp_path, capsys):
    assert cli_main(["validate", str(tmp_path / "nope")]) == 2
    assert "nope: dataset root is not a directory" in capsys.readouterr().err


def test_generated_benchmark_is_valid(tmp_path, capsys):
    out = tmp_path / "synth"
    no_params = ["--params", os.devnull]  # the defaults: layout auto
    assert cli_main(["synth", "--out", str(out), *no_params, "--set", "data.size=tiny", "--workers", "1"]) == 0
    capsys.readouterr()
    assert cli_main(["validate", str(out), *no_params]) == 0
    summary = capsys.readouterr().out.strip()
    assert summary.startswith("OK: semantic layout, 12 videos")


@pytest.mark.parametrize("layout", ["semantic", "object", "object-release"])
def test_checks_exactly_the_files_the_reader_loads(tmp_path, layout):
    from ssp.data.avsbench import load_records
    from ssp.data.validation import expected_videos

    if layout == "semantic":
        root = write_semantic_dataset(tmp_path / "d")
    else:
        root = write_object_dataset(tmp_path / "d", release_tree=layout == "object-release")
    read = {str(p.relative_to(root)) for r in load_records(root) for p in r.referenced_paths()}
    checked = {f.path for v in expected_videos(root) for f in v.files}
    assert checked == read
    assert len(checked) == sum(1 for p in root.rglob("*") if p.suffix in (".jpg", ".png", ".wav"))


def test_labels_semantic_is_not_checked(tmp_path):
    # not read by the official loaders nor by ssp: whatever it holds, the data is valid
    root = write_semantic_dataset(tmp_path / "d", videos=SEMANTIC_VIDEOS[2:], semantic_labels=True)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / V2_DIR / "labels_semantic" / "2.png")
    (root / V2_DIR / "labels_semantic" / "3.png").unlink()
    assert validate_dataset(root).ok


def test_palette_mode_object_mask_is_binary_by_its_indices(obj):
    path = obj / MS3_MASKS / "ms3vid_a_test_2.png"
    values = (np.asarray(Image.open(path)) > 0).astype(np.uint8)
    image = Image.frombytes("P", (values.shape[1], values.shape[0]), values.tobytes())
    image.putpalette([255, 255, 255, 0, 0, 0])  # index 0 drawn white, index 1 black
    image.save(path)
    assert validate_dataset(obj).ok


ZERO_BASED = '{"background": 0, "accordion": 1, "dog": 2}'
WITH_GAP = '{"background": 1, "accordion": 2, "dog": 4}'


@pytest.mark.parametrize("text", [ZERO_BASED, WITH_GAP], ids=["0-based", "gap"])
def test_label2idx_not_in_the_released_form_is_named(semantic, text):
    (semantic / "label2idx.json").write_text(text)
    report = validate_dataset(semantic)
    assert problems(report) == {"label2idx.json": {"class list"}}
    assert 'expected the released AVSBench form {"background": 1' in detail(report, "label2idx.json", "class list")


def test_a_rule_that_cannot_run_fails_instead_of_passing():
    from ssp.data.validation import Rule, _Validator

    validator = _Validator()
    rules = [
        Rule(
            "needs a column",
            validator.gxe.ExpectColumnValuesToBeInSet(column="absent", value_set=[1]),
            lambda row: "unused",
        )
    ]
    failures = validator.validate("table", [{"path": "a", "present": True}], rules, ["path"], source="x.csv")
    assert [(f.path, f.rule) for f in failures] == [("x.csv", "needs a column")]
    assert failures[0].detail.startswith("check could not run:") and "absent" in failures[0].detail


def test_a_obj_names_match_classes_loosely(semantic):
    assert ",guitar_man," in (semantic / "metadata.csv").read_text()  # the released form: joined with _
    edit_csv(semantic / "metadata.csv", ",guitar_man,", ',"Guitar, MAN",')  # a quoted comma list
    edit_csv(semantic / "metadata.csv", ",violin,", ",Emergency-Car_man,")
    assert validate_dataset(semantic).ok


def test_manifest_without_rows_and_padded_cells(semantic, obj):
    text = (semantic / "metadata.csv").read_text()
    (semantic / "metadata.csv").write_text(text.replace(",test,v2", ", test , v2 "))  # spaces are ignored
    assert validate_dataset(semantic).ok

    (obj / MS3_CSV).write_text("video_id,split\n")
    report = validate_dataset(obj)
    assert problems(report) == {MS3_CSV: {"manifest not empty"}}
