"""A tiny generated benchmark for the engine tests: ``ssp synth --size tiny`` + flow masks,
scene prompts and log-mel (in-process, seconds), and the fast training params."""

from __future__ import annotations

from pathlib import Path

from ssp.data.avsbench import load_records
from ssp.data.synthetic import SynthConfig, generate_dataset
from ssp.params import DataParams, Params, PromptsParams, load_params
from ssp.preprocess.flow import FlowStageConfig, run_flow_stage
from ssp.preprocess.logmel import compute_logmel
from ssp.preprocess.prompts.backends.scene import SceneBackend
from ssp.preprocess.prompts.stage import PromptsConfig, run_prompts

# Small and fast: 64 px, v1m + v2 (2 train videos each), 2 frames per video, no workers.
FAST = [
    "train1.batch_size=1",
    "train1.max_frames=2",
    "train1.num_workers=0",
    "train1.threads=1",
    "train1.log_every=1",
    "train1.overlays=0",
    "train1.subsets=[v1m,v2]",
    "train1.lr_step_epoch=1",
    "train2.batch_size=2",
    "train2.max_frames=2",
    "train2.num_workers=0",
    "train2.threads=1",
    "train2.overlays=1",
    "train2.subsets=[v2]",
    "train2.epochs=1",
    "model.num_points=64",
    "model.premask_train_source=gt",  # stage 1 with a pre-mask row (no stage-1 masks to train on)
]


def make_benchmark(root: Path) -> dict[str, Path]:
    """``ssp synth --size tiny`` + flow masks, scene prompts and log-mel, in-process."""
    data = generate_dataset(SynthConfig.from_params(DataParams(seed=0, size="tiny")), root / "data", progress=False)
    records = load_records(data)
    run_flow_stage(data, root / "flow", FlowStageConfig())
    prompts = PromptsParams()
    run_prompts(
        records,
        SceneBackend(quality=prompts.quality, seed=prompts.seed),
        PromptsConfig(out_dir=root / "prompts", question_variant=prompts.question_variant),
    )
    compute_logmel(records, root / "logmel")
    return {"data": data, "flow": root / "flow", "prompts": root / "prompts", "logmel": root / "logmel"}


def params(*extra: str) -> Params:
    """The built-in defaults (no params file) with :data:`FAST` and ``extra`` over them."""
    return load_params(Path("/nonexistent/params.yaml"), overrides=[*FAST, *extra])


def dirs(bench: dict[str, Path]) -> dict[str, Path]:
    return {k: bench[k] for k in ("flow", "prompts", "logmel")}
