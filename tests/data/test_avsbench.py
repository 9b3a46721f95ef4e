"""AVSBench readers (ssp.data.avsbench) on both layouts, built by avsbench_fixtures."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ssp.data.avsbench import (
    class_names,
    detect_layout,
    load_label2idx,
    load_records,
    read_frame,
    read_mask,
)
from ssp.errors import DataError, SSPError
from tests.avsbench_fixtures import (
    CLASS_INDEX,
    CLASS_NAMES,
    DEFAULT_MS3_VIDEOS,
    DEFAULT_S4_VIDEOS,
    DEFAULT_SEMANTIC_VIDEOS,
    PALETTE,
    RELEASED_LABEL2IDX,
    write_object_dataset,
    write_semantic_dataset,
)


@pytest.fixture(scope="module")
def semantic_root(tmp_path_factory):
    return write_semantic_dataset(tmp_path_factory.mktemp("semantic"))


@pytest.fixture(scope="module")
def object_root(tmp_path_factory):
    return write_object_dataset(tmp_path_factory.mktemp("object"))


# ---------------------------------------------------------------------------------
# Fixtures themselves
# ---------------------------------------------------------------------------------
def test_fixture_writes_the_semantic_layout(semantic_root):
    df = pd.read_csv(semantic_root / "metadata.csv")
    assert list(df.columns) == ["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"]
    assert df.set_index("uid").loc["ms3_guitar_man_train", "a_obj"] == "guitar_man"  # joined with _
    label2idx = json.loads((semantic_root / "label2idx.json").read_text())
    assert label2idx == RELEASED_LABEL2IDX and list(label2idx.items())[:2] == [("background", 1), ("accordion", 2)]
    v1s_train = semantic_root / "v1s" / "s4_dog_train"
    assert sorted(p.name for p in (v1s_train / "labels_rgb").iterdir()) == ["0.png"]
    assert len(list((v1s_train / "frames").glob("*.jpg"))) == 5
    assert len(list((semantic_root / "v2" / "v2_violin_val" / "labels_rgb").glob("*.png"))) == 10
    import soundfile as sf

    info = sf.info(str(semantic_root / "v2" / "v2_violin_val" / "audio.wav"))
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 10 * 16000)


# ---------------------------------------------------------------------------------
# Semantic layout
# ---------------------------------------------------------------------------------
def test_semantic_records_counts_rules_and_paths(semantic_root):
    records = load_records(semantic_root)
    assert detect_layout(semantic_root) == "semantic"
    assert [r.uid for r in records] == [v["uid"] for v in DEFAULT_SEMANTIC_VIDEOS]
    assert Counter((r.subset, r.split) for r in records) == Counter(
        (v["subset"], v["split"]) for v in DEFAULT_SEMANTIC_VIDEOS
    )
    assert len({r.rel_dir for r in records}) == len(records)
    by_uid = {r.uid: r for r in records}

    s4_train = by_uid["s4_dog_train"]
    assert s4_train.num_frames == 5 and s4_train.labelled == [True, False, False, False, False]
    assert s4_train.mask_paths[1:] == [None] * 4
    assert s4_train.rel_dir == "v1s/s4_dog_train"
    assert s4_train.frame_paths[3] == semantic_root / "v1s" / "s4_dog_train" / "frames" / "3.jpg"
    assert s4_train.audio_path == semantic_root / "v1s" / "s4_dog_train" / "audio.wav"
    assert s4_train.objects == ["dog"] and s4_train.layout == "semantic"

    assert by_uid["s4_cat_test"].labelled == [True] * 5
    assert by_uid["ms3_guitar_man_train"].labelled == [True] * 5
    assert by_uid["ms3_guitar_man_train"].objects == ["guitar", "man"]
    v2 = by_uid["v2_baby_girl_bird_test"]
    assert v2.num_frames == 10 and v2.labelled == [True] * 10
    assert v2.start == 6.0  # s_min * 60 + s_sec
    assert v2.objects == ["baby", "girl", "bird"]


def test_semantic_filters(semantic_root):
    records = load_records(semantic_root, subsets=["v2"], splits=["val", "test"])
    assert [r.uid for r in records] == ["v2_violin_val", "v2_baby_girl_bird_test"]
    assert load_records(semantic_root, subsets=["v1m"], splits=["test"]) == []
    with pytest.raises(SSPError, match="unknown subset 'v3'"):
        load_records(semantic_root, subsets=["v3"])
    with pytest.raises(SSPError, match="unknown split"):
        load_records(semantic_root, splits=["training"])


def test_semantic_masks_decode_to_the_classes_written(semantic_root):
    for record in load_records(semantic_root):
        expected = {0} | {CLASS_INDEX[name] for name in record.objects}
        for i in record.labelled_indices:
            classes = read_mask(record, i, task="avss")
            binary = read_mask(record, i, task="avs")
            assert classes.dtype == np.uint8 and classes.shape == (64, 64)
            assert set(np.unique(classes).tolist()) == expected, (record.uid, i)
            assert binary.dtype == np.uint8 and set(np.unique(binary).tolist()) == {0, 1}
            np.testing.assert_array_equal(binary, (classes > 0).astype(np.uint8))


def test_released_form_loads_with_the_class_of_a_known_pixel(tmp_path):
    root = write_semantic_dataset(tmp_path, videos=[{"uid": "a", "objects": ["dog"]}])
    colour_file = np.asarray(Image.open(root / "v2" / "a" / "labels_rgb" / "0.png").convert("RGB"))
    dog = np.argwhere((colour_file == PALETTE[CLASS_INDEX["dog"]]).all(-1))
    y, x = dog[len(dog) // 2]  # a pixel the fixture painted with the palette colour of "dog"
    (record,) = load_records(root)
    classes = read_mask(record, 0, task="avss")
    assert classes[y, x] == CLASS_INDEX["dog"] == RELEASED_LABEL2IDX["dog"] - 1 == 17
    names = class_names(root)
    assert names == CLASS_NAMES and names[classes[y, x]] == "dog"
    assert load_label2idx(root)["dog"] == 17 and list(load_label2idx(root)) == CLASS_NAMES
    assert read_mask(record, 0, task="avs")[y, x] == 1


def test_labels_semantic_is_not_read(tmp_path):
    # The official AVSS loader decodes labels_rgb only; a labels_semantic folder (whatever
    # its encoding) changes nothing.
    root = write_semantic_dataset(tmp_path, videos=[{"uid": "a", "objects": ["dog"]}], semantic_labels=True)
    (record,) = load_records(root)
    before = read_mask(record, 0, task="avss")
    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(root / "v2" / "a" / "labels_semantic" / "0.png")
    (root / "v2" / "a" / "labels_semantic" / "1.png").unlink()
    (record,) = load_records(root)
    np.testing.assert_array_equal(read_mask(record, 0, task="avss"), before)
    assert set(np.unique(read_mask(record, 1, task="avss")).tolist()) == {0, CLASS_INDEX["dog"]}
    assert not any("labels_semantic" in p.relative_to(root).parts for p in record.referenced_paths())


def test_a_obj_as_a_quoted_comma_list_is_read_too(tmp_path):
    root = write_semantic_dataset(tmp_path, videos=[{"uid": "a", "objects": ["guitar", "man"], "a_obj": "guitar,man"}])
    assert '"guitar,man"' in (root / "metadata.csv").read_text()  # pandas quotes the cell
    assert load_records(root)[0].objects == ["guitar", "man"]


def test_unknown_colour_is_an_error_naming_the_file_unless_not_strict(tmp_path):
    root = write_semantic_dataset(tmp_path, videos=[{"uid": "vid1", "objects": ["cat"]}])
    mask_path = root / "v2" / "vid1" / "labels_rgb" / "2.png"
    rgb = np.asarray(Image.open(mask_path).convert("RGB")).copy()
    rgb[:3, :4] = (1, 2, 3)  # 12 pixels of a colour outside the palette
    Image.fromarray(rgb).save(mask_path)
    (record,) = load_records(root)
    for task in ("avss", "avs"):
        with pytest.raises(DataError) as info:
            read_mask(record, 2, task=task)
        assert info.value.path == "v2/vid1/labels_rgb/2.png"
        assert "12 pixels" in info.value.problem and "(1, 2, 3)" in info.value.problem
    lenient = read_mask(record, 2, task="avss", strict=False)
    assert (lenient[:3, :4] == 0).all()
    assert set(np.unique(lenient).tolist()) <= {0, CLASS_INDEX["cat"]}


def test_unlabelled_frame_and_missing_mask_are_errors(semantic_root, tmp_path):
    record = next(r for r in load_records(semantic_root) if r.uid == "s4_dog_train")
    with pytest.raises(DataError, match="frame 1 has no ground-truth mask"):
        read_mask(record, 1)
    root = write_semantic_dataset(tmp_path, videos=[{"uid": "m", "subset": "v1m"}])
    (root / "v1m" / "m" / "labels_rgb" / "4.png").unlink()
    (record,) = load_records(root)
    with pytest.raises(DataError) as info:
        read_mask(record, 4)
    assert info.value.path == "v1m/m/labels_rgb/4.png" and "missing" in info.value.problem


def test_frame_count_comes_from_disk_and_keeps_gaps(tmp_path):
    root = write_semantic_dataset(
        tmp_path,
        videos=[
            {"uid": "long", "subset": "v2", "n_frames": 7},
            {"uid": "gap", "subset": "v1m"},
            {"uid": "noframes", "subset": "v1m"},
        ],
    )
    (root / "v1m" / "gap" / "frames" / "2.jpg").unlink()
    shutil.rmtree(root / "v1m" / "noframes" / "frames")
    long, gap, noframes = load_records(root)
    assert long.num_frames == 7 and long.labelled == [True] * 7
    assert gap.num_frames == 5 and not gap.frame_paths[2].exists()
    assert noframes.num_frames == 5  # falls back to the subset's frame count
    with pytest.raises(DataError) as info:
        read_frame(gap.frame_paths[2], root)
    assert info.value.path == "v1m/gap/frames/2.jpg" and "missing" in info.value.problem


def test_read_frame_shape_and_corrupt_file(semantic_root, tmp_path):
    record = load_records(semantic_root)[0]
    frame = read_frame(record.frame_paths[0])
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    broken = tmp_path / "0.jpg"
    broken.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="cannot decode frame"):
        read_frame(broken)
    truncated = tmp_path / "1.jpg"
    truncated.write_bytes(record.frame_paths[0].read_bytes()[:200])
    with pytest.raises(DataError, match="cannot decode frame"):
        read_frame(truncated)


def test_manifest_errors(tmp_path, semantic_root):
    with pytest.raises(DataError, match="not an AVSBench dataset"):
        detect_layout(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_records(tmp_path / "nowhere")

    root = write_semantic_dataset(tmp_path / "a", videos=[{"uid": "x"}, {"uid": "y", "label": "v3"}])
    with pytest.raises(DataError) as info:
        load_records(root)
    assert info.value.path == "metadata.csv" and "line 3 (y)" in info.value.problem and "'v3'" in info.value.problem

    df = pd.read_csv(root / "metadata.csv").drop(columns=["label"])
    df.to_csv(root / "metadata.csv", index=False)
    with pytest.raises(DataError, match="missing column"):
        load_records(root)
    (root / "metadata.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        load_records(root)


def test_duplicate_uids_do_not_crash_the_reader(tmp_path):
    root = write_semantic_dataset(tmp_path, videos=[{"uid": "same"}, {"uid": "same", "split": "val"}])
    records = load_records(root)
    assert [(r.uid, r.split) for r in records] == [("same", "train"), ("same", "val")]


def test_class_names_and_label2idx(semantic_root, object_root, tmp_path):
    names = class_names(semantic_root)
    assert len(names) == 71 and names[0] == "background" and names[CLASS_INDEX["violin"]] == "violin"
    assert load_label2idx(semantic_root)["dog"] == CLASS_INDEX["dog"]
    assert class_names(object_root) == ["background", "sounding"]
    with pytest.raises(DataError, match="class list is missing"):
        load_label2idx(tmp_path)
    (tmp_path / "label2idx.json").write_text('{"background": 1, "dog": 2}')  # a released-form subset
    assert load_label2idx(tmp_path) == {"background": 0, "dog": 1}


ZERO_BASED = {name: k for k, name in enumerate(CLASS_NAMES)}  # the older convention
WITH_GAP = {name: k if k < 7 else k + 1 for k, name in enumerate(CLASS_NAMES, start=1)}  # no index 7
BAD_LABEL2IDX = {
    "0-based": (json.dumps(ZERO_BASED), "start at 0 (background: 0)"),
    "gap": (json.dumps(WITH_GAP), "entry 7 ('bell') has index 8, expected 7"),
    "background not first": ('{"dog": 1, "background": 2}', "first entry is 'dog'"),
    "duplicate name": ('{"background": 1, "dog": 2, "dog": 3}', "['dog'] appear more than once"),
    "not an object": ("[1, 2]", "mapping class name -> integer index"),
    "not an integer": ('{"background": "1"}', "mapping class name -> integer index"),
}


@pytest.mark.parametrize("case", sorted(BAD_LABEL2IDX))
def test_label2idx_in_another_form_is_an_error_naming_the_file(tmp_path, case):
    text, problem = BAD_LABEL2IDX[case]
    root = write_semantic_dataset(tmp_path, videos=[{"uid": "a", "n_frames": 1}])
    (root / "label2idx.json").write_text(text)
    for read in (load_label2idx, class_names):
        with pytest.raises(DataError) as info:
            read(root)
        assert info.value.path == "label2idx.json"
        assert problem in info.value.problem
        assert 'expected the released AVSBench form {"background": 1, "accordion": 2, ...}' in info.value.problem


# ---------------------------------------------------------------------------------
# Object layout (AVSBench-object v1)
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("release_tree", [False, True])
def test_object_records(tmp_path, release_tree):
    root = write_object_dataset(tmp_path, release_tree=release_tree)
    assert detect_layout(root) == "object"
    records = load_records(root)
    assert len(records) == len(DEFAULT_S4_VIDEOS) + len(DEFAULT_MS3_VIDEOS)
    assert Counter(r.subset for r in records) == {"v1s": len(DEFAULT_S4_VIDEOS), "v1m": len(DEFAULT_MS3_VIDEOS)}
    assert len({r.rel_dir for r in records}) == len(records)
    for record in records:
        assert record.layout == "object" and record.num_frames == 5
        assert all(p.is_file() for p in record.frame_paths) and record.audio_path.is_file()
        expected = [True] + [False] * 4 if (record.subset == "v1s" and record.split == "train") else [True] * 5
        assert record.labelled == expected, record.uid
        assert all(record.mask_paths[i].is_file() for i in record.labelled_indices)
    s4 = next(r for r in records if r.uid == "s4vid_violin_train")
    assert (s4.category, s4.objects, s4.start) == ("playing_violin", ["playing_violin"], 2.0)
    assert s4.rel_dir == "v1s/train/playing_violin/s4vid_violin_train"
    ms3 = next(r for r in records if r.uid == "ms3vid_b_val")
    assert ms3.rel_dir == "v1m/val/ms3vid_b_val" and ms3.category == ""
    assert ms3.frame_paths[0].name == "ms3vid_b_val.mp4_1.png"


def test_object_masks_are_binary(object_root):
    for record in load_records(object_root):
        for i in record.labelled_indices:
            mask = read_mask(record, i, task="avs")
            written = np.asarray(Image.open(record.mask_paths[i]))
            assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) == {0, 1}
            np.testing.assert_array_equal(mask, (written > 0).astype(np.uint8))
    with pytest.raises(DataError, match="binary"):
        read_mask(load_records(object_root)[0], 0, task="avss")


def test_palette_mode_object_mask_is_read_by_its_indices(tmp_path):
    # The official MS3 loader opens masks in mode "P": indices count, not the colours.
    root = write_object_dataset(tmp_path, s4=False)
    record = load_records(root)[0]
    path = record.mask_paths[0]
    written = (np.asarray(Image.open(path)) > 0).astype(np.uint8)
    image = Image.frombytes("P", (written.shape[1], written.shape[0]), written.tobytes())
    image.putpalette([255, 255, 255, 0, 0, 0])  # index 0 drawn white, index 1 black
    image.save(path)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(read_mask(record, 0), written)


def test_object_parts_and_filters(tmp_path):
    s4_only = write_object_dataset(tmp_path / "s4", ms3=False)
    assert {r.subset for r in load_records(s4_only)} == {"v1s"}
    ms3_only = write_object_dataset(tmp_path / "ms3", s4=False)
    assert {r.subset for r in load_records(ms3_only)} == {"v1m"}
    both = write_object_dataset(tmp_path / "both")
    assert [r.uid for r in load_records(both, subsets=["v1m"], splits=["test"])] == ["ms3vid_c_test"]
    assert load_records(both, subsets=["v2"]) == []


def test_layout_override(tmp_path):
    root = write_semantic_dataset(tmp_path, videos=[{"uid": "sem"}])
    write_object_dataset(root, ms3=False)
    assert detect_layout(root) == "semantic"
    assert [r.uid for r in load_records(root)] == ["sem"]
    assert {r.layout for r in load_records(root, layout="object")} == {"object"}
    with pytest.raises(SSPError, match="unknown layout"):
        load_records(root, layout="coco")
    with pytest.raises(DataError, match="no AVSBench-object manifest"):
        load_records(write_semantic_dataset(tmp_path / "only_sem", videos=[{"uid": "a"}]), layout="object")


# ---------------------------------------------------------------------------------
# Torch dataset and collate (ssp.data.datasets)
# ---------------------------------------------------------------------------------
import torch  # noqa: E402  (reader tests above do not need torch)

from ssp.data.audio import logmel_from_wav  # noqa: E402
from ssp.data.datasets import AVSDataset, collate_frames  # noqa: E402

MIXED_VIDEOS = [
    {"uid": "five", "subset": "v1m", "split": "val", "objects": ["guitar", "man"]},
    {"uid": "ten", "subset": "v2", "split": "val", "objects": ["car", "dog", "cat"]},
    {"uid": "s4train", "subset": "v1s", "split": "train", "objects": ["dog"]},
]


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory):
    return write_semantic_dataset(tmp_path_factory.mktemp("mixed"), videos=MIXED_VIDEOS, size=(48, 40))


def _write_extras(base, records, with_flow=True, with_stage1=True, with_prompts=True, size=(48, 40)):
    """Extras the way the stages write them; returns what was written per uid."""
    rng = np.random.default_rng(3)
    written = {}
    for r in records:
        flows = rng.integers(0, 2, size=(r.num_frames, *size)).astype(np.uint8) * 255
        probs = rng.integers(0, 256, size=(r.num_frames, *size)).astype(np.uint8)
        for i in range(r.num_frames):
            if with_flow:
                (base / "flow" / r.rel_dir / "mask").mkdir(parents=True, exist_ok=True)
                Image.fromarray(flows[i]).save(base / "flow" / r.rel_dir / "mask" / f"{i}.png")
            if with_stage1:
                (base / "stage1" / r.rel_dir).mkdir(parents=True, exist_ok=True)
                Image.fromarray(probs[i]).save(base / "stage1" / r.rel_dir / f"{i}.png")
        prompts = {"a1": f"A video of {r.uid}.", "a2": list(r.objects)}
        if with_prompts:
            (base / "prompts" / r.rel_dir).mkdir(parents=True, exist_ok=True)
            (base / "prompts" / r.rel_dir / "prompts.json").write_text(json.dumps(prompts))
        written[r.uid] = (flows, probs, prompts)
    return written


def test_item_shapes_dtypes_and_resize_conventions(mixed_root):
    records = load_records(mixed_root)
    dataset = AVSDataset(records, task="avss", image_size=32)
    assert len(dataset) == 3
    item = dataset[1]  # the 10-frame v2 video, 48x40 -> 32x32
    assert item["uid"] == "ten" and item["subset"] == "v2" and item["rel_dir"] == "v2/ten"
    assert item["frames"].shape == (10, 3, 32, 32) and item["frames"].dtype == torch.float32
    assert 0.0 <= item["frames"].min() and item["frames"].max() <= 1.0
    assert item["masks"].shape == (10, 32, 32) and item["masks"].dtype == torch.int64
    assert item["labelled"].dtype == torch.bool and item["labelled"].all()
    assert item["logmel"].shape == (10, 96, 64) and item["logmel"].dtype == torch.float32

    record = records[1]
    # frames: bilinear to S x S, [0, 1], not normalised
    expected_frame = np.asarray(Image.fromarray(read_frame(record.frame_paths[4])).resize((32, 32), Image.BILINEAR))
    np.testing.assert_allclose(item["frames"][4].permute(1, 2, 0).numpy(), expected_frame / 255.0, atol=1e-6)
    # masks: nearest, so only the classes that were written come out (bilinear would mix them)
    expected_classes = {0} | {CLASS_INDEX[n] for n in record.objects}
    for i in range(10):
        expected_mask = np.asarray(Image.fromarray(read_mask(record, i, "avss")).resize((32, 32), Image.NEAREST))
        np.testing.assert_array_equal(item["masks"][i].numpy(), expected_mask)
    assert set(torch.unique(item["masks"]).tolist()) == expected_classes

    binary = AVSDataset(records, task="avs", image_size=32)[1]["masks"]
    torch.testing.assert_close(binary, (item["masks"] > 0).long())


def test_unlabelled_frames_are_zero_and_flagged(mixed_root):
    item = AVSDataset(load_records(mixed_root), task="avss", image_size=24)[2]  # v1s train
    assert item["labelled"].tolist() == [True, False, False, False, False]
    assert item["masks"][0].sum() > 0 and (item["masks"][1:] == 0).all()


def test_logmel_in_process_matches_the_logmel_files(mixed_root, tmp_path):
    records = load_records(mixed_root)
    for r in records:
        (tmp_path / r.rel_dir).mkdir(parents=True)
        np.save(tmp_path / r.rel_dir / "logmel.npy", logmel_from_wav(r.audio_path, r.num_frames))
    in_process = AVSDataset(records, image_size=16)
    from_files = AVSDataset(records, image_size=16, logmel_dir=tmp_path)
    for k in range(len(records)):
        torch.testing.assert_close(in_process[k]["logmel"], from_files[k]["logmel"])
    assert float(in_process[1]["logmel"].std()) > 0.1  # a real spectrogram, not a constant

    # the official T x 1 x 96 x 64 shape is accepted; too few seconds / wrong shape are errors
    np.save(tmp_path / records[0].rel_dir / "logmel.npy", np.zeros((5, 1, 96, 64), np.float32))
    assert from_files[0]["logmel"].shape == (5, 96, 64)
    np.save(tmp_path / records[0].rel_dir / "logmel.npy", np.zeros((3, 96, 64), np.float32))
    with pytest.raises(DataError, match="covers 3 s but the video has 5 frames"):
        from_files[0]
    np.save(tmp_path / records[0].rel_dir / "logmel.npy", np.zeros((5, 64, 96), np.float32))
    with pytest.raises(DataError, match="T x 96 x 64"):
        from_files[0]
    (tmp_path / records[0].rel_dir / "logmel.npy").unlink()
    with pytest.raises(DataError) as info:
        from_files[0]
    assert info.value.path.endswith("v1m/five/logmel.npy") and "ssp logmel" in info.value.problem


def test_extras_are_loaded(mixed_root, tmp_path):
    records = load_records(mixed_root)
    written = _write_extras(tmp_path, records)
    dataset = AVSDataset(
        records,
        image_size=48,
        logmel_dir=None,
        flow_dir=tmp_path / "flow",
        stage1_dir=tmp_path / "stage1",
        prompts_dir=tmp_path / "prompts",
    )
    item = dataset[1]
    flows, probs, prompts = written["ten"]
    # written at 48 x 40 (H x W), read at 48 x 48
    assert item["flow_mask"].shape == (10, 48, 48) and item["flow_mask"].dtype == torch.float32
    assert set(torch.unique(item["flow_mask"]).tolist()) == {0.0, 1.0}
    expected_flow = np.asarray(Image.fromarray(flows[7]).resize((48, 48), Image.NEAREST)) / 255.0
    np.testing.assert_array_equal(item["flow_mask"][7].numpy(), expected_flow)
    assert item["stage1_mask"].shape == (10, 48, 48) and item["stage1_mask"].dtype == torch.float32
    expected_probs = np.asarray(Image.fromarray(probs[2]).resize((48, 48), Image.BILINEAR)) / 255.0
    np.testing.assert_allclose(item["stage1_mask"][2].numpy(), expected_probs, atol=1e-6)
    assert item["prompt_a1"] == "A video of ten." and item["prompt_a2"] == ["car", "dog", "cat"]


@pytest.mark.parametrize(
    "missing,stage", [("flow", "ssp flow"), ("stage1", "ssp stage1-masks"), ("prompts", "ssp prompts")]
)
def test_missing_extras_name_the_file(mixed_root, tmp_path, missing, stage):
    records = load_records(mixed_root)
    _write_extras(tmp_path, records, **{f"with_{missing}": False})
    dataset = AVSDataset(
        records,
        image_size=16,
        flow_dir=tmp_path / "flow",
        stage1_dir=tmp_path / "stage1",
        prompts_dir=tmp_path / "prompts",
    )
    with pytest.raises(DataError) as info:
        dataset[0]
    expected = {
        "flow": "flow/v1m/five/mask/0.png",
        "stage1": "stage1/v1m/five/0.png",
        "prompts": "prompts/v1m/five/prompts.json",
    }[missing]
    assert info.value.path == str(tmp_path / expected)
    assert stage in info.value.problem


def test_bad_prompts_file_is_an_error(mixed_root, tmp_path):
    records = load_records(mixed_root)
    _write_extras(tmp_path, records)
    (tmp_path / "prompts" / records[0].rel_dir / "prompts.json").write_text(json.dumps({"a1": "x", "a2": "dog"}))
    with pytest.raises(DataError, match="a2"):
        AVSDataset(records, image_size=16, prompts_dir=tmp_path / "prompts")[0]


def test_collate_flattens_mixed_5_and_10_frame_videos(mixed_root, tmp_path):
    records = load_records(mixed_root)
    _write_extras(tmp_path, records)
    dataset = AVSDataset(
        records,
        task="avss",
        image_size=16,
        flow_dir=tmp_path / "flow",
        stage1_dir=tmp_path / "stage1",
        prompts_dir=tmp_path / "prompts",
    )
    items = [dataset[k] for k in range(3)]
    batch = collate_frames(items)
    n = 5 + 10 + 5
    assert batch["uid"] == ["five", "ten", "s4train"] and batch["subset"] == ["v1m", "v2", "v1s"]
    assert batch["num_frames"].tolist() == [5, 10, 5]
    assert batch["frames"].shape == (n, 3, 16, 16)
    for key in ("masks", "flow_mask", "stage1_mask"):
        assert batch[key].shape == (n, 16, 16)
    assert batch["labelled"].shape == (n,) and int(batch["labelled"].sum()) == 5 + 10 + 1
    assert batch["logmel"].shape == (n, 96, 64)
    assert batch["video_index"].tolist() == [0] * 5 + [1] * 10 + [2] * 5
    assert batch["frame_index"].tolist() == list(range(5)) + list(range(10)) + list(range(5))
    assert batch["video_index"].dtype == batch["frame_index"].dtype == torch.long
    # frame j of the batch is frame frame_index[j] of video video_index[j]
    for j in (0, 7, 14, 15, 19):
        v, f = int(batch["video_index"][j]), int(batch["frame_index"][j])
        torch.testing.assert_close(batch["frames"][j], items[v]["frames"][f])
        torch.testing.assert_close(batch["masks"][j], items[v]["masks"][f])
    assert batch["prompt_a1"] == ["A video of five."] * 5 + ["A video of ten."] * 10 + ["A video of s4train."] * 5
    assert batch["prompt_a2"][5] == ["car", "dog", "cat"] and len(batch["prompt_a2"]) == n
    assert "flow_mask" not in collate_frames([AVSDataset(records, image_size=16)[0]])
    with pytest.raises(ValueError, match="flow_mask"):
        collate_frames([items[0], AVSDataset(records, image_size=16)[1]])


def test_dataloader_with_workers_is_deterministic(mixed_root):
    dataset = AVSDataset(load_records(mixed_root), task="avs", image_size=16, max_frames=4)
    assert [dataset.num_frames(k) for k in range(3)] == [4, 4, 4]
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_frames)
    batches = list(loader)
    assert [b["frames"].shape[0] for b in batches] == [8, 4]
    sequential = collate_frames([dataset[0], dataset[1]])
    for key in ("frames", "masks", "labelled", "logmel", "video_index", "frame_index"):
        torch.testing.assert_close(batches[0][key], sequential[key])


def test_dataset_argument_errors(mixed_root, object_root):
    with pytest.raises(SSPError, match="unknown task"):
        AVSDataset(load_records(mixed_root), task="seg")
    with pytest.raises(SSPError, match="AVSBench-object"):
        AVSDataset(load_records(object_root), task="avss")
    item = AVSDataset(load_records(object_root), task="avs", image_size=16)[0]
    assert item["masks"].shape == (5, 16, 16) and set(torch.unique(item["masks"]).tolist()) == {0, 1}


def test_record_helpers(semantic_root, object_root):
    record = next(r for r in load_records(semantic_root) if r.uid == "s4_dog_train")
    assert record.video_dir == semantic_root / "v1s" / "s4_dog_train"
    paths = record.referenced_paths()
    assert len(paths) == 5 + 1 + 1  # frames, audio, one colour mask
    assert all(p.is_file() for p in paths)
    s4 = load_records(object_root)[0]
    assert s4.video_dir is None and len(s4.referenced_paths()) == 5 + 1 + 1
