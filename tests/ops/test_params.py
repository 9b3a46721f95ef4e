"""Params: typed sections, one home per default, profiles composed from conf/ (Hydra)."""

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ssp.errors import DataError
from ssp.params import Params, TrainParams, compose, load_params, read_yaml

ROOT = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).parent / "dvc")


def project(tmp_path: Path) -> Path:
    """A copy of the repository's conf/ and params.yaml."""
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path / "params.yaml"


def test_dataclass_defaults_are_the_conf_values_and_params_yaml_is_their_composition():
    conf = read_yaml(ROOT / "conf" / "config.yaml")
    conf.pop("defaults")
    defaults = Params().to_dict()
    assert {"profile": "demo", **conf} == defaults  # every key, every value, no more
    assert read_yaml(ROOT / "params.yaml") == compose(ROOT / "conf", "demo") == defaults


def test_paper_profile_values():
    demo, paper = load_params(ROOT / "params.yaml"), load_params(ROOT / "params.yaml", profile="paper")
    assert (demo.profile, paper.profile) == ("demo", "paper")
    assert (demo.model.size, paper.model.size) == ("tiny", "paper")
    # the input size is the size preset's (tiny 64 px, paper 384 px) unless a profile sets one
    assert (demo.model.image_size, paper.model.image_size) == (None, None)
    assert (paper.train2.epochs, paper.train2.lr_step_epoch) == (60, 20)
    assert (paper.train1.epochs, paper.train1.lr_step_epoch) == (30, 15)
    # the paper profile trains on whole videos of every subset (the demo keeps a few frames of v2)
    assert paper.train2.max_frames is None and paper.train2.subsets is None and paper.train1.max_frames is None
    assert (paper.train1.grad_clip, paper.train2.grad_clip) == (0.01, 0.0)  # AAVS: S4/MS3 clip, AVSS none
    # eq. 2 in training: the paper's GT mask; the demo uses stage 1's masks, as at test
    assert (demo.model.premask_train_source, paper.model.premask_train_source) == ("stage1", "gt")
    assert paper.model.premask_test_source == "stage1"  # the model section is merged, not replaced
    assert paper.train2.lr == demo.train2.lr and paper.ssp == demo.ssp


def test_train_sections_have_their_own_demo_defaults():
    params = Params()
    assert isinstance(params.stage(1), TrainParams) and params.stage(2) is params.train2
    assert (params.train1.lr_step_epoch, params.train2.lr_step_epoch) == (10, 4)
    assert (params.train1.epochs, params.train2.epochs) == (12, 5)
    assert params.train2.subsets is None and params.train1.subsets is None  # every subset, as AAVS
    assert (params.train1.grad_clip, params.train2.grad_clip) == (0.0, 1.0)


def test_missing_file_gives_the_defaults_and_overrides_win(tmp_path):
    params = load_params(tmp_path / "none.yaml", overrides=["train2.epochs=2", "ssp.text=att", "flow.value=0.5"])
    assert (params.train2.epochs, params.ssp.text, params.flow.value) == (2, "att", 0.5)
    assert dataclasses.replace(params.train2, epochs=5) == Params().train2


def test_profile_chosen_by_argument_or_override_composes_conf_beside_the_file(tmp_path):
    path = project(tmp_path)
    by_override = load_params(path, overrides=["profile=paper", "train2.epochs=5"])
    assert by_override.profile == "paper" and by_override.model.size == "paper" and by_override.train2.epochs == 5
    assert load_params(path, profile="paper") == load_params(ROOT / "params.yaml", profile="paper")
    assert load_params(path, profile="demo") == load_params(path)


