"""The real dvc.yaml / params.yaml: stage wiring and parameter dependencies.

DVC decides what re-runs from the hashes of each stage's deps, params and outs. To test
that without running the pipeline, we copy dvc.yaml + params.yaml into a scratch git
repo, give every dep and out a stand-in file, `dvc commit` all stages (records the
hashes in dvc.lock as if they had run), then change one param and ask `dvc status`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ssp.paper import TABLE2

ROOT = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).parent / "dvc")
PREPROCESSING = {"synth", "validate", "flow", "logmel", "prompts"}
# the S4/MS3 (stage-1) cells of the committed params: `ablation_avs@{row}-{seed}`
STAGE1_ROWS = yaml.safe_load((ROOT / "params.yaml").read_text())["ablation"]["stage1_rows"]


def stage1_cells(seed: int) -> set[str]:
    return {f"ablation_avs@{r}-{seed}" for r in STAGE1_ROWS}


def sweep_cells() -> set[str]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return {f"sweep@{v}" for v in params["sweep"]["lambda_post"]}


def run(cmd, cwd):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, f"{cmd}: {out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def committed_pipeline(tmp_path_factory) -> Path:
    proj = tmp_path_factory.mktemp("pipeline")
    shutil.copy(ROOT / "dvc.yaml", proj)
    shutil.copy(ROOT / "params.yaml", proj)  # composed from conf/: every key the stages read
    shutil.copy(ROOT / ".dvcignore", proj)
    run(["git", "init", "-q"], proj)
    run([DVC, "init", "-q"], proj)
    # stand-ins for every dep and out that DVC hashes
    from dvc.repo import Repo

    with Repo(str(proj)) as repo:
        paths = {
            str(Path(o.def_path))
            for s in repo.index.stages
            for o in [*s.deps, *s.outs]
            if not o.def_path.endswith(".yaml") and o.__class__.__name__ != "ParamsDependency"
        }
    for rel in sorted(paths):
        p = proj / rel
        if p.suffix in (".json", ".csv", ".py"):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("{}" if p.suffix == ".json" else "epoch,val_miou\n1,0.5\n" if p.suffix == ".csv" else "#\n")
        else:
            p.mkdir(parents=True, exist_ok=True)
            (p / "stand-in.txt").write_text(rel)
    run([DVC, "commit", "-f", "-q"], proj)
    assert json.loads(run([DVC, "status", "--json"], proj) or "{}") == {}
    return proj


def stale_after(proj: Path, edit) -> set[str]:
    params_file = proj / "params.yaml"
    original = params_file.read_text()
    try:
        params = yaml.safe_load(original)
        edit(params)
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        return {name.split(":")[-1] for name in json.loads(run([DVC, "status", "--json"], proj) or "{}")}
    finally:
        params_file.write_text(original)


def test_all_stages_present_in_dependency_order():
    from flows.dvc_stages import stage_plan

    order = [s.name for s in stage_plan(ROOT)]
    for a, b in [
        ("synth", "validate"),
        ("validate", "flow"),
        ("validate", "prompts"),
        ("train_stage1", "stage1_masks"),
        ("stage1_masks", "train_stage2"),
        ("train_stage2", "evaluate"),
        ("stage1_masks", "ablation@full-0"),
        ("ablation_avs_inputs", "sweep@10"),  # Fig. 5 on MS3: stage-1 models, no stage-1 masks
        ("ablation_avs@full-0", "sweep@10"),  # so that the point at λ' = 10 can --adopt that cell
        ("ablation@full-0", "samples"),
        ("flow", "ablation_avs_inputs"),
        ("ablation_avs_inputs", "ablation_avs@full-0"),
    ]:
        assert order.index(a) < order.index(b), (a, b)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    # the grid is a matrix over Table-2 row x seed; the rows are ssp.paper's, in its order
    assert params["ablation"]["rows"] == list(TABLE2) and params["ablation"]["seeds"] == [0]
    assert [s for s in order if s.startswith("ablation@")] == [f"ablation@{r}-0" for r in TABLE2]
    assert len(params["sweep"]["lambda_post"]) == 5 and 10 in params["sweep"]["lambda_post"]
    # the sweep's point at ablation.lambda_post is the full row's S4/MS3 cell: it may adopt it
    sweep_cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["sweep"]["do"]["cmd"]
    assert "--adopt runs/ablation_avs/full" in sweep_cmd and "full" in params["ablation"]["stage1_rows"]
    assert params["ablation"]["lambda_post"] in params["sweep"]["lambda_post"]
    # the main stage-2 model is the full row's AVSS cell while `ssp` has the row's switches
    ablation_cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["ablation"]["cmd"]
    assert "--adopt runs/stage2" in ablation_cmd and order.index("train_stage2") < order.index("ablation@full-0")
    assert {**TABLE2["full"].switches, "lambda_post": params["ablation"]["lambda_post"]} == params["ssp"]


def test_lambda_post_change_makes_only_its_models_stale(committed_pipeline):
    stale = stale_after(committed_pipeline, lambda p: p["ssp"].__setitem__("lambda_post", 5.0))
    assert stale == {"train_stage2"}  # the main model; evaluate follows once its outputs change
    assert not stale & PREPROCESSING and "train_stage1" not in stale
    assert stale_after(committed_pipeline, lambda p: p["ssp"].__setitem__("text", "att")) == {"train_stage2"}
    # the Table-2 cells' λ' (the sweep sets its own)
    stale = stale_after(committed_pipeline, lambda p: p["ablation"].__setitem__("lambda_post", 5.0))
    assert stale == {*(f"ablation@{r}-0" for r in TABLE2), *stage1_cells(0), "samples"}


def test_seeds_add_cells_without_touching_the_others(committed_pipeline):
    stale = stale_after(committed_pipeline, lambda p: p["ablation"].__setitem__("seeds", [0, 1]))
    # the report too: it reports the grid params name (a seed taken out leaves its files)
    assert stale == {f"ablation@{r}-1" for r in TABLE2} | stage1_cells(1) | {"samples", "report"}


def test_sweep_values_touch_only_their_own_cells(committed_pipeline):
    def edit(p):
        p["sweep"]["lambda_post"] = [1, 5, 10, 20, 100]

    stale = stale_after(committed_pipeline, edit)
    assert not stale & (PREPROCESSING | {"train_stage1", "train_stage2", "evaluate"})
    assert "report" in stale  # it reports the λ' values params name, not every file in metrics/sweep


def test_preprocessing_params_reach_only_their_stage(committed_pipeline):
    assert stale_after(committed_pipeline, lambda p: p["flow"].__setitem__("preset", "fast")) == {"flow"}
    assert stale_after(committed_pipeline, lambda p: p["prompts"].__setitem__("quality", 0.5)) == {"prompts"}
    assert stale_after(committed_pipeline, lambda p: p["data"].__setitem__("seed", 1)) == {"synth"}
    stale = stale_after(committed_pipeline, lambda p: p["train1"].__setitem__("epochs", p["train1"]["epochs"] + 1))
    # the main stage 1, the S4/MS3 cells and the λ' sweep (Fig. 5: stage-1 models on MS3)
    assert stale == {"train_stage1"} | stage1_cells(0) | sweep_cells()
    stale = stale_after(committed_pipeline, lambda p: p["train2"].__setitem__("epochs", p["train2"]["epochs"] + 1))
    assert "train_stage1" not in stale and "train_stage2" in stale and "ablation@full-0" in stale
    assert not stale & sweep_cells()


def test_stage2_cells_see_upstream_folders_through_one_fingerprint(committed_pipeline):
    """A changed flow mask makes `flow` (changed out) and `stage2_inputs` (changed dep)
    stale; `dvc repro` then rewrites runs/stage2_inputs.json, which every stage-2 cell
    depends on. No cell hashes the folders itself (that is what kept no-op repro slow)."""
    stages = yaml.safe_load((committed_pipeline / "dvc.yaml").read_text())["stages"]
    for name in ("train_stage2", "evaluate", "ablation", "samples"):
        stage = stages[name].get("do", stages[name])
        assert "runs/stage2_inputs.json" in stage["deps"], name
        assert not {"data/flow", "data/prompts", "data/stage1_masks", "${data.root}"} & set(stage["deps"]), name
    # the S4/MS3 (stage-1) cells and the λ' sweep: their own fingerprint, without stage-1 masks
    assert "runs/ablation_avs_inputs.json" in stages["ablation_avs"]["deps"]
    assert stages["sweep"]["do"]["deps"] == stages["ablation_avs"]["deps"]
    assert "data/stage1_masks" not in stages["ablation_avs_inputs"]["deps"]
    flow_file = committed_pipeline / "data" / "flow" / "stand-in.txt"
    original = flow_file.read_text()
    try:
        flow_file.write_text("changed")
        stale = {n.split(":")[-1] for n in json.loads(run([DVC, "status", "--json"], committed_pipeline) or "{}")}
        assert stale == {"flow", "stage2_inputs", "ablation_avs_inputs"}
    finally:
        flow_file.write_text(original)


def test_bytecode_caches_in_code_deps_leave_every_stage_up_to_date(committed_pipeline):
    """A stage's own imports write ssp/**/__pycache__ (unless PYTHONDONTWRITEBYTECODE is
    set): the code deps' hashes, and so every stage that depends on them, must not move."""
    caches = [committed_pipeline / d / "__pycache__" for d in ("ssp/engine", "ssp/models")]
    try:
        for cache in caches:
            cache.mkdir()
            (cache / "train.cpython-311.pyc").write_bytes(b"\xa7\r\r\n bytecode")
        (committed_pipeline / "ssp" / "engine" / "stray.pyc").write_bytes(b"bytecode")
        assert json.loads(run([DVC, "status", "--json"], committed_pipeline) or "{}") == {}
    finally:
        for cache in caches:
            shutil.rmtree(cache, ignore_errors=True)
        (committed_pipeline / "ssp" / "engine" / "stray.pyc").unlink(missing_ok=True)


