"""ssp train on a generated tiny benchmark (CPU, seconds per run).

Covers: both stages end to end (checkpoints, history.csv, metrics.json, MLflow run with
tags, params, per-epoch metrics and the best checkpoint), `ssp train --test-out`
(ssp.eval.train_test), exact resume from a run interrupted mid-epoch, the model config
built from typed params (identical to the old `--set model.*` configs), clear errors for
missing inputs, and a 2-process torchrun (gloo) epoch.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ssp import paper
from ssp.engine.distributed import Dist
from ssp.engine.inputs import (
    InputDirs,
    build_dataset,
    build_loaders,
    build_stage_datasets,
    collate_labelled,
    dataset_batches,
    load_split_records,
)
from ssp.engine.train import TrainingInterrupted, build_model_config, evaluate, model_switches, train
from ssp.errors import SSPError
from ssp.eval.stage1_masks import write_stage1_masks
from ssp.models import SSPConfig, SSPModel
from ssp.models.checkpoint import load_model, load_tensors
from ssp.ops.tracking import get_client
from ssp.params import ModelParams, Params, load_params
from ssp.report.report import row_numbers
from tests.engine.benchmark import FAST, dirs, params
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]


def train_test_main(argv: list[str]) -> int:
    """`ssp train ARGV` through the command module that has --test-out."""
    from ssp.eval import train_test

    parser = argparse.ArgumentParser()
    train_test.add_arguments(parser)
    return train_test.main(parser.parse_args(argv))


def test_two_stages_end_to_end(bench, tmp_path, mlflow_store):
    s1 = train(1, bench["data"], tmp_path / "s1", params("train1.epochs=2"), row="full", progress=False, **dirs(bench))
    ckpt = tmp_path / "s1" / "checkpoints"
    # train1.keep_last (default 1): the newest epoch checkpoint, best and the pointer stay
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "best.safetensors",
        "epoch_2.safetensors",
        "epoch_2.state.safetensors",
        "last.json",
    ]
    assert json.loads((ckpt / "last.json").read_text())["weights"] == "epoch_2.safetensors"
    history = list(csv.DictReader((tmp_path / "s1" / "history.csv").open()))
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert float(history[0]["lr"]) == pytest.approx(1e-3) and float(history[1]["lr"]) == pytest.approx(1e-4)
    metrics = json.loads((tmp_path / "s1" / "metrics.json").read_text())
    assert metrics["best_epoch"] in (1, 2) and 0 <= metrics["best"]["miou"] <= 1
    assert metrics["best"]["miou"] == max(float(r["val_miou"]) for r in history)
    _, config, info = load_model(s1.best_checkpoint)  # rebuilt from the file alone
    assert (config.stage, config.pre_mask, config.text, config.post_mask) == (1, True, "vta", True)
    assert info["epoch"] == metrics["best_epoch"]

    out = tmp_path / "stage1_masks"
    assert write_stage1_masks(
        s1.best_checkpoint, bench["data"], out, ("val", "test"), progress=False, **dirs(bench)
    ) == {"written": 6, "skipped": 0}
    s2 = train(2, bench["data"], tmp_path / "s2", params(), row="aavs", stage1_masks=out, progress=False, **dirs(bench))
    assert s2.metrics["stage"] == 2 and 0 <= s2.metrics["best"]["miou"] <= 1
    assert list((tmp_path / "s2" / "overlays").glob("*.png"))

    client = get_client()
    runs = {
        r.data.tags["ssp.stage"]: r
        for exp in client.search_experiments()
        for r in client.search_runs([exp.experiment_id])
    }
    assert runs["1"].data.tags["ssp.row"] == "full" and runs["2"].data.tags["ssp.row"] == "aavs"
    assert runs["2"].data.tags["ssp.lambda_post"] == "10.0"
    assert runs["1"].data.params["train.lr"] == "0.001"
    assert [m.step for m in client.get_metric_history(runs["1"].info.run_id, "val_miou")] == [1, 2]
    artifacts = [a.path for a in client.list_artifacts(runs["2"].info.run_id, "checkpoints")]
    assert artifacts == ["checkpoints/best.safetensors"]
    assert client.list_artifacts(runs["2"].info.run_id, "overlays")
    # the run folder names its MLflow run both ways `ssp register` / `ssp evaluate` look it up
    for stage, folder in (("1", "s1"), ("2", "s2")):
        assert json.loads((tmp_path / folder / "metrics.json").read_text())["mlflow_run_id"] == runs[stage].info.run_id
        assert runs[stage].data.tags["ssp.run_dir"] == str((tmp_path / folder).resolve())

    # `ssp train --test-out` (the ablation/sweep cells): train, then test the best checkpoint
    # in the same process -> the `ssp evaluate` JSON (split and F-score batch from params
    # `evaluate`), and test metrics on the training run
    test_json = tmp_path / "cell.json"
    argv = [
        "--stage",
        "2",
        "--row",
        "aavs",
        "--data",
        str(bench["data"]),
        "--out",
        str(tmp_path / "cell"),
        "--params",
        os.devnull,
        "--stage1-masks",
        str(out),
        "--no-progress",
        "--test-out",
        str(test_json),
        "--set",
        "evaluate.fscore_batch_videos=2",
        *[a for o in FAST for a in ("--set", o)],
    ]
    for name in ("flow", "prompts", "logmel"):
        argv += [f"--{name}", str(bench[name])]
    assert train_test_main(argv) == 0
    tested = json.loads(test_json.read_text())
    assert tested["split"] == "test" and tested["fscore_batch_videos"] == 2
    assert 0 <= tested["semantic"]["all"]["miou"] <= 1
    cell_run = json.loads((tmp_path / "cell" / "metrics.json").read_text())["mlflow_run_id"]
    assert client.get_run(cell_run).data.metrics["test/miou"] == pytest.approx(tested["semantic"]["all"]["miou"])
    without = [x for i, x in enumerate(argv) if "--stage1-masks" not in (x, argv[i - 1])]
    without = [x.replace(str(tmp_path / "cell"), str(tmp_path / "cell2")) for x in without]
    with pytest.raises(SSPError, match="--test-out for stage 2 needs --stage1-masks"):  # refused before training
        train_test_main(without + ["--stage1-checkpoint", str(s1.best_checkpoint)])
    assert not (tmp_path / "cell2").exists()


# 4 train videos, batch 1 -> 4 steps per epoch, 3 epochs, the LR steps after epoch 2, a step
# checkpoint every 6 steps (step 6 = mid-epoch 2). One worker per loader: the val loader's
# persistent worker is what drew from the global RNG once per process (the resumed run's
# epoch-3 weights differed in 234 of 237 tensors).
RESUME_RUN = (
    "train1.epochs=3",
    "train1.lr_step_epoch=2",
    "train1.step_checkpoint_every=6",
    "train1.seed=3",
    "train1.num_workers=1",
)


def final_state(run_dir: Path) -> dict:
    """Everything a run ends with: the last epoch's weights, optimizer, scheduler, RNG,
    position, best and history (wall-clock seconds aside), best.safetensors, metrics, and
    the process's RNG right after train() returned."""
    ckpt = run_dir / "checkpoints"
    state_tensors, state_meta = load_tensors(ckpt / "epoch_3.state.safetensors")
    for row in state_meta["extra"]["history"]:
        row.pop("seconds")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("mlflow_run_id")  # each process logs its own MLflow run
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "weights": load_file(str(ckpt / "epoch_3.safetensors")),
        "best": load_file(str(ckpt / "best.safetensors")),
        "state": state_tensors,
        "meta": state_meta,
        "metrics": metrics,
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "python": random.getstate(),
        },
    }


