"""``ssp stage1-masks``: stage 1's predicted masks, the stepping stones of stage 2.

For every video of the chosen splits, the stage-1 model's foreground probability of each
frame (the engine's predict loop, :func:`ssp.engine.predict.predict_batches`) is written
as ``{out}/{rel_dir}/{i}.png`` (uint8, probability x 255, at the model's input size), the
layout :class:`~ssp.data.datasets.AVSDataset` reads as ``stage1_mask``.

Per-video outputs go through :mod:`ssp.preprocess.common` (atomic files, a stamp written
last): a video is skipped when its stamp's fingerprint (the checkpoint file, the video's
frames and the inputs the model reads) is unchanged, and a failure leaves no partial
output of that video.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from ssp.data.avsbench import VideoRecord, load_records
from ssp.engine.inputs import InputDirs, build_dataset, dataset_batches
from ssp.engine.predict import predict_batches
from ssp.errors import SSPError
from ssp.models.checkpoint import load_model
from ssp.preprocess.common import VideoOutputs, inputs_digest, is_up_to_date, stage_output_dir

log = logging.getLogger(__name__)

STAGE = "stage1_masks"


def stage1_probability_png(logits: torch.Tensor) -> np.ndarray:
    """N×S×S logits -> N×S×S uint8 (round(sigmoid x 255)); see ssp.engine.predict.quantized_probability."""
    return (logits.float().sigmoid() * 255).round().clamp(0, 255).to("cpu").numpy().astype("uint8")


def write_stage1_masks(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    splits: tuple[str, ...] = ("train", "val", "test"),
    flow: str | Path | None = None,
    prompts: str | Path | None = None,
    logmel: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 4,
    progress: bool = True,
) -> dict[str, int]:
    """Write the masks; returns ``{"written": videos done, "skipped": up to date}``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    checkpoint = Path(checkpoint)
    model, config, _ = load_model(checkpoint, device)
    if config.stage != 1:
        raise SSPError(f"{checkpoint}: a stage-{config.stage} checkpoint; stage1-masks needs stage 1's")
    records = load_records(data, splits=list(splits))
    if not records:
        raise SSPError(f"{data}: no videos in splits {','.join(splits)}")
    params = {"checkpoint": checkpoint.name, "image_size": config.image_size, "version": 1}

    def inputs_of(record: VideoRecord) -> list[Path]:
        extra = []
        if flow and (config.pre_mask or config.post_mask):
            extra += [Path(flow) / record.rel_dir / "mask" / f"{i}.png" for i in range(record.num_frames)]
        if prompts and config.text != "none":
            extra.append(Path(prompts) / record.rel_dir / "prompts.json")
        return [checkpoint, *record.frame_paths, *[p for p in extra if p.exists()]]

    todo = []
    for record in records:
        fp = inputs_digest(inputs_of(record), params)
        if not is_up_to_date(stage_output_dir(out, record), STAGE, fp):
            todo.append((record, fp))
    dataset = build_dataset([r for r, _ in todo], config, InputDirs(flow, prompts, logmel))
    by_uid = {r.uid: (r, fp) for r, fp in todo}
    with tqdm(total=len(todo), desc="stage1-masks", unit="video", disable=not progress) as bar:
        for batch, logits in predict_batches(model, dataset_batches(dataset, batch_size), device):
            pngs = stage1_probability_png(logits)
            for v, uid in enumerate(batch["uid"]):
                record, fp = by_uid[uid]
                frames = (batch["video_index"] == v).nonzero(as_tuple=True)[0].tolist()
                with VideoOutputs(stage_output_dir(out, record), STAGE, fp) as outputs:
                    for i in frames:
                        ok, buf = cv2.imencode(".png", pngs[i])
                        if not ok:
                            raise SSPError(f"PNG encoding failed for {uid} frame {i}")
                        with outputs.path(f"{int(batch['frame_index'][i])}.png") as tmp:
                            tmp.write_bytes(buf.tobytes())
                bar.update()
    return {"written": len(todo), "skipped": len(records) - len(todo)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="stage-1 checkpoint (.safetensors)")
    parser.add_argument("--data", required=True, type=Path, help="dataset root")
    parser.add_argument("--out", required=True, type=Path, help="output folder: {out}/{video dir}/{i}.png")
    parser.add_argument("--splits", default="train,val,test", help="comma-separated splits (default: train,val,test)")
    parser.add_argument("--flow", type=Path, default=None, help="`ssp flow` output (if the model uses pre_mask)")
    parser.add_argument("--prompts", type=Path, default=None, help="`ssp prompts` output (if the model uses text)")
    parser.add_argument("--logmel", type=Path, default=None, help="`ssp logmel` output (default: from the wav)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument("--batch-size", type=int, default=4, help="videos per forward pass (default: 4)")


def main(args: argparse.Namespace) -> int:
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    result = write_stage1_masks(
        args.checkpoint,
        args.data,
        args.out,
        splits,
        flow=args.flow,
        prompts=args.prompts,
        logmel=args.logmel,
        device=args.device,
        batch_size=args.batch_size,
    )
    log.info("stage1-masks: %d videos written, %d up to date -> %s", result["written"], result["skipped"], args.out)
    return 0
