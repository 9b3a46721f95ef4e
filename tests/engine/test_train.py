"""ssp train / ssp stage1-masks on a generated tiny benchmark (CPU, seconds per run).

Covers: both stages end to end (checkpoints, history.csv, metrics.json, MLflow run with
tags, params, per-epoch metrics and the best checkpoint), stage-1 masks (written, then
skipped when up to date), exact resume from a run interrupted mid-epoch, clear errors for
missing inputs, and a 2-process torchrun (gloo) epoch.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from ssp.errors import SSPError

REPO = Path(__file__).resolve().parents[2]

# Small and fast: 64 px, v1m + v2 (2 train videos each), 2 frames per video, no workers.
FAST = [
    "train1.batch_size=1", "train1.max_frames=2", "train1.num_workers=0", "train1.threads=1",
    "train1.log_every=1", "train1.overlays=0", "train1.subsets=[v1m,v2]", "train1.lr_step_epoch=1",
    "train2.batch_size=2", "train2.max_frames=2", "train2.num_workers=0", "train2.threads=1",
    "train2.overlays=1", "train2.subsets=[v2]", "train2.epochs=1",
    "model.num_points=64",
]


def make_benchmark(root: Path) -> dict[str, Path]:
    """``ssp synth --size tiny`` + flow masks, scene prompts and log-mel, in-process."""
    from ssp.preprocess.logmel import compute_logmel
    from ssp.data.avsbench import load_records
    from ssp.data.synthetic import SynthConfig, generate_dataset
    from ssp.preprocess.flow import FlowStageConfig, run_flow_stage
    from ssp.preprocess.prompts.stage import PromptsConfig, run_prompts
    from ssp.preprocess.prompts.backends.scene import SceneBackend

    data = generate_dataset(SynthConfig(seed=0, size="tiny"), root / "data", progress=False)
    records = load_records(data)
    run_flow_stage(data, root / "flow", FlowStageConfig())
    run_prompts(records, SceneBackend(), PromptsConfig(out_dir=root / "prompts"))
    compute_logmel(records, root / "logmel")
    return {"data": data, "flow": root / "flow", "prompts": root / "prompts", "logmel": root / "logmel"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict[str, Path]:
    return make_benchmark(tmp_path_factory.mktemp("bench"))


def params(*extra: str) -> dict:
    from ssp.ops.params import load_params

    return load_params(Path("/nonexistent/params.yaml"), overrides=[*FAST, *extra])


def dirs(bench) -> dict:
    return {k: bench[k] for k in ("flow", "prompts", "logmel")}


def test_two_stages_end_to_end(bench, tmp_path, mlflow_store, capsys):
    from ssp.models.checkpoint import load_model
    from ssp.eval.stage1_masks import write_stage1_masks
    from ssp.ops.tracking import get_client
    from ssp.engine.train import train

    s1 = train(1, bench["data"], tmp_path / "s1", params("train1.epochs=2"), row="full", progress=False,
               **dirs(bench))
    ckpt = tmp_path / "s1" / "checkpoints"
    for name in ("epoch_1.safetensors", "epoch_1.state.safetensors", "epoch_2.safetensors",
                 "epoch_2.state.safetensors", "best.safetensors", "last.json"):
        assert (ckpt / name).is_file(), name
    assert json.loads((ckpt / "last.json").read_text())["weights"] == "epoch_2.safetensors"
    history = list(csv.DictReader((tmp_path / "s1" / "history.csv").open()))
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert float(history[0]["lr"]) == pytest.approx(1e-3) and float(history[1]["lr"]) == pytest.approx(1e-4)
    metrics = json.loads((tmp_path / "s1" / "metrics.json").read_text())
    assert metrics["best_epoch"] in (1, 2) and 0 <= metrics["best"]["miou"] <= 1
    assert metrics["best"]["miou"] == max(float(r["val_miou"]) for r in history)
    model, config, info = load_model(s1.best_checkpoint)  # rebuilt from the file alone
    assert (config.stage, config.pre_mask, config.text, config.post_mask) == (1, True, "vta", True)
    assert info["epoch"] == metrics["best_epoch"]

    # stage-1 masks: every frame of the chosen splits, then nothing to do on a re-run
    out = tmp_path / "stage1_masks"
    first = write_stage1_masks(s1.best_checkpoint, bench["data"], out, ("val", "test"), progress=False,
                               **dirs(bench))
    assert first == {"written": 6, "skipped": 0}
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 2 * (5 + 5 + 10)
    assert write_stage1_masks(s1.best_checkpoint, bench["data"], out, ("val", "test"), progress=False,
                              **dirs(bench)) == {"written": 0, "skipped": 6}

    s2 = train(2, bench["data"], tmp_path / "s2", params(), row="aavs", stage1_masks=out, progress=False,
               **dirs(bench))
    assert s2.metrics["stage"] == 2 and 0 <= s2.metrics["best"]["miou"] <= 1
    assert list((tmp_path / "s2" / "overlays").glob("*.png"))

    client = get_client()
    runs = {r.data.tags["ssp.stage"]: r for exp in client.search_experiments()
            for r in client.search_runs([exp.experiment_id])}
    assert runs["1"].data.tags["ssp.row"] == "full" and runs["2"].data.tags["ssp.row"] == "aavs"
    assert runs["2"].data.tags["ssp.lambda_post"] == "10.0"
    assert runs["1"].data.params["train.lr"] == "0.001"
    assert [m.step for m in client.get_metric_history(runs["1"].info.run_id, "val_miou")] == [1, 2]
    artifacts = [a.path for a in client.list_artifacts(runs["2"].info.run_id, "checkpoints")]
    assert artifacts == ["checkpoints/best.safetensors"]
    assert client.list_artifacts(runs["2"].info.run_id, "overlays")
    # the run folder names its MLflow run both ways `ssp register` / `ssp evaluate` look it up
    for stage, folder in (("1", "s1"), ("2", "s2")):
        assert json.loads((tmp_path / folder / "metrics.json").read_text())["mlflow_run_id"] == \
            runs[stage].info.run_id
        assert runs[stage].data.tags["ssp.run_dir"] == str((tmp_path / folder).resolve())

    # `ssp train --test-out` (the ablation/sweep cells): train, then test the best checkpoint
    # in the same process -> the `ssp evaluate` JSON, and test metrics on the training run
    from ssp.cli import main as cli_main

    test_json = tmp_path / "cell.json"
    argv = ["train", "--stage", "2", "--row", "aavs", "--data", str(bench["data"]), "--out", str(tmp_path / "cell"),
            "--params", str(tmp_path / "none.yaml"), "--stage1-masks", str(out), "--no-progress",
            "--test-out", str(test_json), "--test-split", "test", "--fscore-batch-videos", "2",
            *[a for o in FAST for a in ("--set", o)]]
    for name in ("flow", "prompts", "logmel"):
        argv += [f"--{name}", str(bench[name])]
    assert cli_main(argv) == 0
    tested = json.loads(test_json.read_text())
    assert tested["split"] == "test" and 0 <= tested["semantic"]["all"]["miou"] <= 1
    cell_run = json.loads((tmp_path / "cell" / "metrics.json").read_text())["mlflow_run_id"]
    assert client.get_run(cell_run).data.metrics["test/miou"] == pytest.approx(tested["semantic"]["all"]["miou"])
    without = [x for i, x in enumerate(argv) if "--stage1-masks" not in (x, argv[i - 1])]
    assert cli_main(without + ["--stage1-checkpoint", str(s1.best_checkpoint)]) == 2  # refused before training
    assert "--test-out for stage 2 needs --stage1-masks" in capsys.readouterr().err
    assert not (tmp_path / "cell2").exists()


def test_resume_after_mid_epoch_interruption_matches_uninterrupted(bench, tmp_path, mlflow_store):
    from safetensors.torch import load_file

    from ssp.engine.train import TrainingInterrupted, train

    # 4 train videos, batch 1 -> 4 steps/epoch, 2 epochs; step checkpoints at steps 3 and 6
    p = params("train1.epochs=2", "train1.step_checkpoint_every=3", "train1.seed=3")
    full = train(1, bench["data"], tmp_path / "full", p, row="full", progress=False, **dirs(bench))

    # the interrupted/resumed run decodes its train set once into RAM: same items, same result
    p["train1"]["cache_in_memory"] = True
    with pytest.raises(TrainingInterrupted):
        train(1, bench["data"], tmp_path / "cut", p, row="full", progress=False, interrupt_after_steps=7,
              **dirs(bench))
    last = json.loads((tmp_path / "cut" / "checkpoints" / "last.json").read_text())
    assert (last["kind"], last["epoch"], last["batches_done"], last["global_step"]) == ("step", 1, 2, 6)
    resumed = train(1, bench["data"], tmp_path / "cut", p, row="full", resume=True, progress=False, **dirs(bench))

    a = load_file(str(tmp_path / "full" / "checkpoints" / "epoch_2.safetensors"))
    b = load_file(str(tmp_path / "cut" / "checkpoints" / "epoch_2.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # same numbers; each process logged its own MLflow run
    assert resumed.metrics.pop("mlflow_run_id") != full.metrics.pop("mlflow_run_id")
    assert resumed.metrics == full.metrics
    assert (tmp_path / "full" / "history.csv").read_text().count("\n") == 3
    full_rows = list(csv.DictReader((tmp_path / "full" / "history.csv").open()))
    cut_rows = list(csv.DictReader((tmp_path / "cut" / "history.csv").open()))
    for x, y in zip(full_rows, cut_rows):
        x.pop("seconds"), y.pop("seconds")
        assert x == y


def test_resume_rejects_another_config(bench, tmp_path, mlflow_store):
    from ssp.engine.train import train

    p = params("train1.epochs=1")
    train(1, bench["data"], tmp_path / "run", p, row="aavs", progress=False, **dirs(bench))
    with pytest.raises(SSPError, match="another model config"):
        train(1, bench["data"], tmp_path / "run", params("train1.epochs=2"), row="full", resume=True,
              progress=False, **dirs(bench))


def test_clear_errors_for_missing_inputs(bench, tmp_path, mlflow_store):
    from ssp.engine.train import build_model_config, train

    with pytest.raises(SSPError, match="--stage1-masks"):
        train(2, bench["data"], tmp_path / "a", params(), row="aavs", progress=False, **dirs(bench))
    with pytest.raises(SSPError, match="--flow"):
        train(1, bench["data"], tmp_path / "b", params(), row="pre_mask", logmel=bench["logmel"], progress=False)
    with pytest.raises(SSPError, match="unknown keys"):
        train(1, bench["data"], tmp_path / "c", params("train1.epochz=2"), progress=False, **dirs(bench))
    with pytest.raises(SSPError, match="unknown ablation row"):
        build_model_config({}, 2, row="nope")
    config = build_model_config({"size": "tiny", "lambda_post": 5}, 2, row="pre_mask_post_mask")
    assert (config.pre_mask, config.text, config.post_mask, config.lambda_post) == (True, "none", True, 5)


def test_collate_labelled_drops_unlabelled_frames():
    from ssp.engine.train import collate_labelled

    def item(uid, labelled):
        n = len(labelled)
        return {"uid": uid, "subset": "v1s", "rel_dir": uid, "frames": torch.rand(n, 3, 4, 4),
                "masks": torch.arange(n).view(n, 1, 1).expand(n, 4, 4).clone(),
                "labelled": torch.tensor(labelled), "logmel": torch.zeros(n, 96, 64),
                "prompt_a1": uid, "prompt_a2": [uid]}

    batch = collate_labelled([item("a", [True, False, False]), item("b", [True, True])])
    assert batch["frames"].shape[0] == 3
    assert batch["video_index"].tolist() == [0, 1, 1] and batch["frame_index"].tolist() == [0, 0, 1]
    assert batch["masks"][:, 0, 0].tolist() == [0, 0, 1]
    assert batch["prompt_a1"] == ["a", "b", "b"] and batch["num_frames"].tolist() == [3, 2]


def test_torchrun_two_cpu_processes(bench, tmp_path, mlflow_store):
    torchrun = REPO / ".venv" / "bin" / "torchrun"
    if not torchrun.exists():
        pytest.skip("no .venv/bin/torchrun")
    out = tmp_path / "ddp"
    cmd = [str(torchrun), "--nproc-per-node", "2", "--master-port", "29517", "-m", "ssp.cli", "train",
           "--stage", "1", "--data", str(bench["data"]), "--out", str(out), "--params", "/nonexistent.yaml",
           "--logmel", str(bench["logmel"]), "--row", "aavs", "--no-progress", "--set", "train1.epochs=1",
           *[a for s in FAST if s.startswith(("train1", "model")) for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = out / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("epoch_*")) == ["epoch_1.safetensors", "epoch_1.state.safetensors"]
    metrics = json.loads((out / "metrics.json").read_text())
    # 4 train videos over 2 ranks, batch 1: 2 steps per rank
    assert metrics["global_steps"] == 2
    assert 0 <= metrics["best"]["miou"] <= 1
    assert metrics["mlflow_run_id"]  # rank 0's run (rank 1's logger is disabled)