def assert_same_final_state(a: dict, b: dict) -> None:
    for part in ("weights", "best", "state"):
        assert a[part].keys() == b[part].keys(), part
        differ = sorted(k for k in a[part] if not torch.equal(a[part][k], b[part][k]))
        assert not differ, f"{part}: {len(differ)} of {len(a[part])} tensors differ, e.g. {differ[:3]}"
    assert a["meta"] == b["meta"]  # optimizer param groups, scheduler, python/numpy RNG, position, history
    assert a["metrics"] == b["metrics"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert all(
        torch.equal(x, y) if torch.is_tensor(x) else x == y for x, y in zip(a["rng"]["numpy"], b["rng"]["numpy"])
    )
    assert a["rng"]["python"] == b["rng"]["python"]


@pytest.fixture(scope="module")
def uninterrupted(bench, tmp_path_factory, _mlflow_template_db) -> dict:
    """The reference: RESUME_RUN never interrupted, its train set read by a loader worker."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    shutil.copy(_mlflow_template_db, run_dir / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{run_dir / 'mlflow.db'}")
        mp.delenv("SSP_MLFLOW_PARENT_RUN_ID", raising=False)
        mp.chdir(run_dir)
        p = params(*RESUME_RUN, "train1.cache_in_memory=false")
        train(1, bench["data"], run_dir / "run", p, row="aavs", progress=False, **dirs(bench))
        return final_state(run_dir / "run")


# interrupted after step N (nothing of later steps written) -> the checkpoint it resumes from
@pytest.mark.parametrize(
    ("kill_after", "resumes_from"),
    [
        (5, ("epoch", 1, 0, 4)),  # after epoch 1
        (7, ("step", 1, 2, 6)),  # mid-epoch 2, at the step checkpoint
        (9, ("epoch", 2, 0, 8)),  # after epoch 2
    ],
    ids=["after-epoch-1", "mid-epoch-2", "after-epoch-2"],
)
def test_resume_from_any_point_ends_bit_identical(
    bench, tmp_path, mlflow_store, uninterrupted, kill_after, resumes_from
):
    # the interrupted/resumed run decodes its train set once into RAM: same items, same result
    p = params(*RESUME_RUN, "train1.cache_in_memory=true")
    with pytest.raises(TrainingInterrupted):
        train(
            1,
            bench["data"],
            tmp_path / "cut",
            p,
            row="aavs",
            progress=False,
            interrupt_after_steps=kill_after,
            **dirs(bench),
        )
    last = json.loads((tmp_path / "cut" / "checkpoints" / "last.json").read_text())
    assert (last["kind"], last["epoch"], last["batches_done"], last["global_step"]) == resumes_from
    train(1, bench["data"], tmp_path / "cut", p, row="aavs", resume=True, progress=False, **dirs(bench))
    assert_same_final_state(uninterrupted, final_state(tmp_path / "cut"))
    # retention (keep_last 1): the last epoch's pair, best, the pointer; no step checkpoint left
    assert sorted(f.name for f in (tmp_path / "cut" / "checkpoints").iterdir()) == [
        "best.safetensors",
        "epoch_3.safetensors",
        "epoch_3.state.safetensors",
        "last.json",
    ]


def test_loaders_and_validation_leave_the_global_rng_alone(bench):
    # a DataLoader without a generator draws its workers' base seed from the global torch RNG
    # each time it makes an iterator, i.e. once per process with persistent workers: a resumed
    # process then drew once more than an uninterrupted one (the cause of inexact resumes)
    p = params("train1.num_workers=1", "train1.cache_in_memory=false")
    config = build_model_config(p.model, 1, model_switches(p, 1, "aavs"))
    train_set, val_set = build_stage_datasets(bench["data"], 1, config, p.train1, InputDirs(**dirs(bench)), None, None)
    loaders = build_loaders(train_set, val_set, p.train1, Dist(), on_cuda=False, progress=False)
    model = SSPModel(config).eval()
    before = torch.get_rng_state()
    for _ in range(2):  # the first iterators start the persistent workers, the second reuse them
        loaders.sampler.set_position(0, 0)
        assert sum(1 for _ in loaders.train) == 4
        evaluate(model, loaders.val, config, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before)


def test_the_interrupt_environment_variable_and_the_step_hook(bench, tmp_path, mlflow_store, monkeypatch):
    steps: list[int] = []
    monkeypatch.setenv("SSP_TRAIN_INTERRUPT_AFTER_STEPS", "3")
    with pytest.raises(TrainingInterrupted, match="after step 3"):
        train(
            1,
            bench["data"],
            tmp_path / "run",
            params("train1.epochs=2"),
            row="aavs",
            progress=False,
            step_hook=steps.append,
            **dirs(bench),
        )
    assert steps == [1, 2, 3]


def test_resume_rejects_another_config(bench, tmp_path, mlflow_store):
    p = params("train1.epochs=1")
    train(1, bench["data"], tmp_path / "run", p, row="aavs", progress=False, **dirs(bench))
    with pytest.raises(SSPError, match="another model config"):
        train(
            1,
            bench["data"],
            tmp_path / "run",
            params("train1.epochs=2"),
            row="full",
            resume=True,
            progress=False,
            **dirs(bench),
        )


def test_resume_auto_continues_only_the_same_run(bench, tmp_path, mlflow_store, caplog):
    """`--resume auto` (dvc.yaml): continue when model config, train params, videos and the
    resume-key files are the checkpoint's; otherwise start fresh, saying why."""
    key = tmp_path / "inputs.json"
    key.write_text('{"md5": "a"}')
    out = tmp_path / "run"

    def run(*extra: str, cut: int | None = None, mode: str | bool = "auto") -> list[int]:
        steps: list[int] = []
        caplog.clear()
        with caplog.at_level("INFO", logger="ssp.engine.train"):
            try:
                train(
                    1,
                    bench["data"],
                    out,
                    params("train1.epochs=2", *extra),
                    row="aavs",
                    resume=mode,
                    resume_keys=[key],
                    progress=False,
                    interrupt_after_steps=cut,
                    step_hook=steps.append,
                    **dirs(bench),
                )
            except TrainingInterrupted:
                pass
        return steps

    assert run(cut=5) == [1, 2, 3, 4, 5]
    assert f"--resume auto: no checkpoint in {out / 'checkpoints'}" in caplog.text
    # the same run: continues after epoch 1 (log_every and workers are not part of the run)
    assert run("train1.log_every=3", "train1.num_workers=1") == [5, 6, 7, 8]
    assert "resuming from" in caplog.text and "epoch_1.safetensors" in caplog.text
    assert "model config, train params, videos and resume keys match" in caplog.text
    assert run() == []  # finished: nothing left to train, outputs written again
    assert len(list(csv.DictReader((out / "history.csv").open()))) == 2
    # new inputs (the stage's fingerprint file changed): a fresh start, the old files removed
    key.write_text('{"md5": "b"}')
    assert run(cut=1) == [1]
    assert f"resume key {key} changed" in caplog.text and "removed 4 files of the former run" in caplog.text
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == []  # killed before epoch 1 ended
    assert run(cut=5) == [1, 2, 3, 4, 5]  # leaves epoch 1's checkpoint
    # another train param or another model config: fresh too
    assert run("train1.lr=0.002", cut=5) == [1, 2, 3, 4, 5]
    assert "train.lr 0.001 -> 0.002" in caplog.text and "starting fresh" in caplog.text
    assert run("train1.lr=0.002", "model.num_points=32", cut=5) == [1, 2, 3, 4, 5]
    assert "another model config" in caplog.text
    # `--resume` (on) continues despite a changed train param, with a warning naming it
    assert run("train1.lr=0.003", "model.num_points=32", mode=True) == [5, 6, 7, 8]
    assert "differs from this run: train.lr 0.002 -> 0.003" in caplog.text


def test_adopt_takes_over_only_a_finished_identical_run(bench, tmp_path, mlflow_store, caplog):
    """`--adopt` (dvc.yaml: the λ' sweep's point at ablation.lambda_post is the S4/MS3 cell
    of the full row): a finished run with this very signature is copied, not trained again,
    and this run shows its epochs; an unfinished one or another run's is passed over."""
    key = tmp_path / "inputs.json"
    key.write_text('{"md5": "a"}')

    def run(out, *extra, adopt=(), cut=None, row="aavs"):
        steps: list[int] = []
        caplog.clear()
        with caplog.at_level("INFO", logger="ssp.engine.train"):
            try:
                result = train(
                    1,
                    bench["data"],
                    out,
                    params("train1.epochs=2", *extra),
                    row=row,
                    resume="auto",
                    resume_keys=[key],
                    adopt=adopt,
                    interrupt_after_steps=cut,
                    progress=False,
                    step_hook=steps.append,
                    **dirs(bench),
                )
            except TrainingInterrupted:
                result = None
        return steps, result

    source = tmp_path / "cells" / "seed0"
    steps, done = run(source)
    per_epoch = len(steps) // 2
    run(tmp_path / "partial" / "seed0", cut=per_epoch + 1)  # the same run, killed in epoch 2
    assert (tmp_path / "partial" / "seed0" / "checkpoints" / "last.json").is_file()

    # candidates: a folder of run folders each; the unfinished one is passed over
    steps, adopted = run(tmp_path / "point", adopt=[tmp_path / "partial", tmp_path / "cells"])
    assert steps == [] and f"--adopt: {source} is this very run, finished" in caplog.text
    assert adopted.history == done.history and adopted.metrics["best"] == done.metrics["best"]
    for name in ("best.safetensors", "epoch_2.safetensors"):
        a, b = (load_file(str(d / "checkpoints" / name)) for d in (source, tmp_path / "point"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "point" / "history.csv").read_text() == (source / "history.csv").read_text()
    client = get_client()
    logged = client.get_run(adopted.metrics["mlflow_run_id"])
    assert logged.data.tags["ssp.adopted_from"] == str(source.resolve())
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "val_miou")] == [1, 2]
    assert logged.data.metrics["best/miou"] == done.metrics["best"]["miou"]
    # a re-run of the point: its own folder holds the run, nothing is copied again
    assert run(tmp_path / "point", adopt=[tmp_path / "cells"])[0] == [] and "--adopt" not in caplog.text

    # the same switches by another name (stage 1 without --row is the aavs row): this run too
    steps, _ = run(tmp_path / "main", adopt=[source], row=None)
    assert steps == [] and f"--adopt: {source} is this very run" in caplog.text
    assert run(tmp_path / "main", adopt=[source], row=None)[0] == [] and "--adopt" not in caplog.text
    # another row's switches, another seed or other inputs: not this run, it trains (one step shows it)
    assert run(tmp_path / "pre-mask", adopt=[source], row="pre_mask", cut=1)[0] == [1]
    assert run(tmp_path / "seed1", "train1.seed=1", adopt=[tmp_path / "cells"], cut=1)[0] == [1]
    key.write_text('{"md5": "b"}')
    assert run(tmp_path / "new-inputs", adopt=[source], cut=1)[0] == [1]