def unproduced_deps(proj: Path) -> dict[str, set[str]]:
    """stage -> its path deps that no stage writes (as the out, inside one, or around one)
    and that the repository does not hold: what `dvc repro` stops at as missing."""
    from dvc.repo import Repo

    with Repo(str(proj)) as repo:
        stages = list(repo.index.stages)
        outs = [Path(o.def_path) for s in stages for o in s.outs]
        missing: dict[str, set[str]] = {}
        for stage in stages:
            for dep in stage.deps:
                if dep.__class__.__name__ == "ParamsDependency":
                    continue
                path = Path(dep.def_path)
                produced = any(path == o or o in path.parents or path in o.parents for o in outs)
                if not produced and not (ROOT / path).exists():
                    missing.setdefault(stage.name, set()).add(str(path))
    return missing


@pytest.mark.parametrize(
    "edit",
    [
        {},
        {"sweep": {"lambda_post": []}},  # no Fig. 5
        {"ablation": {"stage1_rows": []}},  # no S4/MS3 cells
    ],
    ids=["default", "no-sweep", "no-stage1-rows"],
)
def test_every_dep_is_written_by_a_stage_even_without_a_part_of_the_grid(tmp_path, edit):
    """A grid without a part still reproduces: the report reads the whole metrics folder
    (not one folder per part, which an empty part never creates)."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in edit.items():
        params[section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], tmp_path)
    run([DVC, "init", "-q"], tmp_path)
    assert unproduced_deps(tmp_path) == {}
    report_deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]["deps"]
    assert "metrics" in report_deps and not any(d.startswith("metrics/") for d in report_deps)
