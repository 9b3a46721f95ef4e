"""``ssp train`` with ``--test-out``: train a stage (:mod:`ssp.engine.train`), then test its
best checkpoint in the same process (:func:`ssp.eval.evaluate.evaluate`) and write the
metrics JSON ``ssp evaluate --out`` writes; the test metrics also go into the training's
MLflow run. One process per ablation / sweep cell instead of two (a torch + model start
saved per cell).

The split and the official F-score batch come from the ``evaluate`` params section. A
stage-1 model is tested on the subsets it trained on (``train1.subsets``; the S4/MS3
cells of the DVC matrix ``ablation_avs``: v1s and v1m, one ``binary`` entry each), a
stage-2 model on every subset (AVSS over all of them; on the generated benchmark led by
the mIoU / F over its own label space, background + K classes, as ``ssp evaluate`` writes
it; the validation history carries it too). This module is the ``train`` command (it sits above both the engine and the evaluation code,
which the engine must not import); without ``--test-out`` it only trains.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ssp.engine import train as engine_train
from ssp.errors import SSPError
from ssp.eval.evaluate import evaluate, log_summary

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    engine_train.add_arguments(parser)
    parser.add_argument(
        "--test-out",
        type=Path,
        default=None,
        help="after training, evaluate the best checkpoint on evaluate.split of --params in this "
        "process and write the metrics JSON here (what `ssp evaluate --out` writes; saves a "
        "second process start per ablation cell)",
    )


def main(args: argparse.Namespace) -> int:
    if args.test_out is not None and args.stage == 2 and args.stage1_masks is None:  # before hours of training
        raise SSPError("--test-out for stage 2 needs --stage1-masks (the test split's stepping stones)")
    params = engine_train.params_from_args(args)
    result = engine_train.train_from_args(args, params)
    if args.test_out is not None and int(os.environ.get("RANK", "0")) == 0:
        tested = evaluate(
            result.best_checkpoint,
            args.data,
            params.evaluate.split,
            args.test_out,
            stage1_masks=args.stage1_masks,
            flow=args.flow,
            prompts=args.prompts,
            logmel=args.logmel,
            fscore_batch_videos=params.evaluate.fscore_batch_videos,
            progress=not args.no_progress,
            subsets=params.train1.subsets if args.stage == 1 else None,
        )
        log_summary(tested)
    return 0