def test_resume_options_on_the_command_line():
    from ssp.eval import train_test

    parser = argparse.ArgumentParser()
    train_test.add_arguments(parser)
    base = ["--stage", "1", "--data", "d", "--out", "o"]
    assert parser.parse_args(base).resume == "off"
    assert parser.parse_args([*base, "--resume"]).resume == "on"
    args = parser.parse_args([*base, "--resume", "auto", "--resume-key", "a.json", "--resume-key", "b.json"])
    assert (args.resume, args.resume_key) == ("auto", [Path("a.json"), Path("b.json")])
    assert parser.parse_args(base).adopt == []
    assert parser.parse_args([*base, "--adopt", "runs/a", "runs/b"]).adopt == [Path("runs/a"), Path("runs/b")]
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--resume", "maybe"])


def test_clear_errors_for_missing_inputs(bench, tmp_path, mlflow_store):
    with pytest.raises(SSPError, match="--stage1-masks"):
        train(2, bench["data"], tmp_path / "a", params(), row="aavs", progress=False, **dirs(bench))
    with pytest.raises(SSPError, match="--flow"):
        train(1, bench["data"], tmp_path / "b", params(), row="pre_mask", logmel=bench["logmel"], progress=False)
    with pytest.raises(SSPError, match="unknown keys"):
        params("train1.epochz=2")
    with pytest.raises(SSPError, match="unknown ablation row"):
        model_switches(Params(), 2, row="nope")
    with pytest.raises(SSPError, match="--stage must be 1 or 2"):
        train(3, bench["data"], tmp_path / "c", params(), progress=False)