def test_overrides_are_typed_and_their_errors_name_the_override(tmp_path):
    path = project(tmp_path)
    params = load_params(path, overrides=["train2.lr=1e-3", "flow.min_magnitude=2", "ablation.seeds=[0, 1]"])
    assert (params.train2.lr, params.flow.min_magnitude, params.ablation.seeds) == (1e-3, 2.0, [0, 1])
    assert isinstance(params.flow.min_magnitude, float)  # stamps and tags do not depend on the spelling
    with pytest.raises(DataError, match=r"--set train2.epochs=abc: train2.epochs must be int, got 'abc'"):
        load_params(path, overrides=["train2.epochs=abc"])
    with pytest.raises(DataError, match=r"--set train1.subsets=v2: train1.subsets must be list or null"):
        load_params(path, overrides=["train1.subsets=v2"])
    with pytest.raises(DataError, match=r"--set model.text=vta: unknown keys \['text'\].*model.text is ssp.text now"):
        load_params(path, overrides=["model.text=vta"])


def test_errors_name_the_file_and_the_problem(tmp_path):
    path = project(tmp_path)
    with pytest.raises(DataError, match=r"conf/profile: no profile 'gpu' \(profiles: demo, paper\)"):
        load_params(path, profile="gpu")
    with pytest.raises(DataError, match=r"--set train1.epochz=3: unknown keys \['epochz'\] in section train1"):
        load_params(path, overrides=["train1.epochz=3"])
    path.write_text(yaml.safe_dump({"profile": "demo", "profiles": {"paper": {}}}))  # the old single-file form
    with pytest.raises(DataError, match=r"params.yaml: unknown params sections \['profiles'\].*run `ssp params`"):
        load_params(path)
    with pytest.raises(DataError, match=r"no conf/config.yaml here"):
        load_params(tmp_path / "elsewhere" / "params.yaml", profile="paper")
    path.write_text("a: [1, 2\n")
    with pytest.raises(DataError, match="params.yaml: not valid YAML"):
        load_params(path)


def test_ssp_params_writes_the_composition_and_check_catches_a_stale_file(tmp_path):
    path = project(tmp_path)
    cmd = [sys.executable, "-m", "ssp.cli", "params", "--conf", str(tmp_path / "conf"), "--out", str(path)]
    assert subprocess.run([*cmd, "--check"], capture_output=True).returncode == 0
    assert subprocess.run([*cmd, "--profile", "paper", "--check"], capture_output=True).returncode == 1
    subprocess.run([*cmd, "--profile", "paper"], check=True, capture_output=True)
    assert yaml.safe_load(path.read_text())["train2"]["epochs"] == 60
    assert load_params(path) == load_params(ROOT / "params.yaml", profile="paper")


def test_dvc_exp_run_with_the_paper_profile_records_the_paper_values(tmp_path):
    """`dvc exp run -S profile=paper` composes conf/ through DVC's Hydra integration: the
    queued experiment's params (what `dvc exp show` lists) are the paper values."""
    project(tmp_path)
    for name in ("dvc.yaml", ".dvc/config"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    env_git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*env_git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*env_git, "commit", "-qm", "x"], cwd=tmp_path, check=True)
    subprocess.run(
        [DVC, "exp", "run", "-S", "profile=paper", "--queue", "--name", "paper"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    shown = subprocess.run(
        [DVC, "exp", "show", "--csv", "--keep", r"^(profile|model\.size|train2\.epochs)$", "--drop", ".*"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = [line.split(",") for line in shown.strip().splitlines()]
    header = rows[0]
    values = {tuple(r[header.index(k)] for k in ("profile", "model.size", "train2.epochs")) for r in rows[1:]}
    assert ("paper", "paper", "60") in values and ("demo", "tiny", "5") in values


def test_former_flags_and_missing_params_files_are_clear_errors(tmp_path, capsys):
    from ssp.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["synth", "--out", str(tmp_path / "d"), "--size", "tiny"])
    assert exit_.value.code == 2
    assert "ssp synth: error: --size is a param now: --set data.size=tiny" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prompts", str(tmp_path), "--out", str(tmp_path / "p"), "--backend", "none"])
    assert "--set prompts.backend=none" in capsys.readouterr().err
    # a params file named explicitly must exist: a typo would silently run the demo defaults
    assert main(["synth", "--out", str(tmp_path / "d"), "--params", str(tmp_path / "typo.yaml")]) == 2
    assert "typo.yaml: params file not found" in capsys.readouterr().err
