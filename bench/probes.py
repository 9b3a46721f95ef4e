"""Probes of a stage-1 checkpoint on the generated benchmark: does the model use its cues?

Issue 16, deliverable 3. Prints one JSON of numbers (``--json FILE`` writes it too):

- ``audio_probe``: can the sounding class be read off the audio alone? A logistic
  regression (fit on the train split, scored on the test split) on every v1s frame (one
  source, sounding all the time), labelled with that source's class; on (a) the model's
  audio embedding (``audio_encoder`` output, 128-d, and after ``audio_projection``, D-d)
  and (b) the raw log-mel pooled over time (mean and std per mel band, 128-d), the
  reference of what is learnable from the input. Chance = 1 / K.
- ``visual_probe``: the same question for the image side: the per-pixel mask features
  averaged over each object (every subset), fit on train, scored on test, against the
  object's class. The audio can only pick an object if both sides carry its class.
  ``binding``: whether an object sounds, from a logistic regression on the outer product of
  its pooled feature and the frame's audio embedding (a bilinear match, frozen features),
  beside the accuracy of calling every object sounding.
- ``segmentation``: per test frame, the IoU of the predicted foreground (p > 0.5) with
  (i) the sounding objects (the GT), (ii) all objects (salient-object segmentation),
  (iii) the moving objects; per scenario and per subset. (ii) >> (i) = the model segments
  objects, not sounding objects. Empty vs empty counts as IoU 1.
- ``audio_swap``: the same frames with the audio of another test video (a different
  sounding class) and with a zero log-mel: mean |Δp| of the foreground probability, the
  IoU between the two binary predictions, and how often a pixel's decision flips. ~0 =
  the audio pathway is dead.
- ``audio_retarget``: test frames with a silent object of a class no source has: the audio
  replaced by a single-source (v1s) clip of the silent object's class. A model that
  follows the audio moves its mask from the source to that object: IoU of the prediction
  with the silent object before / after the swap, and with the original GT.
- ``query_audio``: how much the audio changes the decoder's input queries: the mean norm of
  the cosine-weighted audio term and of the learned query features (``audio_aware_queries``).

Runs in about a minute on 2 CPU cores for the demo benchmark::

    .venv/bin/python bench/probes.py --data data/synth --logmel data/logmel \\
        --checkpoint runs/stage1/checkpoints/best.safetensors --json probes.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ssp.data.avsbench import load_records
from ssp.data.synthetic import render_object_mask
from ssp.engine.inputs import InputDirs, build_dataset, dataset_batches, model_inputs
from ssp.models.audio_queries import audio_aware_queries
from ssp.models.checkpoint import load_model


def scene_of(record) -> dict:
    return json.loads((record.video_dir / "scene.json").read_text())


def object_masks(scene: dict, frame: int, size: int) -> dict[str, np.ndarray]:
    """The frame's sounding / all / moving object masks (booleans, size x size)."""
    height, width = scene["image_size"]
    out = {k: np.zeros((height, width), bool) for k in ("sounding", "all", "moving")}
    for obj in scene["objects"]:
        mask = render_object_mask(obj, frame, height, width)
        out["all"] |= mask
        if obj["sounding"][frame]:
            out["sounding"] |= mask
        if obj["moving"][frame]:
            out["moving"] |= mask
    if height != size:
        raise SystemExit(f"scene image size {height} differs from the model's {size}")
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def frame_batches(model, records, dirs: InputDirs, batch_videos: int):
    """(batch, records of the batch) over ``records`` in order, every frame of each video."""
    dataset = build_dataset(records, model.config, dirs)
    for start, batch in zip(range(0, len(records), batch_videos), dataset_batches(dataset, batch_videos)):
        yield batch, records[start : start + batch_videos]


@torch.no_grad()
def foreground(model, batch: dict) -> torch.Tensor:
    return torch.sigmoid(model.predict(model_inputs(batch)))


# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def audio_probe(model, data: Path, dirs: InputDirs, num_classes: int) -> dict:
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    features: dict[str, dict[str, list]] = {}
    labels: dict[str, list] = {}
    for split in ("train", "test"):
        records = load_records(data, subsets=["v1s"], splits=[split])
        feats = defaultdict(list)
        y = []
        for batch, recs in frame_batches(model, records, dirs, 8):
            logmel = batch["logmel"].float()
            encoded = model.audio_encoder(logmel.unsqueeze(1))
            feats["audio_encoder"].append(encoded.numpy())
            feats["audio_projection"].append(model.audio_projection(encoded).numpy())
            feats["logmel_pooled"].append(torch.cat([logmel.mean(1), logmel.std(1)], 1).numpy())
            for record in recs:
                scene = scene_of(record)
                for t in range(scene["num_frames"]):
                    sounding = [o["class_index"] for o in scene["objects"] if o["sounding"][t]]
                    y.append(sounding[0] if len(sounding) == 1 else -1)
        features[split] = {k: np.concatenate(v) for k, v in feats.items()}
        labels[split] = np.array(y)
    result = {"chance": 1.0 / num_classes, "train_frames": int((labels["train"] >= 0).sum())}
    result["test_frames"] = int((labels["test"] >= 0).sum())
    for name in features["train"]:
        keep_train, keep_test = labels["train"] >= 0, labels["test"] >= 0
        scaler = StandardScaler().fit(features["train"][name][keep_train])
        clf = LogisticRegression(max_iter=2000, C=1.0)
        clf.fit(scaler.transform(features["train"][name][keep_train]), labels["train"][keep_train])
        result[name] = {
            "train_acc": float(
                clf.score(scaler.transform(features["train"][name][keep_train]), labels["train"][keep_train])
            ),
            "test_acc": float(
                clf.score(scaler.transform(features["test"][name][keep_test]), labels["test"][keep_test])
            ),
        }
    return result


# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def visual_probe(model, data: Path, dirs: InputDirs) -> dict:
    """Do the per-pixel mask features (what the masks are dotted with) tell the classes apart?
    Per object and frame: the mask features (S/4 grid) averaged over the object's mask, fit on
    the train split (a logistic regression), scored on the test split, against the class."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    xs, ys, pairs, sounds = {}, {}, {}, {}
    for split in ("train", "test"):
        feats, labels, pair, sounding = [], [], [], []
        records = load_records(data, splits=[split])
        for batch, recs in frame_batches(model, records, dirs, 8):
            config = model.config
            frames = batch["frames"].float()
            pixel_values = (frames - model.pixel_mean) / model.pixel_std
            mask_features = model.pixel_level_module(pixel_values)[0]  # N×D×h×w (before audio/text)
            h = mask_features.shape[-1]
            audio = model.audio_encoder(batch["logmel"].float().unsqueeze(1))
            for i in range(len(frames)):
                v, t = int(batch["video_index"][i]), int(batch["frame_index"][i])
                for obj in scene_of(recs[v])["objects"]:
                    mask = render_object_mask(obj, t, config.image_size, config.image_size)
                    small = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(mask).float()[None], h)[0]
                    weight = small / small.sum().clamp_min(1e-6)
                    feats.append((mask_features[i] * weight).sum(dim=(1, 2)).numpy())
                    labels.append(obj["class_index"])
                    pair.append(np.outer(feats[-1], audio[i].numpy()).ravel())
                    sounding.append(bool(obj["sounding"][t]))
        xs[split], ys[split] = np.stack(feats), np.array(labels)
        pairs[split], sounds[split] = np.stack(pair), np.array(sounding)
    scaler = StandardScaler().fit(xs["train"])
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(xs["train"]), ys["train"])
    result = {
        "objects_train": len(ys["train"]),
        "objects_test": len(ys["test"]),
        "train_acc": float(clf.score(scaler.transform(xs["train"]), ys["train"])),
        "test_acc": float(clf.score(scaler.transform(xs["test"]), ys["test"])),
    }
    # binding: is this object sounding, from the outer product of its pooled feature and the
    # frame's audio embedding (a bilinear classifier: what AudioPixelSimilarity computes)
    scaler = StandardScaler().fit(pairs["train"])
    clf = LogisticRegression(max_iter=3000, C=0.1).fit(scaler.transform(pairs["train"]), sounds["train"])
    result["binding"] = {
        "test_acc": float(clf.score(scaler.transform(pairs["test"]), sounds["test"])),
        "train_acc": float(clf.score(scaler.transform(pairs["train"]), sounds["train"])),
        "all_sound_baseline_test_acc": float(sounds["test"].mean()),
    }
    return result


# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def segmentation_and_swaps(model, data: Path, dirs: InputDirs, seed: int) -> dict:
    size = model.config.image_size
    records = load_records(data, splits=["test"])
    # single-source clips per class (v1s train), for the retarget probe
    bank: dict[int, list[torch.Tensor]] = defaultdict(list)
    for batch, recs in frame_batches(model, load_records(data, subsets=["v1s"], splits=["train"]), dirs, 16):
        for v, record in enumerate(recs):
            cls = scene_of(record)["objects"]
            sounding = [o["class_index"] for o in cls if o["sounding"][0]]
            bank[sounding[0]].append(batch["logmel"][batch["video_index"] == v][0])
    rng = np.random.default_rng(seed)

    rows = []  # one per labelled test frame
    retarget = []
    swap_stats = {"other_video": defaultdict(list), "zero": defaultdict(list)}
    audio_terms, query_norm = [], None
    all_logmel = []
    batches = list(frame_batches(model, records, dirs, 4))
    for batch, _ in batches:
        all_logmel.append(batch["logmel"])
    all_logmel = torch.cat(all_logmel)
    frame_class = []  # per test frame: frozenset of sounding classes
    for batch, recs in batches:
        for v, record in enumerate(recs):
            scene = scene_of(record)
            for t in range(int((batch["video_index"] == v).sum())):
                frame_class.append(frozenset(o["class_index"] for o in scene["objects"] if o["sounding"][t]))
    offset = 0
    for batch, recs in batches:
        n = len(batch["frame_index"])
        p = foreground(model, batch)
        pred = (p > 0.5).numpy()
        # audio term of the queries
        audio = model.audio_projection(model.audio_encoder(batch["logmel"].float().unsqueeze(1)))
        tm = model.transformer_module
        q = audio_aware_queries(tm.queries_features.weight, tm.queries_embedder.weight, audio)
        audio_terms.append((q - tm.queries_features.weight[:, None, :]).norm(dim=-1).mean().item())
        query_norm = tm.queries_features.weight.norm(dim=-1).mean().item()
        # swaps: another test frame's audio whose sounding classes differ
        swapped = batch["logmel"].clone()
        for i in range(n):
            mine = frame_class[offset + i]
            for _ in range(50):
                j = int(rng.integers(len(all_logmel)))
                if frame_class[j] != mine and not (frame_class[j] & mine):
                    break
            swapped[i] = all_logmel[j]
        for kind, logmel in (("other_video", swapped), ("zero", torch.zeros_like(batch["logmel"]))):
            q = foreground(model, {**batch, "logmel": logmel})
            stats = swap_stats[kind]
            stats["mean_abs_dp"].append((q - p).abs().mean(dim=(1, 2)).numpy())
            qb = (q > 0.5).numpy()
            stats["iou_between"].extend(iou(a, b) for a, b in zip(pred, qb))
            stats["flipped_fraction"].append((pred != qb).mean(axis=(1, 2)))
        # retarget: audio of a silent object's class (absent from the sources)
        re_logmel, re_targets = batch["logmel"].clone(), {}
        for i in range(n):
            v, t = int(batch["video_index"][i]), int(batch["frame_index"][i])
            scene = scene_of(recs[v])
            sounding_cls = {o["class_index"] for o in scene["objects"] if o["sounding"][t]}
            silent = [o for o in scene["objects"] if not o["sounding"][t] and o["class_index"] not in sounding_cls]
            if silent and bank[silent[0]["class_index"]]:
                clips = bank[silent[0]["class_index"]]
                re_logmel[i] = clips[int(rng.integers(len(clips)))]
                re_targets[i] = render_object_mask(silent[0], t, size, size)
        if re_targets:
            q = (foreground(model, {**batch, "logmel": re_logmel}) > 0.5).numpy()
            for i, target in re_targets.items():
                gt = batch["masks"][i].numpy() > 0
                retarget.append(
                    {
                        "silent_before": iou(pred[i], target),
                        "silent_after": iou(q[i], target),
                        "gt_before": iou(pred[i], gt),
                        "gt_after": iou(q[i], gt),
                    }
                )
        # segmentation vs sounding / all / moving objects (labelled frames)
        for i in range(n):
            if not bool(batch["labelled"][i]):
                continue
            v, t = int(batch["video_index"][i]), int(batch["frame_index"][i])
            scene = scene_of(recs[v])
            masks = object_masks(scene, t, size)
            gt = batch["masks"][i].numpy() > 0
            rows.append(
                {
                    "subset": scene["subset"],
                    "scenario": scene["scenario"],
                    "iou_sounding": iou(pred[i], gt),
                    "iou_sounding_render": iou(pred[i], masks["sounding"]),
                    "iou_all_objects": iou(pred[i], masks["all"]),
                    "iou_moving": iou(pred[i], masks["moving"]),
                    "pred_area": float(pred[i].mean()),
                    "gt_area": float(gt.mean()),
                }
            )
        offset += n

    def summarise(group: list[dict]) -> dict:
        keys = ("iou_sounding", "iou_all_objects", "iou_moving", "pred_area", "gt_area")
        out = {k: round(float(np.mean([r[k] for r in group])), 4) for k in keys}
        out["frames"] = len(group)
        return out

    seg = {"all": summarise(rows)}
    for key in ("subset", "scenario"):
        for value in sorted({r[key] for r in rows}):
            seg[value] = summarise([r for r in rows if r[key] == value])
    render_check = max(abs(r["iou_sounding"] - r["iou_sounding_render"]) for r in rows)
    swaps = {
        kind: {
            k: round(float(np.mean(np.concatenate(v) if isinstance(v[0], np.ndarray) else v)), 4)
            for k, v in stats.items()
        }
        for kind, stats in swap_stats.items()
    }
    retarget_summary = {k: round(float(np.mean([r[k] for r in retarget])), 4) for k in retarget[0]} if retarget else {}
    retarget_summary["frames"] = len(retarget)
    return {
        "segmentation": seg,
        "render_vs_gt_max_abs_diff": round(render_check, 4),
        "audio_swap": swaps,
        "audio_retarget": retarget_summary,
        "query_audio": {
            "mean_audio_term_norm": round(float(np.mean(audio_terms)), 4),
            "mean_query_feature_norm": round(float(query_norm), 4),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="generated dataset root (ssp synth)")
    parser.add_argument("--checkpoint", required=True, help="stage-1 checkpoint (.safetensors)")
    parser.add_argument("--logmel", default=None, help="`ssp logmel` output (default: from the wav)")
    parser.add_argument("--flow", default=None, help="`ssp flow` output (models with pre_mask/post_mask)")
    parser.add_argument("--prompts", default=None, help="`ssp prompts` output (models with text)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the audio swaps")
    parser.add_argument("--skip-audio-probe", action="store_true", help="skip the linear audio and visual probes")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    model, config, _ = load_model(args.checkpoint, "cpu")
    model.eval()
    if config.stage != 1:
        raise SystemExit(f"{args.checkpoint}: a stage-1 checkpoint is needed (this one is stage {config.stage})")
    data = Path(args.data)
    dirs = InputDirs(flow=args.flow, prompts=args.prompts, logmel=args.logmel)
    num_classes = len(json.loads((data / "manifest.json").read_text()).get("classes", [])) or 8
    result = {"checkpoint": str(args.checkpoint)}
    if not args.skip_audio_probe:
        result["audio_probe"] = audio_probe(model, data, dirs, num_classes)
        result["visual_probe"] = visual_probe(model, data, dirs)
    result.update(segmentation_and_swaps(model, data, dirs, args.seed))
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