def test_stage2_train_split_reads_stage1_masks_only_when_something_trains_on_them(bench, tmp_path):
    """The train split carries stage 1's masks when the pre-mask (premask_train_source) or the
    stone (stepping_stone_train) trains on them, and asks for --stage1-masks then; validation
    always reads them (its stepping stones)."""
    masks = tmp_path / "stage1_masks"
    cases = [  # (row, sets, train split reads them)
        ("aavs", [], False),
        ("aavs", ["model.stepping_stone_train=stage1"], True),
        ("pre_mask", ["model.premask_train_source=stage1"], True),  # the demo profile's
        ("pre_mask", ["model.premask_train_source=gt"], False),
    ]
    for row, sets, reads in cases:
        p = params(*sets)
        config = build_model_config(p.model, 2, model_switches(p, 2, row))
        train_set, val_set = build_stage_datasets(
            bench["data"], 2, config, p.train2, InputDirs(**dirs(bench)), masks, None
        )
        assert (train_set.stage1_dir == masks, val_set.stage1_dir) == (reads, masks), (row, sets)
        if reads:
            which = sets[0].split("=")[0].removeprefix("model.")
            with pytest.raises(SSPError, match=f"{which}='stage1' trains on stage 1's masks.*--stage1-masks"):
                build_stage_datasets(bench["data"], 2, config, p.train2, InputDirs(**dirs(bench)), None, tmp_path / "c")


