"""VTA (paper §4.3, Algorithm 1) and how the text reaches the segmentation: CLIP visual
tokens from a hub-cache stand-in, the refined text of BERT's second pass in the mask
features, the "residual" and "att" variants, the frozen encoders' records."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from ssp.errors import DataError, SSPError
from ssp.models import SSPConfig, SSPModel
from ssp.models.vta import TextEncoder, TextToPixels
from tests.models.helpers import make_batch, tiny_config
from tests.standins import CLIP_REPO, bert_standin, clip_standin


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict[str, str]:
    """A hub cache holding reduced CLIP (a full CLIPModel, as openai/clip-vit-base-patch16)
    and BERT stand-ins; their specs ``org/name@<commit>``."""
    cache = tmp_path_factory.mktemp("hub")
    return {"cache": str(cache), "clip": clip_standin(cache), "bert": bert_standin(cache)}


@pytest.fixture
def offline(hub, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", hub["cache"])
    return hub


def clip_config(hub: dict[str, str], stage: int = 1, **switches) -> SSPConfig:
    settings = {"text": "vta", "text_visual_tokens": "clip", "clip_model": hub["clip"], "text_model": hub["bert"]}
    return SSPConfig.tiny(stage=stage, text_layers=None, **{**settings, **switches})


def mask_features_seen(model: SSPModel, batch: dict, monkeypatch) -> torch.Tensor:
    """The mask features the decoder dots its queries with, for ``batch`` (eval, no grad)."""
    seen = {}
    original = type(model.transformer_module).forward

    def spy(self, multi_scale, mask_features, *args, **kwargs):
        seen["mask_features"] = mask_features
        return original(self, multi_scale, mask_features, *args, **kwargs)

    monkeypatch.setattr(type(model.transformer_module), "forward", spy)
    with torch.no_grad():
        model(batch)
    monkeypatch.setattr(type(model.transformer_module), "forward", original)
    return seen["mask_features"]


# ------------------------------------------------------------------------------------------
def test_clip_visual_tokens_from_a_hub_cache(offline, monkeypatch):
    from transformers import CLIPModel

    torch.manual_seed(0)
    model = SSPModel(clip_config(offline, pre_mask=True))
    clip = model.text_module.clip
    # the vision tower of the CLIPModel in the cache, frozen, in eval mode, not stored
    snapshot = model.resolved_weights["model.clip_model"]["path"]
    reference = CLIPModel.from_pretrained(snapshot).vision_model
    assert torch.equal(clip.model.get_input_embeddings().weight, reference.embeddings.patch_embedding.weight)
    assert not any(p.requires_grad for p in clip.parameters()) and not clip.model.training
    assert not any(".clip." in k or ".bert." in k for k in model.state_dict())
    assert not SSPModel(clip_config(offline, pre_mask=True)).load_state_dict(model.state_dict()).missing_keys

    # what was resolved: the hub repository at its commit, with every file's sha256
    record = model.resolved_weights["model.clip_model"]
    assert record["source"] == "hub" and record["repo_id"] == CLIP_REPO
    assert record["revision"] == offline["clip"].split("@")[1]
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(record["files"])
    assert model.resolved_weights["model.text_model"]["spec"] == offline["bert"]

    # CLIP reads the pre-masked frame (the model's visual input) at its own input size
    seen = {}
    original = type(clip).forward

    def spy(self, frames):
        seen["frames"] = frames
        tokens = original(self, frames)
        seen["tokens"] = tokens
        return tokens

    monkeypatch.setattr(type(clip), "forward", spy)
    batch = make_batch(1)
    output = model(batch)
    assert torch.equal(seen["frames"], batch["frames"] * output.premask[:, None])
    assert seen["tokens"].shape == (2, (32 // 8) ** 2, 32)  # stand-in: 32 px, 8 px patches, 32 wide

    # it trains: the projection of the CLIP tokens gets a gradient through the masks
    output.mask_logits.sum().backward()
    assert model.text_module.visual_in.weight.grad.abs().sum() > 0


def test_clip_missing_from_the_cache_is_a_data_error_naming_it(offline):
    spec = "openai/clip-vit-large-patch14@" + "0" * 40
    with pytest.raises(DataError, match="model.clip_model"):
        SSPModel(clip_config({**offline, "clip": spec}))
    with pytest.raises(SSPError, match="clip_model"):
        SSPConfig.tiny(text="vta", text_visual_tokens="clip")


@pytest.mark.parametrize("tokens", ["clip", "pixel_decoder"])
def test_refined_text_reaches_the_mask_features(tokens, offline, monkeypatch):
    """Pass 2's text positions (T') are what the pixels attend to; the gradient of the mask
    logits reaches the text projection; other sounding nouns (A2) give other mask features
    and other masks."""
    torch.manual_seed(0)
    config = clip_config(offline, text_visual_tokens=tokens)
    model = SSPModel(config).eval()
    vta = model.text_module
    batch = make_batch(1)

    passes, read = [], {}
    encode, to_pixels = TextEncoder.encode, TextToPixels.forward

    def spy_encode(self, *args):
        out = encode(self, *args)
        passes.append(out)
        return out

    def spy_to_pixels(self, mask_features, multi_scale, text, text_mask):
        read["text"] = text
        return to_pixels(self, mask_features, multi_scale, text, text_mask)

    monkeypatch.setattr(TextEncoder, "encode", spy_encode)
    monkeypatch.setattr(TextToPixels, "forward", spy_to_pixels)
    output = model(batch)
    assert len(passes) == 2  # BERT twice: fusion, then refinement
    num_visual = 16  # CLIP stand-in 4×4 patches; pixel decoder pooled to text_grid² = 4²
    refined = passes[1][:, num_visual:]
    assert torch.allclose(read["text"], vta.text_out(refined))
    assert not torch.allclose(passes[1][:, num_visual:], passes[0][:, num_visual:])  # pass 2 changed the text

    output.mask_logits.sum().backward()
    assert vta.text_out.weight.grad.abs().sum() > 0 and vta.visual_in.weight.grad.abs().sum() > 0
    monkeypatch.setattr(TextEncoder, "encode", encode)
    monkeypatch.setattr(TextToPixels, "forward", to_pixels)

    other = {**batch, "prompt_a2": [["dog", "car"]] * 2}
    assert not torch.allclose(
        mask_features_seen(model, batch, monkeypatch), mask_features_seen(model, other, monkeypatch)
    )
    with torch.no_grad():
        assert not torch.allclose(model(batch).mask_logits, model(other).mask_logits)


def test_residual_injection_keeps_the_former_vta(tiny_text_model, monkeypatch):
    """text_injection="residual": pass 2's visual positions added to the three decoder maps
    (the former behaviour, its parameter names kept); the mask features stay text-free."""
    torch.manual_seed(0)
    model = SSPModel(tiny_config(1, tiny_text_model, text="vta", text_injection="residual")).eval()
    assert {"visual_in", "visual_out"} <= {n for n, _ in model.text_module.named_children()}
    assert not hasattr(model.text_module, "to_pixels")
    batch = make_batch(1)
    other = {**batch, "prompt_a2": [["dog", "car"]] * 2}
    assert torch.equal(mask_features_seen(model, batch, monkeypatch), mask_features_seen(model, other, monkeypatch))
    with torch.no_grad():
        assert not torch.allclose(model(batch).mask_logits, model(other).mask_logits)  # via the decoder maps


@pytest.mark.parametrize("injection", ["cross_attention", "residual"])
def test_att_uses_the_same_injection_without_alignment(injection, tiny_text_model, monkeypatch):
    torch.manual_seed(0)
    model = SSPModel(tiny_config(1, tiny_text_model, text="att", text_injection=injection)).eval()
    calls = []
    encode = TextEncoder.encode
    monkeypatch.setattr(TextEncoder, "encode", lambda self, *a: calls.append(a[0].shape) or encode(self, *a))
    batch = make_batch(1)
    other = {**batch, "prompt_a2": [["dog", "car"]] * 2}
    first, second = mask_features_seen(model, batch, monkeypatch), mask_features_seen(model, other, monkeypatch)
    assert torch.equal(first, second) == (injection == "residual")
    assert len(calls) == 2  # BERT over the text alone, once per distinct prompt (cached when frozen)


def test_paper_preset_components_and_presets_by_params():
    from ssp.engine.train import build_model_config
    from ssp.params import ModelParams, load_params

    profile = load_params(Path(__file__).resolve().parents[2] / "params.yaml", profile="paper").model
    paper = build_model_config(profile, 2, {"text": "vta"})
    assert paper.text_model.startswith("google-bert/bert-base-uncased@")  # pinned revisions
    assert paper.clip_model.startswith("openai/clip-vit-base-patch16@")
    # the paper preset names no weights itself: without the profile's, each is an error naming it
    unnamed = ModelParams(size="paper", mask2former_weights="m2f", vggish_weights="vggish.pth")
    with pytest.raises(SSPError, match="needs clip_model"):
        build_model_config(unnamed, 2, {"text": "vta"})
    with pytest.raises(SSPError, match=r"none are given for model.text_model \(BERT-base"):
        build_model_config(dataclasses.replace(unnamed, clip_model="clip"), 2, {"text": "vta"})
    paper = build_model_config(ModelParams(size="paper", allow_random_init=True, clip_model="clip"), 2, {"text": "vta"})
    assert (paper.text_visual_tokens, paper.text_injection) == ("clip", "cross_attention")
    assert (paper.post_mask_form, paper.stepping_stone_test) == ("mask", "binary")
    tiny = build_model_config(ModelParams(), 2, {})
    assert (tiny.text_model, tiny.clip_model, tiny.text_visual_tokens) == (None, None, "pixel_decoder")
    assert (tiny.text_injection, tiny.post_mask_form, tiny.stepping_stone_test) == (
        "cross_attention",
        "recall",
        "binary",
    )
    chosen = build_model_config(ModelParams(post_mask_form="recall", text_visual_tokens="pixel_decoder"), 1, {})
    assert (chosen.post_mask_form, chosen.text_visual_tokens) == ("recall", "pixel_decoder")
