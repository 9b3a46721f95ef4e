"""Where a stage-2 model loses on the generated benchmark: the classes or the shapes?

Issue 16, deliverable 3, for stage 2 (``bench/probes.py`` probes stage 1). On the test
split, the same forward pass is read in several ways and each read-out is scored as a
semantic map: IoU per class summed over all labelled test frames (intersection and union
accumulated over the split, not the official per-frame mean, so the figures compare read-outs
with each other, not with ``ssp evaluate``), mean over the classes present or predicted:

- ``queries``: Mask2Former's semantic inference, argmax over Σ_q p_q(c) m_q(x);
- ``codes``: the same scores split over the classes by the class codes
  (``ssp.models.audio_queries.class_code_readout``, ``class_readout="codes"``);
- ``stone_queries`` / ``stone_codes``: the stepping stone's shape (stage 1's binary mask),
  each pixel given the best object class of ``queries`` / of the codes alone
  (softmax(v(x)) · sigmoid(u)): what the classes are worth on a fixed shape;
- ``stone_oracle``: the stone's shape with the GT class (a stone pixel on GT background
  gets the frame's main sounding class): the ceiling of any read-out that keeps the stone's
  shape;
- ``binary_stone`` / ``binary_queries``: foreground vs background of the stone and of
  ``queries`` (mean of the two classes' IoU).

``stone_oracle`` − ``stone_queries`` is what the classes cost on the stone's shape;
``binary_stone`` − ``binary_queries`` what stage 2's own shapes cost against its stone.

``corrections`` (generated data, from the scene records) asks whether stage 2 corrects its
stone where the SSP cues could tell it how, per scenario, on the foreground of ``queries``:

- ``twin_kept``: of the stone's pixels on a silent object of a sounding class (the
  same-class twin that only motion or the text tells apart), the share stage 2 keeps;
- ``silent_kept``: the same for silent objects of other classes (audio tells them apart);
- ``missed_found``: of the sounding pixels the stone misses, the share stage 2 finds.

A model that copies its stone reads 1, 1, 0; one that used every cue, 0, 0, 1.
Needs a model trained with class codes (``model.stage2_class_aux`` > 0). About 15 s per
checkpoint on 2 CPU cores::

    .venv/bin/python bench/stage2_probe.py --data data/synth --flow data/flow \\
        --prompts data/prompts --logmel data/logmel --stones data/stage1_masks \\
        runs/ablation/full/seed0/checkpoints/best.safetensors runs/ablation/aavs/seed0/checkpoints/best.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

from ssp.data.avsbench import load_records
from ssp.data.synthetic import render_object_mask
from ssp.engine.inputs import InputDirs, build_dataset, dataset_batches, model_inputs
from ssp.models.audio_queries import class_code_readout, pixel_class_codes
from ssp.models.checkpoint import load_model
from ssp.report.ceilings import read_scene

READOUTS = ("queries", "codes", "stone_queries", "stone_codes", "stone_oracle", "binary_stone", "binary_queries")
CORRECTIONS = ("twin_kept", "silent_kept", "missed_found")


class SplitIoU:
    """Intersection and union per class, summed over the frames of a split."""

    def __init__(self):
        self.inter: dict[int, int] = defaultdict(int)
        self.union: dict[int, int] = defaultdict(int)

    def add(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        for c in set(gt.unique().tolist()) | set(pred.unique().tolist()) | {0}:
            p, g = pred == c, gt == c
            self.inter[c] += int((p & g).sum())
            self.union[c] += int((p | g).sum())

    def mean(self) -> float:
        classes = [c for c, u in self.union.items() if u > 0]
        return sum(self.inter[c] / self.union[c] for c in classes) / len(classes)


def object_kinds(scene: dict, frame: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Boolean maps of one frame's sounding objects, silent twins (a silent object of a
    sounding class) and other silent objects, rendered from the scene record."""
    sounding_classes = {o["class_index"] for o in scene["objects"] if o["sounding"][frame]}
    kinds = {k: torch.zeros(size, dtype=torch.bool) for k in ("sounding", "twin", "silent")}
    for obj in scene["objects"]:
        kind = "sounding" if obj["sounding"][frame] else "twin" if obj["class_index"] in sounding_classes else "silent"
        kinds[kind] |= torch.from_numpy(render_object_mask(obj, frame, *size))
    return kinds