def _old_config(model_section: dict, stage: int, row: str | None, sets: dict) -> SSPConfig:
    """What the old `build_model_config` built: the `model` section (plus `--set model.*`),
    the row's switches last."""
    section = {k: v for k, v in {**model_section, **sets}.items() if v is not None and v != ""}
    size = section.pop("size", "tiny")
    for param in ("stage1_mask_stride", "stage1_class_match_gain"):  # stage-1-only, added later
        value = section.pop(param, None)
        if stage == 1 and value is not None:
            section[param.removeprefix("stage1_")] = value
    for param in ("stage2_class_readout", "stage2_mask_stride"):  # stage-2-only, added later
        value = section.pop(param, None)
        if stage == 2 and value is not None:
            section[param.removeprefix("stage2_")] = value
    for param in ("stage1_class_aux", "stage2_class_aux"):  # one SSPConfig field, set per stage
        value = section.pop(param, None)
        if param == f"stage{stage}_class_aux" and value is not None:
            section["class_aux"] = value
    if row is not None:
        section.update(paper.row(row).switches)
    return (SSPConfig.tiny if size == "tiny" else SSPConfig.paper)(stage, **section)


@pytest.mark.parametrize("profile", ["demo", "paper"])
def test_model_config_from_typed_params_is_the_old_one(profile):
    p = load_params(REPO / "params.yaml", profile=profile)
    model = dict(vars(p.model))
    ssp = vars(p.ssp)

    def new(stage, row=None, params=p):
        return build_model_config(params.model, stage, model_switches(params, stage, row))

    assert new(1, "aavs") == _old_config(model, 1, "aavs", {})  # train_stage1: --row aavs
    assert new(1) == new(1, "aavs")  # stage 1 without a row is the AAVS binary model
    assert new(2) == _old_config(model, 2, None, dict(ssp))  # train_stage2: --set model.<ssp keys>
    for row in paper.ROWS:  # the ablation rows: --row R
        assert new(2, row) == _old_config(model, 2, row, {})
    swept = load_params(REPO / "params.yaml", profile=profile, overrides=["ablation.lambda_post=5"])
    assert new(2, "full", swept) == _old_config(model, 2, "full", {"lambda_post": 5})  # the sweep
    config = build_model_config(ModelParams(size="tiny"), 2, model_switches(swept, 2, "pre_mask_post_mask"))
    assert (config.pre_mask, config.text, config.post_mask, config.lambda_post) == (True, "none", True, 5)
    # λ' reaches only the models that use it: the main model's is its own, rows without the
    # post-mask and stage 1 keep the config default (so DVC need not retrain them)
    main_swept = load_params(REPO / "params.yaml", profile=profile, overrides=["ssp.lambda_post=5"])
    assert new(2, params=main_swept).lambda_post == 5 and new(2, "full", main_swept) == new(2, "full")
    for changed in (swept, main_swept):
        assert new(1, params=changed) == new(1) and new(2, "text_vta", changed) == new(2, "text_vta")


