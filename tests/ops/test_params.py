from pathlib import Path

import pytest
import yaml

from ssp.errors import DataError
from ssp.ops.params import load_params

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, obj):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(obj))
    return p


def test_profile_overrides_base_and_cli_overrides_win(tmp_path):
    p = write(tmp_path, {"profile": "demo", "train2": {"epochs": 4, "lr": 1e-3},
                         "profiles": {"paper": {"train2": {"epochs": 60}}}})
    assert load_params(p)["train2"] == {"epochs": 4, "lr": 1e-3}
    paper = load_params(p, profile="paper")
    assert paper["train2"] == {"epochs": 60, "lr": 1e-3} and paper["profile"] == "paper"
    assert load_params(p, overrides=["train2.epochs=2", "model.text=vta"])["train2"]["epochs"] == 2
    assert load_params(p, overrides=["model.text=vta"])["model"] == {"text": "vta"}


def test_unknown_profile_and_bad_yaml_name_the_file(tmp_path):
    p = write(tmp_path, {"profile": "demo"})
    with pytest.raises(DataError, match="profile 'gpu' not defined"):
        load_params(p, profile="gpu")
    p.write_text("a: [1, 2\n")
    with pytest.raises(DataError, match="params.yaml: not valid YAML"):
        load_params(p)


def test_repo_params_load_in_both_profiles():
    demo, paper = load_params(ROOT / "params.yaml"), load_params(ROOT / "params.yaml", profile="paper")
    assert demo["profile"] == "demo" and paper["profile"] == "paper"
    assert (demo["model"]["size"], paper["model"]["size"]) == ("tiny", "paper")
    assert paper["train2"]["epochs"] == 60 and paper["train2"]["lr_step_epoch"] == 20
    # the paper profile trains on whole videos of every subset (the demo keeps a few frames of v2)
    assert paper["train2"]["max_frames"] is None and paper["train2"]["subsets"] is None
    # eq. 2 in training: the paper's GT mask; the demo uses stage 1's masks, as at test
    assert (demo["model"]["premask_train_source"], paper["model"]["premask_train_source"]) == ("stage1", "gt")
    assert paper["model"]["premask_test_source"] == "stage1"  # the model section is merged, not replaced
    assert paper["train1"]["max_frames"] is None


def test_profile_chosen_by_override(tmp_path):
    p = write(tmp_path, {"profile": "demo", "train2": {"epochs": 4},
                         "profiles": {"paper": {"train2": {"epochs": 60}}}})
    paper = load_params(p, overrides=["profile=paper"])
    assert paper["profile"] == "paper" and paper["train2"]["epochs"] == 60
    assert load_params(p, overrides=["profile=paper", "train2.epochs=5"])["train2"]["epochs"] == 5
