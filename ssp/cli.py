"""The ``ssp`` command line.

Each subcommand lives in the module that implements it; that module defines
``add_arguments(parser)`` and ``main(args) -> int``. Only the chosen subcommand's
module is imported, so ``ssp --help`` and light commands start fast (no torch import).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import sys

from ssp import __version__, stage_server
from ssp.errors import SSPError
from ssp.ops.telemetry import quiet_by_default

# name -> (module, one-line help). Order = pipeline order, as shown by `ssp --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "params": ("ssp.params", "compose params.yaml from conf/ with a profile (what `dvc exp run -S profile=NAME` does)"),
    "weights": ("ssp.ops.weights", "resolve (download) and list every pretrained weights spec of the params; --pin"),
    "synth": ("ssp.data.synthetic", "generate the AVSBench-format benchmark (default data)"),
    "validate": ("ssp.data.validation", "check a dataset (either AVSBench layout) before any stage uses it"),
    "frames": ("ssp.preprocess.frames", "raw videos -> 1 frame/s + 16 kHz mono audio"),
    "logmel": ("ssp.preprocess.logmel", "VGGish log-mel features (96x64 per second) for every video"),
    "flow": ("ssp.preprocess.flow", "optical flow -> per-frame magnitude maps and binary flow masks"),
    "prompts": ("ssp.preprocess.prompts.stage", "MLLM text prompts (A1 description, A2 sounding nouns) per video"),
    "fingerprint": ("ssp.ops.fingerprint", "content digests of stage outputs, one JSON (what stage 2 depends on)"),
    "train": (
        "ssp.eval.train_test",
        "train stage 1 (binary AVS) or stage 2 (AVSS); --test-out: then test the best checkpoint in-process",
    ),
    "stage1-masks": ("ssp.eval.stage1_masks", "write stage 1's predicted masks (stage 2's stepping stones)"),
    "evaluate": ("ssp.eval.evaluate", "AVSBench-exact metrics of a checkpoint on a split"),
    "register": (
        "ssp.ops.registry",
        "register a run's best checkpoint (a servable pyfunc model) in the MLflow registry; "
        "champion per (task, dataset fingerprint, profile)",
    ),
    "samples": ("ssp.report.samples", "Fig. 8-style grid of sample overlays per ablation row (PNG + MLflow artifact)"),
    "ceilings": (
        "ssp.report.ceilings",
        "per-scenario ceilings of the generated benchmark: perfect audio-only, audio+motion, audio+motion+text",
    ),
    "report": ("ssp.report.report", "ablation table, lambda' curve and per-scenario results"),
    "ui": ("ssp.ops.mlflow_ui", "the MLflow UI on the pipeline's store, opening on saved views of the Table rows"),
    "predict": ("ssp.eval.predict", "segment a user's video: masks, class names, overlays"),
    "launch": ("ssp.ops.launch", "run a training command as one process or under torchrun (train.gpus / train.nodes)"),
}
# The commands a stage server runs (ssp/stage_server.py): those with heavy imports. A fork
# ends like a process that imported all of them (~0.8 s of interpreter shutdown), so light
# commands start and end faster on their own.
STAGE_SERVER_COMMANDS = (
    "ceilings",
    "logmel",
    "flow",
    "prompts",
    "train",
    "stage1-masks",
    "evaluate",
    "register",
    "samples",
    "report",
    "predict",
)
# ... and what they import only once they run: a checkpoint's model, the learned optical-flow
# estimators. Not `ssp validate` and great-expectations: GX reads settings at import that
# `ssp validate` sets just before (analytics off), so only a fresh process imports it right.
STAGE_SERVER_PRELOAD = (
    "ssp.models.ssp",
    "ssp.preprocess.flow_networks",
)


def import_paused_gc(module_name: str):
    """Import a subcommand's module with Python's cyclic garbage collector paused.

    Importing torch, transformers and mlflow creates millions of objects that all survive;
    the collector's passes over them were about a fifth of a heavy command's start-up
    (``ssp train``: 7.3 s -> 6.0 s on 2 cores, and every pipeline stage pays it). Once
    imported they are frozen (:func:`gc.freeze`), so later collections, e.g. during
    training, do not walk them again either."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return importlib.import_module(module_name)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def build_parser(selected: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssp",
        description="Stepping Stone Plus: audio-visual (semantic) segmentation pipeline. "
        "Run `ssp COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"ssp {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            module = import_paused_gc(module_name)
            module.add_arguments(p)
            p.set_defaults(_main=module.main)
    serve = sub.add_parser(
        "stage-server",
        help="serve the pipeline's ssp commands from one warm process (the reproduce flow starts it)",
        description=stage_server.__doc__.split("\n\n")[0],
    )
    serve.add_argument("--socket", required=True, help="UNIX socket to listen on (clients: SSP_STAGE_SERVER)")
    serve.set_defaults(_main=serve_stages)
    return parser


def serve_stages(args: argparse.Namespace) -> int:
    """``ssp stage-server``: import every command's module, then serve (ssp/stage_server.py)."""
    environment = dict(os.environ)  # the clients' environment must be this one, before the imports
    for module_name in (COMMANDS[c][0] for c in STAGE_SERVER_COMMANDS):
        import_paused_gc(module_name)
    for module_name in STAGE_SERVER_PRELOAD:
        try:
            import_paused_gc(module_name)
        except ImportError:  # an optional backend not installed: its commands import nothing
            pass
    return stage_server.serve(args.socket, run=main, environment=environment)


def main(argv: list[str] | None = None) -> int:
    quiet_by_default()  # before any subcommand imports DVC, Prefect or MLflow
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    if selected in STAGE_SERVER_COMMANDS:  # on the reproduce flow's warm server, if it has one
        served = stage_server.run_on_server(argv)
        if served is not None:
            return served
    parser = build_parser(selected if selected in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._main(args) or 0)
    except SSPError as e:
        print(f"ssp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ssp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
