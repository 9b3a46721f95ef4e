"""ssp.models.checkpoint: safetensors weights with the config inside, no pickle, and clear
errors for wrong or corrupt files."""

from __future__ import annotations

import pickle

import pytest
import torch

from ssp.errors import DataError
from ssp.models import SSPConfig, SSPModel
from ssp.models.checkpoint import load_model, load_weights_into, read_weights, save_weights


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SSPModel(SSPConfig.tiny(2, num_points=64))


def test_weights_round_trip_rebuilds_the_model_from_the_file(model, tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(path, model, {"epoch": 3, "val": {"miou": 0.5}})
    state, config, info = read_weights(path)
    # info also records the pretrained weights the model was built from (none here)
    assert config == model.config.to_dict() and info == {"epoch": 3, "val": {"miou": 0.5}, "pretrained": {}}
    rebuilt, rebuilt_config, _ = load_model(path)
    assert rebuilt_config.stage == 2 and not rebuilt.training
    mine, theirs = model.state_dict(), rebuilt.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert path.read_bytes()[:8] != b"\x80\x04\x95"[:8]  # not a pickle
    assert not list(tmp_path.glob(".*"))  # no temp file left behind


def test_frozen_pretrained_vggish_is_rebuilt_from_its_spec_not_stored(tmp_path, monkeypatch):
    from tests.standins import vggish_standin

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = vggish_standin(tmp_path / "hf")
    model = SSPModel(SSPConfig.tiny(1, audio_encoder="vggish", vggish_weights=spec, num_points=64)).eval()
    path = tmp_path / "w.safetensors"
    save_weights(path, model)
    state, _, info = read_weights(path)
    assert not any(k.startswith("audio_encoder.") for k in state)  # 288 MB not copied into every epoch
    assert path.stat().st_size < 20e6 and info["pretrained"]["model.vggish_weights"]["spec"] == spec
    rebuilt, _, _ = load_model(path)
    logmel = torch.randn(2, 1, 96, 64)
    assert torch.equal(rebuilt.audio_encoder(logmel), model.audio_encoder(logmel))
    assert not any(p.requires_grad for p in rebuilt.audio_encoder.parameters())

    # the same spec resolving to other files (another cache, a re-pushed revision) is refused
    from tests.standins import VGGISH_FILE, VGGISH_REPO, hub_cache_entry

    def other_vggish(folder):
        torch.save({k: v + 1 for k, v in model.audio_encoder.state_dict().items()}, folder / VGGISH_FILE)

    hub_cache_entry(tmp_path / "other-hf", VGGISH_REPO, other_vggish, revision=spec.split("@")[1])
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "other-hf"))
    with pytest.raises(DataError, match=r"model.vggish_weights: trained with harritaylor/torchvggish@.*differ"):
        load_model(path)


def test_frozen_text_model_is_not_stored(tmp_path):
    model = SSPModel(SSPConfig.tiny(1, text="vta", num_points=64))
    path = tmp_path / "vta.safetensors"
    save_weights(path, model)
    state, _, _ = read_weights(path)
    assert any(k.startswith("text_module.") for k in state)
    assert not any(k.startswith("text_module.text_encoder.") for k in state)
    rebuilt, _, _ = load_model(path)
    assert torch.equal(rebuilt.text_module.visual_in.weight, model.text_module.visual_in.weight)


@pytest.mark.parametrize("damage", ["truncated", "pickle", "garbage", "not_ours"])
def test_corrupt_or_foreign_files_raise_a_data_error_naming_the_file(model, tmp_path, damage):
    path = tmp_path / f"{damage}.safetensors"
    if damage == "truncated":
        save_weights(path, model)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "pickle":
        path.write_bytes(pickle.dumps({"weight": [1, 2, 3]}))
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    else:
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(DataError) as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_weights_of_another_config_raise_a_data_error(model, tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(path, model)
    other = SSPModel(SSPConfig.tiny(2, hidden_dim=96, num_points=64))
    with pytest.raises(DataError, match="do not fit") as err:
        load_weights_into(other, path)
    assert str(path) in str(err.value)
    stage1 = SSPModel(SSPConfig.tiny(1, num_points=64))
    with pytest.raises(DataError, match="do not fit"):
        load_weights_into(stage1, path)


def test_a_recipe_model_from_hub_weights_round_trips_without_the_hub(tmp_path, monkeypatch):
    """The architecture read from the Mask2Former config.json and AAVS's adapters are in the
    stored config, so load_model rebuilds the model with neither the hub cache nor the spec;
    what the weights were stays in info["pretrained"]."""
    from tests.standins import mask2former_standin

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = mask2former_standin(tmp_path / "hub")
    recipe = dict(freeze_pretrained=True, swin_adapters=True, decoder_adapters="replace", drop_path_rate=0.3)
    model = SSPModel(SSPConfig.tiny(2, num_points=64, mask2former_weights=spec, **recipe))
    path = tmp_path / "recipe.safetensors"
    save_weights(path, model)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    rebuilt, config, info = load_model(path)
    assert config.hf_swin["depths"] == [1, 1, 1, 1] and config.swin_adapters and config.mask2former_weights is None
    assert info["pretrained"]["model.mask2former_weights"]["revision"] == spec.split("@")[1]
    mine, theirs = model.state_dict(), rebuilt.state_dict()
    assert mine.keys() == theirs.keys() and any(".swin_adapt_" in k for k in mine)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