def test_per_stage_additions_reach_their_stage_and_the_paper_profile_has_none():
    """The demo's additions (bench/README.md, Mask resolution, Stage 2 on these stepping stones):
    finer masks in either stage, the class codes with their gain and the audio-pixel match;
    stage 2 has its own class-code weight and reads its classes with the codes; the paper
    profile builds AAVS as published."""
    demo = load_params(REPO / "params.yaml", profile="demo")
    stage1 = build_model_config(demo.model, 1, model_switches(demo, 1, "aavs"))
    assert (stage1.mask_stride, stage1.class_aux, stage1.class_match_gain) == (2, 3.0, 4.0)
    assert stage1.audio_fusion == "similarity"
    stage2 = build_model_config(demo.model, 2, model_switches(demo, 2, "full"))
    assert (stage2.mask_stride, stage2.audio_fusion, stage2.class_match_gain) == (2, "similarity", 1.0)
    assert stage2.class_aux == demo.model.stage2_class_aux and stage2.class_readout == "codes"
    assert stage1.class_readout == "queries"  # stage 1 is binary: nothing to read classes from
    paper_params = load_params(REPO / "params.yaml", profile="paper")
    for stage in (1, 2):
        config = build_model_config(paper_params.model, stage, model_switches(paper_params, stage, "aavs"))
        assert (config.mask_stride, config.class_aux, config.audio_fusion) == (4, 0.0, "none")
        assert config.class_readout == "queries"
        assert config.class_match_gain == SSPConfig.paper(stage, allow_random_init=True).class_match_gain


