"""`dvc repro` continues an interrupted training stage and starts over a changed one.

A scratch DVC project holds the repository's own dvc.yaml entries ``stage2_inputs`` and
``train_stage2`` verbatim (command, deps, params, outs -- the persisted checkpoints), a copy
of the code they depend on, the tiny generated benchmark and stage-1 masks from a one-epoch
stage-1 model. `dvc repro` is killed (SIGKILL to its whole process
group: DVC, `ssp launch` and the training) once the training has written a checkpoint after
epoch 1; the second `dvc repro` must continue from that checkpoint (the epochs done before
the kill are not trained again) and end with the weights of an uninterrupted run. A changed
train param then makes DVC re-run the stage, and `--resume auto` starts it fresh.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ssp.engine.train import train
from ssp.eval.stage1_masks import write_stage1_masks
from ssp.params import apply_overrides, compose, load_params, write_params
from tests.engine.benchmark import FAST, params

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STAGES = ("stage2_inputs", "train_stage2")
# 2 train videos, batch 1: 2 steps per epoch, 4 epochs, a step checkpoint every step
SCHEDULE = ["train2.epochs=4", "train2.batch_size=1", "train2.step_checkpoint_every=1", "train2.lr_step_epoch=2"]


# deps that do not change what a training computes: the cells test in the same process
EVALUATION_ONLY = {"ssp/eval/train_test.py", "ssp/eval/evaluate.py"}


def repository_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def resume_keys(cmd: str) -> list[str]:
    words = cmd.split()
    keys = words[words.index("--resume-key") + 1 :]
    return keys[: next((i for i, w in enumerate(keys) if w.startswith("--")), len(keys))]


def test_every_training_stage_resumes_on_its_own_deps_only():
    """`--resume auto --resume-key DEPS`: a checkpoint is continued only while everything DVC
    re-runs the stage for is unchanged (but the evaluation code: a re-test needs no re-training)."""
    stages = repository_stages()
    for name in ("train_stage1", "train_stage2", "ablation", "ablation_avs", "sweep"):
        stage = stages[name].get("do", stages[name])
        assert "--resume auto" in stage["cmd"], name
        assert set(resume_keys(stage["cmd"])) == set(stage["deps"]) - EVALUATION_ONLY, name
        (checkpoints,) = [o for o in stage["outs"] if "checkpoints" in str(o)]
        assert isinstance(checkpoints, dict) and next(iter(checkpoints.values())) == {"persist": True}, name


def history(proj: Path) -> list[dict]:
    return list(csv.DictReader((proj / "runs" / "stage2" / "history.csv").open()))


@pytest.fixture(scope="module")
def project(bench, tmp_path_factory, _mlflow_template_db) -> tuple[Path, dict]:
    proj = tmp_path_factory.mktemp("dvc-resume")
    for name in ("data", "flow", "prompts", "logmel"):
        shutil.copytree(bench[name], proj / "data" / name)
    shutil.copytree(ROOT / "ssp", proj / "ssp", ignore=shutil.ignore_patterns("__pycache__"))  # code deps
    (proj / "reports").mkdir()
    (proj / "reports" / "validation.json").write_text('{"fingerprint": "stand-in"}')  # `ssp validate`'s
    (proj / "mlruns").mkdir()
    shutil.copy(_mlflow_template_db, proj / "mlruns" / "mlflow.db")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{proj / 'mlruns' / 'mlflow.db'}",
        "DVC_NO_ANALYTICS": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("SSP_MLFLOW_PARENT_RUN_ID", None)
    with pytest.MonkeyPatch.context() as mp:  # the stage-1 model whose masks stage 2 reads
        mp.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        mp.chdir(proj)
        moved = {k: proj / "data" / k for k in ("flow", "prompts", "logmel")}
        stage1 = train(
            1, proj / "data" / "data", proj / "stage1", params("train1.epochs=1"), row="aavs", progress=False, **moved
        )
        write_stage1_masks(
            stage1.best_checkpoint,
            proj / "data" / "data",
            proj / "data" / "stage1_masks",
            ("val", "test"),
            progress=False,
            **moved,
        )
    overrides = ["data.root=data/data", *[o for o in FAST if o.startswith(("train2", "model"))], *SCHEDULE]
    write_params(apply_overrides(compose(ROOT / "conf", "demo"), overrides), proj / "params.yaml")
    stages = repository_stages()
    (proj / "dvc.yaml").write_text(yaml.safe_dump({"stages": {n: stages[n] for n in STAGES}}, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=proj, env=env, check=True)
    return proj, env


def dvc(proj: Path, env: dict, *args: str) -> str:
    out = subprocess.run([str(BIN / "dvc"), *args], cwd=proj, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"dvc {' '.join(args)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out.stdout + out.stderr


@pytest.mark.slow
def test_dvc_repro_continues_an_interrupted_train_stage2_and_restarts_a_changed_one(project, tmp_path, mlflow_store):
    proj, env = project
    checkpoints = proj / "runs" / "stage2" / "checkpoints"

    # 1. kill `dvc repro` (and everything it started) once epoch 1 is checkpointed
    killed = subprocess.Popen(
        [str(BIN / "dvc"), "repro"],
        cwd=proj,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while not (
        (proj / "runs" / "stage2" / "history.csv").is_file() and history(proj)
    ):  # written after epoch 1's checkpoint
        assert killed.poll() is None, f"dvc repro ended before the kill:\n{killed.stdout.read()[-4000:]}"
        assert time.monotonic() < deadline, "epoch 1 did not end within 240 s"
        time.sleep(0.01)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    pointer = json.loads((checkpoints / "last.json").read_text())  # where it really stopped
    assert 1 <= pointer["epoch"] and pointer["global_step"] < 8
    done_before = history(proj)[: pointer["epoch"]]  # (one short if killed between checkpoint and csv)
    assert done_before

    # 2. the re-run continues from that checkpoint: the epochs done are not trained again
    log = dvc(proj, env, "repro")
    assert f"--resume auto: resuming from runs/stage2/checkpoints/{pointer['weights']}" in log
    assert "starting fresh" not in log
    rows = history(proj)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert rows[: len(done_before)] == done_before  # seconds included: the same rows, restored
    assert json.loads((proj / "runs" / "stage2" / "metrics.json").read_text())["global_steps"] == 8
    assert json.loads(dvc(proj, env, "status", "--json") or "{}") == {}  # dvc.lock records the stage
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "best.safetensors",
        "epoch_4.safetensors",
        "epoch_4.state.safetensors",
        "last.json",
    ]
    # ... and ends where a run never interrupted ends
    reference = train(
        2,
        proj / "data" / "data",
        tmp_path / "reference",
        load_params(proj / "params.yaml"),
        stage1_masks=proj / "data" / "stage1_masks",
        progress=False,
        **{k: proj / "data" / k for k in ("flow", "prompts", "logmel")},
    )
    expected = load_file(str(reference.run_dir / "checkpoints" / "epoch_4.safetensors"))
    resumed = load_file(str(checkpoints / "epoch_4.safetensors"))
    assert expected.keys() == resumed.keys() and all(torch.equal(expected[k], resumed[k]) for k in expected)

    # 3. a changed train param: DVC re-runs the stage and it starts over
    text = (proj / "params.yaml").read_text()
    (proj / "params.yaml").write_text(text.replace("  lr: 0.001\n", "  lr: 0.002\n"))
    log = dvc(proj, env, "repro")
    assert "starting fresh: --resume auto:" in log and "train.lr 0.001 -> 0.002" in log
    assert [r["seconds"] for r in history(proj)] != [r["seconds"] for r in rows]
