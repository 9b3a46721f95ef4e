"""Benchmark of the optical flow stage (`ssp flow`).

Measures, on this machine:

1. Accuracy and speed of every available flow method on the Middlebury 2014
   "motorcycle" stereo pair that ships with scikit-image (741×500):
   EPE (mean end-point error, pixels) against the ground truth and pairs/s.
   Ground truth: the left→right flow of a rectified stereo pair is purely horizontal;
   a point at column x in the left image appears at x - d in the right one (d the
   disparity, d > 0), so flow = (-d, 0). Pixels with an infinite (unknown) disparity
   are excluded. (With +d instead, DIS medium scores about 70 px: the sign is checked.)
2. Pairs/s at 224×224 (the pair resized), the input size of the paper's models.
3. The whole stage's videos/s (read frames, flow, eq. (1), masks, PNG writes) on the
   generated benchmark (`ssp synth`, demo size), from scratch and when up to date.
4. How well M_O finds what moves, per threshold rule: pixel precision / recall / IoU of
   the masks against the union of the objects that move at each frame (from each
   video's scene.json), and how many frames where nothing moves still get a mask.

DIS presets always run; RAFT and Perceiver IO only when their weights are given
(``--raft-weights``, ``--perceiver-weights``: a local path or a hub id ``org/name@revision``,
resolved by ssp/hub.py, from the cache with ``HF_HUB_OFFLINE=1``); otherwise they are
listed as "no weights given".

    .venv/bin/python bench/flow.py                      # table to stdout
    .venv/bin/python bench/flow.py --json results.json  # and the raw numbers
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: bars would skew timings

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from ssp.params import FlowParams  # noqa: E402
from ssp.preprocess.flow import DIS_PRESETS, FlowStageConfig, build_estimator, run_flow_stage  # noqa: E402


def motorcycle_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Left, right (RGB uint8), ground-truth flow (H×W×2) and its validity mask."""
    from skimage.data import stereo_motorcycle

    left, right, disparity = stereo_motorcycle()
    valid = np.isfinite(disparity)
    flow = np.zeros((*disparity.shape, 2), np.float32)
    flow[..., 0] = np.where(valid, -disparity, 0.0)
    return left, right, flow, valid