def test_stage1_gets_a_rows_switches_when_asked():
    p = Params()
    aavs = {"pre_mask": False, "text": "none", "post_mask": False}
    assert model_switches(p, 1) == model_switches(p, 1, "aavs") == aavs  # the stepping-stone producer
    for row in paper.ROWS:  # the S4/MS3 cells (`ablation_avs`): --stage 1 --row R
        switches = model_switches(p, 1, row)
        assert switches == model_switches(p, 2, row)  # the same row in both stages
        assert {k: switches[k] for k in aavs} == paper.row(row).switches
        assert ("lambda_post" in switches) == paper.row(row).switches["post_mask"]
        config = build_model_config(p.model, 1, switches)
        assert config.stage == 1 and {k: getattr(config, k) for k in aavs} == paper.row(row).switches


def test_stage1_cell_with_every_switch_trains_and_tests_s4_ms3(bench, tmp_path, mlflow_store):
    """An `ablation_avs` cell: stage 1, row `full` (pre-mask, VTA, post-mask) on v1s + v1m
    with the demo's premask_train_source=stage1 (a stage-1 model has no earlier stage's
    masks: it trains on its test-time stand-in, the whole frame), tested in the same
    process -> binary S4 / MS3 numbers per subset, what `ssp report` reads."""
    test_json = tmp_path / "metrics" / "ablation_avs" / "full" / "seed0.json"
    argv = ["--stage", "1", "--row", "full", "--data", str(bench["data"]), "--out", str(tmp_path / "cell")]
    argv += ["--params", os.devnull, "--no-progress", "--test-out", str(test_json)]
    argv += [a for o in FAST for a in ("--set", o)]
    argv += [
        "--set",
        "train1.epochs=1",
        "--set",
        "train1.subsets=[v1s,v1m]",
        "--set",
        "model.premask_train_source=stage1",
    ]
    for name in ("flow", "prompts", "logmel"):
        argv += [f"--{name}", str(bench[name])]
    assert train_test_main(argv) == 0
    tested = json.loads(test_json.read_text())
    assert tested["stage"] == 1 and tested["semantic"] == {}
    assert set(tested["binary"]) == {"v1s", "v1m"}  # tested on the subsets it trained on
    assert {k: tested["model"][k] for k in ("pre_mask", "text", "post_mask")} == paper.row("full").switches
    for subset in ("v1s", "v1m"):
        assert 0 <= tested["binary"][subset]["miou"] <= 1 and 0 <= tested["binary"][subset]["fscore"] <= 1
    assert None not in row_numbers(tested)[:4]
    assert json.loads((tmp_path / "cell" / "metrics.json").read_text())["best"]["miou"] >= 0

    # M_GT of eq. 2 for this model, in training and at test: the whole frame (M_Pre = 1 on M_O, 0.5 elsewhere)
    model, config, _ = load_model(tmp_path / "cell" / "checkpoints" / "best.safetensors")
    assert config.premask_train_source == "stage1" and config.premask_test_source == "stage1"
    records = load_split_records(bench["data"], 1, "test", ["v1m"])
    batch = next(dataset_batches(build_dataset(records, config, InputDirs(**dirs(bench))), 2))
    expected = torch.where(batch["flow_mask"] > 0.5, 1.0, 0.5)
    for training in (True, False):
        model.train(training)
        with torch.no_grad():
            assert torch.equal(model(batch).premask, expected)
    assert model.predict(batch).shape == batch["masks"].shape


