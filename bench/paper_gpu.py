"""The paper profile's training step on a GPU: step time, peak memory, clips/s.

Builds the model exactly as ``ssp train`` does under the given params (default: the
paper profile, composed from conf/: Swin-B Mask2Former at 384 px with its pretrained
weights, VGGish, BERT + CLIP for VTA, the AAVS recipe's frozen parts and adapters) and
runs ``--steps`` optimizer steps (after ``--warmup``) of the real loss on a synthetic
batch of the paper's shape (``train{stage}.batch_size`` videos x frames per video, with
flow masks, stepping stones and prompts), bf16 autocast on CUDA as in training.

    # on a GPU node, weights in the HF cache (ssp weights --params params.yaml)
    python bench/paper_gpu.py --profile paper --stage 2 --steps 20
    # timing only, without Swin-B/Mask2Former and VGGish weights (same shapes, random init;
    # the frozen BERT and CLIP of VTA still load from their specs: they have no random init)
    python bench/paper_gpu.py --profile paper --random-init
    # CPU check of the script itself (tests/bench): reduced sizes through --set
    python bench/paper_gpu.py --device cpu --steps 1 --warmup 0 --set model.image_size=64 ...

Prints one JSON object: step time (median, min, max over the timed steps), peak GPU
memory, clips/s and frames/s, the number of parameters and trainable parameters.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssp.engine.train import build_model_config, build_optimizer, model_switches
from ssp.models import SSPModel
from ssp.models.criterion import SSPCriterion
from ssp.paper import ROWS
from ssp.params import load_params


def synthetic_batch(config, videos: int, frames: int, device: torch.device) -> dict:
    """A batch with every key the model may read (ssp.models.ssp docstring), paper-shaped."""
    n, s = videos * frames, config.image_size
    generator = torch.Generator().manual_seed(0)
    masks = (torch.rand(n, s, s, generator=generator) > 0.7).long()
    if config.stage == 2:
        masks = masks * torch.randint(1, config.num_classes, (n, 1, 1), generator=generator)
    batch = {
        "frames": torch.rand(n, 3, s, s, generator=generator),
        "logmel": torch.randn(n, 96, 64, generator=generator),
        "masks": masks,
        "labelled": torch.ones(n, dtype=torch.bool),
        "flow_mask": (torch.rand(n, s, s, generator=generator) > 0.8).float(),
        "stage1_mask": (masks > 0).float(),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["prompt_a1"] = ["A man plays the violin next to a piano in a small room."] * n
    batch["prompt_a2"] = [["violin", "piano", "man"]] * n
    return batch


def bench(args: argparse.Namespace) -> dict:
    random_init = ["model.allow_random_init=true", "model.mask2former_weights=''", "model.vggish_weights=''"]
    overrides = list(args.overrides) + (random_init if args.random_init else [])
    params = load_params(args.params, profile=args.profile, overrides=overrides)
    row = args.row or (None if args.stage == 2 else "aavs")
    config = build_model_config(params.model, args.stage, model_switches(params, args.stage, row))
    tp = params.stage(args.stage)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    model = SSPModel(config).to(device).train()
    criterion = SSPCriterion(config).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, tp.lr, tp.weight_decay)
    frames = args.frames or tp.max_frames or (10 if args.stage == 2 else 5)
    batch = synthetic_batch(config, tp.batch_size, frames, device)
    on_cuda = device.type == "cuda"

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda):
            losses = criterion(model(batch), batch)
        losses["loss"].backward()
        if tp.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, tp.grad_clip)
        optimizer.step()

    for _ in range(args.warmup):
        step()
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        if on_cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "profile": params.profile,
        "stage": args.stage,
        "row": row or "ssp section",
        "device": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "image_size": config.image_size,
        "videos_per_step": tp.batch_size,
        "frames_per_video": frames,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "steps": args.steps,
        "step_s_median": median,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "clips_per_s": tp.batch_size / median,
        "frames_per_s": tp.batch_size * frames / median,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if on_cuda else None,
        "pretrained": {k: v.get("revision") or v.get("path") for k, v in model.pretrained_weights().items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--profile", default="paper", help="profile composed from conf/ (default: paper)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=2)
    parser.add_argument("--row", choices=ROWS, default=None, help="a Table-2 row (default: the ssp section)")
    parser.add_argument("--frames", type=int, default=None, help="frames per video (default: the stage's)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default=None, help="default: cuda if available")
    parser.add_argument(
        "--random-init", action="store_true", help="Mask2Former and VGGish from random init (timing only)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    result = bench(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
