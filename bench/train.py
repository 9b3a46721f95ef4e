"""Training throughput and loop overhead on this machine.

1. Tiny model (``SSPConfig.tiny``, 64 px), stage 1 with the demo's batch (params.yaml
   train1: videos per step, frames per video, in-memory cache): the REAL loop
   (``ssp.engine.train.train``: DataLoader, collate, loss, AdamW, logging every ``log_every``
   steps, MLflow) is timed per step through its ``step_hook``; the same model is then timed on one preloaded
   batch of the same shape for
   - bare forward+backward (a surrogate scalar loss: the mean of the outputs),
   - forward + the SSP loss (Hungarian matching, point sampling) + backward,
   - + AdamW step.
   Loop and bare measurements alternate over ``--rounds`` rounds (a shared machine's slow
   spells then hit both). Reported: medians over all rounds' steps, clips/s (clip = one
   video), the ratio full step / bare forward+backward (acceptance: <= 1.15) overall and
   per round.
2. The paper model's step is timed by ``bench/paper_gpu.py`` (the paper profile as
   ``ssp train`` builds it, with AAVS's recipe; ``--device cpu`` on this machine).

    .venv/bin/python bench/train.py --data data/synth --logmel data/logmel
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssp.data.avsbench import load_records
from ssp.data.datasets import collate_frames
from ssp.engine.inputs import InputDirs, build_dataset
from ssp.engine.train import build_model_config, build_optimizer, model_switches, train
from ssp.fileio import write_json
from ssp.models import SSPModel
from ssp.models.criterion import SSPCriterion
from ssp.params import load_params


def step_times(fn, steps: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_time(fn, steps: int, warmup: int = 2) -> float:
    return statistics.median(step_times(fn, steps, warmup))


def step_functions(model, criterion, optimizer, batch):
    def bare():
        output = model(batch)
        loss = (
            output.mask_logits.mean()
            + output.class_logits.mean()
            + sum(m.mean() + c.mean() for c, m in output.aux_outputs)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def with_loss():
        output = model(batch)
        loss = criterion(output, batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def with_optimizer():
        with_loss()
        optimizer.step()

    return bare, with_loss, with_optimizer


def bench_tiny(args) -> dict:
    overrides = [
        "train1.epochs=1",
        f"train1.batch_size={args.batch_videos}",
        f"train1.max_frames={args.frames}",
        "train1.subsets=[v2]",
        f"train1.num_workers={args.workers}",
        "train1.overlays=0",
        f"train1.log_every={args.log_every}",
        "train1.val_every=1",
        f"train1.cache_in_memory={str(args.cache).lower()}",
    ]
    params = load_params(Path("/nonexistent.yaml"), overrides=overrides)
    config = build_model_config(params.model, 1, model_switches(params, 1, "aavs"))
    records = load_records(args.data, subsets=["v2"], splits=["train"])[: args.batch_videos]
    dataset = build_dataset(records, config, InputDirs(logmel=args.logmel), max_frames=args.frames)
    batch = collate_frames([dataset[i] for i in range(len(records))])

    # Rounds alternate the loop and the bare measurements, so that a slow spell of a
    # shared machine hits both sides instead of skewing the ratio.
    loop_steps: list[float] = []
    timings: dict[str, list[float]] = {"bare": [], "with_loss": [], "with_optimizer": []}
    round_ratios: list[float] = []
    for _ in range(args.rounds):
        stamps: list[float] = []
        with tempfile.TemporaryDirectory() as tmp:
            train(
                1,
                args.data,
                Path(tmp) / "run",
                params,
                row="aavs",
                logmel=args.logmel,
                progress=False,
                step_hook=lambda step, stamps=stamps: stamps.append(time.perf_counter()),
            )
        intervals = [b - a for a, b in itertools.pairwise(stamps)][2:]  # first steps: warm-up
        loop_steps += intervals

        torch.manual_seed(0)
        model = SSPModel(config).train()
        criterion = SSPCriterion(config)
        optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], 1e-3, 0.05)
        functions = dict(zip(timings, step_functions(model, criterion, optimizer, batch)))
        for name, fn in functions.items():
            timings[name] += step_times(fn, args.steps)
        round_ratios.append(statistics.median(intervals) / statistics.median(timings["bare"][-args.steps :]))

    full = statistics.median(loop_steps)
    t_bare, t_loss, t_opt = (statistics.median(timings[k]) for k in ("bare", "with_loss", "with_optimizer"))
    return {
        "model": "tiny",
        "image_size": config.image_size,
        "videos_per_step": args.batch_videos,
        "frames_per_step": args.batch_videos * args.frames,
        "rounds": args.rounds,
        "loop_steps_timed": len(loop_steps),
        "full_loop_step_s": full,
        "bare_fwd_bwd_s": t_bare,
        "fwd_ssp_loss_bwd_s": t_loss,
        "fwd_loss_bwd_adamw_s": t_opt,
        "ratio_full_to_bare": full / t_bare,
        "ratio_full_to_bare_per_round": round_ratios,
        "ratio_full_to_fwd_loss_bwd_adamw": full / t_opt,
        "clips_per_s_full_loop": args.batch_videos / full,
        "cache_in_memory": args.cache,
        "loader_workers": 0 if args.cache else args.workers,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/synth"))
    parser.add_argument("--logmel", type=Path, default=Path("data/logmel"))
    parser.add_argument(
        "--batch-videos",
        type=int,
        default=None,
        help="videos per step (default: train1.batch_size of params.yaml, the demo's)",
    )
    parser.add_argument(
        "--frames", type=int, default=None, help="frames per video (default: train1.max_frames of params.yaml)"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train1.cache_in_memory (no loader workers; default: params.yaml's)",
    )
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per bare measurement and round")
    parser.add_argument("--rounds", type=int, default=3, help="loop/bare measurement rounds (interleaved)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    demo = load_params(ROOT / "params.yaml").train1  # the active profile's, as `make demo` trains
    args.batch_videos = args.batch_videos or demo.batch_size
    args.frames = args.frames or demo.max_frames or 5
    args.cache = demo.cache_in_memory if args.cache is None else args.cache

    results = {"torch_threads": torch.get_num_threads(), "tiny": bench_tiny(args)}
    print(json.dumps(results, indent=2))
    if args.out:
        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