def end_point_error(flow: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> float:
    return float(np.linalg.norm(flow - truth, axis=-1)[valid].mean())


def time_pairs(estimator, a: np.ndarray, b: np.ndarray, min_seconds: float, min_runs: int) -> float:
    """Pairs per second of ``estimator`` on one pair (one pair per call, after a warm-up).

    Best of the runs, like ``timeit``: on a shared machine, other processes only ever make
    a run slower, so the fastest run is the closest to the method's own cost."""
    estimator([a], [b])
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        estimator([a], [b])
        times.append(time.perf_counter() - t0)
    return 1.0 / min(times)


def methods_to_run(args: argparse.Namespace) -> list[tuple[str, str, dict | None]]:
    """(label, method, options or None when the method cannot run here)."""
    methods = [(f"dis-{p}", "dis", {"preset": p}) for p in DIS_PRESETS]
    methods.append(
        ("raft", "raft", {"weights": args.raft_weights, "device": args.device} if args.raft_weights else None)
    )
    methods.append(
        (
            "perceiver",
            "perceiver",
            {"weights": args.perceiver_weights, "device": args.device} if args.perceiver_weights else None,
        )
    )
    return methods


def bench_methods(args: argparse.Namespace) -> list[dict]:
    left, right, truth, valid = motorcycle_pair()
    small_a = cv2.resize(left, (224, 224), interpolation=cv2.INTER_AREA)
    small_b = cv2.resize(right, (224, 224), interpolation=cv2.INTER_AREA)
    rows = []
    for label, method, options in methods_to_run(args):
        if options is None:
            rows.append({"method": label, "status": "no weights given"})
            continue
        estimator = build_estimator(method, **options)
        (flow,) = estimator([left], [right])
        rows.append(
            {
                "method": label,
                "status": "ok",
                "epe_px": round(end_point_error(flow, truth, valid), 3),
                "pairs_per_s_741x500": round(time_pairs(estimator, left, right, args.min_seconds, 3), 1),
                "pairs_per_s_224": round(time_pairs(estimator, small_a, small_b, args.min_seconds, 20), 1),
            }
        )
        print(rows[-1], flush=True)
    return rows


def benchmark_dataset(work: Path, args: argparse.Namespace) -> Path:
    """The generated benchmark (`ssp synth`), written once under ``work``."""
    root = work / "synth"
    # A separate process: `ssp synth` forks workers, and forking a process whose OpenCV
    # thread pool has already run (the measurements above) can hang the children.
    command = [
        sys.executable,
        "-m",
        "ssp.cli",
        "synth",
        "--out",
        str(root),
        "--set",
        "data.seed=0",
        "--set",
        f"data.size={args.synth_size}",
        "--set",
        "data.classes=8",
        "--set",
        "data.image_size=64",
        "--workers",
        str(os.cpu_count() or 1),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ssp synth failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return root


def bench_stage(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    from ssp.data.avsbench import load_records

    work = Path(tempfile.mkdtemp(prefix="ssp-bench-flow-"))
    try:
        root = benchmark_dataset(work, args)
        records = load_records(root)
        frames = sum(r.num_frames for r in records)
        height, width = cv2.imread(str(records[0].frame_paths[0])).shape[:2]
        rows = []
        for workers in args.workers:
            out = work / f"flow-{workers}"
            for run in ("from scratch", "up to date"):
                t0 = time.perf_counter()
                summary = run_flow_stage(root, out, FlowStageConfig(), workers=workers)
                seconds = time.perf_counter() - t0
                rows.append(
                    {
                        "workers": workers,
                        "run": run,
                        "videos": summary["videos"],
                        "frames": frames,
                        "frame_size": f"{width}x{height}",
                        "processed": summary["processed"],
                        "seconds": round(seconds, 2),
                        "videos_per_s": round(summary["videos"] / seconds, 1),
                        "mean_mask_coverage": summary["mean_mask_coverage"],
                    }
                )
                print(rows[-1], flush=True)
        return rows, bench_mask_quality(root, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


MASK_RULES = [  # (label, FlowStageConfig overrides) compared on the generated benchmark
    ("otsu (default: min_magnitude 1 px)", {}),
    ("otsu, min_magnitude 0.5 px", {"min_magnitude": 0.5}),
    ("otsu + cleanup 3", {"cleanup": 3}),
    ("fixed 1 px", {"rule": "fixed", "value": 1.0}),
    ("fraction_of_max 0.3", {"rule": "fraction_of_max", "value": 0.3}),
]


def moving_truth(video_dir: Path, frame: int, height: int, width: int) -> np.ndarray:
    """Union of the objects that move at this frame (scene.json of `ssp synth`)."""
    from ssp.data.synthetic import render_object_mask

    scene = json.loads((video_dir / "scene.json").read_text())
    truth = np.zeros((height, width), bool)
    for obj in scene["objects"]:
        if obj["moving"][frame]:
            truth |= render_object_mask(obj, frame, height, width)
    return truth


def bench_mask_quality(root: Path, work: Path) -> list[dict]:
    """Pixel precision / recall / IoU of M_O against the moving objects of the scenes."""
    from ssp.data.avsbench import load_records

    records = load_records(root)
    rows = []
    for label, overrides in MASK_RULES:
        out = work / f"quality-{len(rows)}"
        run_flow_stage(root, out, FlowStageConfig(FlowParams(**overrides)), workers=1)
        tp = fp = fn = 0
        still_frames = still_false = 0
        for record in records:
            for i, frame_path in enumerate(record.frame_paths):
                mask = cv2.imread(str(out / record.rel_dir / "mask" / f"{i}.png"), cv2.IMREAD_GRAYSCALE) > 0
                truth = moving_truth(record.root / record.rel_dir, i, *mask.shape)
                tp += int((mask & truth).sum())
                fp += int((mask & ~truth).sum())
                fn += int((~mask & truth).sum())
                if not truth.any():
                    still_frames += 1
                    still_false += int(mask.any())
        rows.append(
            {
                "rule": label,
                "precision": round(tp / max(tp + fp, 1), 3),
                "recall": round(tp / max(tp + fn, 1), 3),
                "iou": round(tp / max(tp + fp + fn, 1), 3),
                "still_frames": still_frames,
                "still_frames_with_mask": still_false,
            }
        )
        print(rows[-1], flush=True)
    return rows


def markdown(method_rows: list[dict], stage_rows: list[dict], quality_rows: list[dict]) -> str:
    lines = [
        "| method | EPE (px), motorcycle 741×500 | pairs/s 741×500 | pairs/s 224×224 |",
        "|---|---|---|---|",
    ]
    for r in method_rows:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | {r['status']} | | |")
        else:
            lines.append(
                f"| {r['method']} | {r['epe_px']:.2f} | {r['pairs_per_s_741x500']:.1f} | {r['pairs_per_s_224']:.0f} |"
            )
    if stage_rows:
        lines += [
            "",
            "| `ssp flow` (DIS medium, otsu) | workers | videos | frames | frame size | seconds | videos/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in stage_rows:
            lines.append(
                f"| {r['run']} | {r['workers']} | {r['videos']} | {r['frames']} | {r['frame_size']} | "
                f"{r['seconds']:.1f} | {r['videos_per_s']:.1f} |"
            )
    if quality_rows:
        lines += [
            "",
            "| M_O rule (DIS medium) | precision | recall | IoU | frames with nothing moving: mask not empty |",
            "|---|---|---|---|---|",
        ]
        for r in quality_rows:
            lines.append(
                f"| {r['rule']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['iou']:.3f} | "
                f"{r['still_frames_with_mask']} of {r['still_frames']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raft-weights", help="torchvision RAFT state dict (small or large): path or hub id")
    parser.add_argument("--perceiver-weights", help="PerceiverForOpticalFlow save_pretrained folder or hub id")
    parser.add_argument("--device", default=None, help="torch device for raft/perceiver (default: cuda if available)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time each speed measurement at least this long")
    parser.add_argument(
        "--synth-size",
        default="demo",
        help="data.size of the stage benchmark (`ssp synth --set data.size=...`; default demo)",
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="stage worker counts to time")
    parser.add_argument("--skip-stage", action="store_true", help="only the per-method measurements")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()

    method_rows = bench_methods(args)
    stage_rows, quality_rows = ([], []) if args.skip_stage else bench_stage(args)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, OpenCV {cv2.__version__} "
        f"({cv2.getNumThreads()} threads), load average at the end {load}"
    )
    print(f"\nmachine: {machine}\n")
    print(markdown(method_rows, stage_rows, quality_rows))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": machine, "methods": method_rows, "stage": stage_rows, "mask_quality": quality_rows},
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
