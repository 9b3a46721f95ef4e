"""`ssp weights`: every weights spec of the params resolved and listed; --pin writes the
resolved commits on the params' own lines of the profile, nothing else."""

from __future__ import annotations

from ssp.ops.weights import pin, resolve_all, weight_specs
from ssp.params import Params
from tests.standins import hub_cache_entry

PROFILE = """\
# the weights of this profile
model:
  size: paper
  mask2former_weights: org/m2f  # pin me
  text_model: org/m2f-large
flow:
  weights: 'org/flow'
notes:
  mask2former_weights: org/m2f
"""


def _repo(folder):
    (folder / "config.json").write_text("{}")


def test_weight_specs_lists_the_set_weights_and_the_mllm_only_for_hf():
    params = Params.from_dict({"model": {"vggish_weights": "v.pth"}, "prompts": {"model": "served-model"}})
    assert weight_specs(params) == {"model.vggish_weights": "v.pth"}  # openai/scene: a model's name
    params = Params.from_dict({"prompts": {"backend": "hf", "model": "org/vlm@main"}})
    assert weight_specs(params) == {"prompts.model": "org/vlm@main"}


def test_pin_rewrites_only_the_params_own_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m2f = hub_cache_entry(tmp_path / "hf", "org/m2f", _repo, revision="a" * 40)
    flow = hub_cache_entry(tmp_path / "hf", "org/flow", _repo, revision="b" * 40)
    hub_cache_entry(tmp_path / "hf", "org/m2f-large", _repo, revision="c" * 40)
    params = Params.from_dict(
        {"model": {"mask2former_weights": "org/m2f", "text_model": "org/m2f-large"}, "flow": {"weights": "org/flow"}}
    )
    profile = tmp_path / "paper.yaml"
    profile.write_text(PROFILE)
    resolved = resolve_all(params)
    resolved.pop("model.text_model")  # as if it were set by --set, not by the profile
    changes, elsewhere = pin(profile, resolved)
    assert changes == [f"model.mask2former_weights: org/m2f -> {m2f}", f"flow.weights: org/flow -> {flow}"]
    text = profile.read_text()
    assert f"  mask2former_weights: {m2f}  # pin me\n" in text
    assert f"  weights: '{flow}'\n" in text
    assert "  text_model: org/m2f-large\n" in text  # a longer id containing the spec: untouched
    assert text.endswith("notes:\n  mask2former_weights: org/m2f\n")  # another section: untouched
    assert elsewhere == []
    again, _ = pin(profile, resolve_all(Params.from_dict({"model": {"mask2former_weights": m2f}})))
    assert again == []  # already pinned


def test_pin_names_unpinned_specs_it_cannot_find(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_cache_entry(tmp_path / "hf", "org/other", _repo, revision="e" * 40)
    profile = tmp_path / "paper.yaml"
    profile.write_text(PROFILE)
    changes, elsewhere = pin(profile, resolve_all(Params.from_dict({"model": {"clip_model": "org/other"}})))
    assert changes == [] and elsewhere == ["model.clip_model = org/other"]
    assert profile.read_text() == PROFILE