class Corrections:
    """Per scenario, pixel counts of what stage 2 does with its stone's errors (module doc)."""

    def __init__(self):
        self.counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: {k: [0, 0] for k in CORRECTIONS})

    def add(self, scenario: str, kinds: dict[str, torch.Tensor], stone: torch.Tensor, fg: torch.Tensor) -> None:
        counts = self.counts[scenario]
        for name, region in (
            ("twin_kept", stone & kinds["twin"]),
            ("silent_kept", stone & kinds["silent"]),
            ("missed_found", ~stone & kinds["sounding"]),
        ):
            counts[name][0] += int((fg & region).sum())
            counts[name][1] += int(region.sum())

    def numbers(self) -> dict[str, dict[str, float | None]]:
        return {
            scenario: {k: round(n / d, 4) if d else None for k, (n, d) in counts.items()}
            for scenario, counts in sorted(self.counts.items())
        }


def probe(checkpoint: Path, data: Path, dirs: InputDirs, stones: Path, batch_videos: int = 4) -> dict:
    model, config, _ = load_model(checkpoint, "cpu", class_readout="queries")
    if config.stage != 2 or config.class_aux <= 0:
        sys.exit(f"{checkpoint}: needs a stage-2 model trained with class codes (model.stage2_class_aux > 0)")
    dataset = build_dataset(load_records(data, splits=["test"]), config, dirs, stage1_dir=stones)
    scenes = [read_scene(record) for record in dataset.records]
    meters = {name: SplitIoU() for name in READOUTS}
    corrections = Corrections()
    with torch.no_grad():
        for first, batch in zip(range(0, len(dataset), batch_videos), dataset_batches(dataset, batch_videos)):
            inputs = model_inputs(batch)
            output = model(inputs)
            scores = model.predict(inputs)
            size = scores.shape[-2:]
            with_codes = class_code_readout(scores, output.pixel_class_logits, output.audio_class_logits)
            codes = pixel_class_codes(output.pixel_class_logits, output.audio_class_logits, size)
            stone = batch["stage1_mask"].reshape(scores.shape[0], *size) > 0.5
            best_object = scores[:, 1:].argmax(1) + 1
            best_code = codes.argmax(1) + 1
            for i, gt in enumerate(batch["masks"]):
                if not batch["labelled"][i]:
                    continue
                none = torch.zeros_like(gt)
                sounding = gt[gt > 0]
                main_class = int(sounding.mode().values) if len(sounding) else 0
                oracle = torch.where(gt > 0, gt, torch.full_like(gt, main_class))
                queries = scores[i].argmax(0)
                meters["queries"].add(queries, gt)
                meters["codes"].add(with_codes[i].argmax(0), gt)
                meters["stone_queries"].add(torch.where(stone[i], best_object[i], none), gt)
                meters["stone_codes"].add(torch.where(stone[i], best_code[i], none), gt)
                meters["stone_oracle"].add(torch.where(stone[i], oracle, none), gt)
                meters["binary_stone"].add(stone[i].long(), (gt > 0).long())
                meters["binary_queries"].add((queries > 0).long(), (gt > 0).long())
                scene = scenes[first + int(batch["video_index"][i])]
                if scene is not None:
                    kinds = object_kinds(scene, int(batch["frame_index"][i]), tuple(size))
                    corrections.add(scene["scenario"], kinds, stone[i], queries > 0)
    result: dict = {name: round(meter.mean(), 4) for name, meter in meters.items()}
    if corrections.counts:
        result["corrections"] = corrections.numbers()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="stage-2 checkpoints (.safetensors)")
    ap.add_argument("--data", type=Path, default=Path("data/synth"))
    ap.add_argument("--flow", type=Path, default=Path("data/flow"))
    ap.add_argument("--prompts", type=Path, default=Path("data/prompts"))
    ap.add_argument("--logmel", type=Path, default=Path("data/logmel"))
    ap.add_argument("--stones", type=Path, default=Path("data/stage1_masks"), help="`ssp stage1-masks` output")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    dirs = InputDirs(args.flow, args.prompts, args.logmel)
    result = {str(c): probe(c, args.data, dirs, args.stones) for c in args.checkpoints}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