def test_collate_labelled_drops_unlabelled_frames():
    def item(uid, labelled):
        n = len(labelled)
        return {
            "uid": uid,
            "subset": "v1s",
            "rel_dir": uid,
            "frames": torch.rand(n, 3, 4, 4),
            "masks": torch.arange(n).view(n, 1, 1).expand(n, 4, 4).clone(),
            "labelled": torch.tensor(labelled),
            "logmel": torch.zeros(n, 96, 64),
            "prompt_a1": uid,
            "prompt_a2": [uid],
        }

    batch = collate_labelled([item("a", [True, False, False]), item("b", [True, True])])
    assert batch["frames"].shape[0] == 3
    assert batch["video_index"].tolist() == [0, 1, 1] and batch["frame_index"].tolist() == [0, 0, 1]
    assert batch["masks"][:, 0, 0].tolist() == [0, 0, 1]
    assert batch["prompt_a1"] == ["a", "b", "b"] and batch["num_frames"].tolist() == [3, 2]


def test_torchrun_two_nodes_train_together_and_each_logs_its_system_metrics(bench, tmp_path, mlflow_store):
    """Two torchrun "machines" (one process each, meeting at a c10d rendezvous on this
    host) train one DDP model; rank 0 logs the run, and each node samples its own system
    metrics into it (system/node0/..., system/node1/...)."""
    torchrun = REPO / ".venv" / "bin" / "torchrun"
    if not torchrun.exists():
        pytest.skip("no .venv/bin/torchrun")
    out = tmp_path / "ddp"
    endpoint = f"127.0.0.1:{free_port()}"
    node = [str(torchrun), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
    node += ["--rdzv-endpoint", endpoint, "--rdzv-id", "ddp-test", "-m", "ssp.cli", "train", "--stage", "1"]
    node += ["--data", str(bench["data"]), "--out", str(out), "--params", os.devnull, "--logmel", str(bench["logmel"])]
    node += ["--row", "aavs", "--no-progress", "--set", "train1.epochs=1"]
    node += [a for s in FAST if s.startswith(("train1", "model")) for a in ("--set", s)]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "true",
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2",
    }
    procs = [subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)]
    procs.append(
        subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    )
    try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    ckpt = out / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("epoch_*")) == ["epoch_1.safetensors", "epoch_1.state.safetensors"]
    metrics = json.loads((out / "metrics.json").read_text())
    # 4 train videos over 2 ranks, batch 1: 2 steps per rank
    assert metrics["global_steps"] == 2
    assert 0 <= metrics["best"]["miou"] <= 1
    assert metrics["mlflow_run_id"]  # rank 0's run (rank 1's logger is disabled)
    logged = get_client().get_run(metrics["mlflow_run_id"]).data.metrics
    for node_rank in (0, 1):
        assert f"system/node{node_rank}/cpu_utilization_percentage" in logged, sorted(logged)
