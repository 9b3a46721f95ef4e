"""AAVS's training recipe on the model (ssp.models.adapters) and Mask2Former/AAVS weights by
hub id, folder or file (ssp.models.weights), on reduced models (fractions of a second each)."""

from __future__ import annotations

import pytest
import torch

from ssp.errors import DataError, SSPError
from ssp.models import SSPConfig, SSPModel
from ssp.models.adapters import AAVS_TRAINABLE, apply_recipe, reinit_swin_adapters, start_phase2
from ssp.models.config import HF_SWIN_BACKBONE, PAPER_RECIPE
from ssp.models.weights import architecture_from_mask2former_config, resolve_mask2former
from tests.models.helpers import make_batch
from tests.standins import mask2former_standin

SMALL_SWIN = {"embed_dim": 32, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 8], "window_size": 4}


def recipe_config(stage: int, **overrides) -> SSPConfig:
    """The tiny model with the Hugging Face Swin and the paper preset's recipe."""
    base = dict(backbone=HF_SWIN_BACKBONE, backbone_kwargs={}, hf_swin=SMALL_SWIN, num_points=64, **PAPER_RECIPE)
    return SSPConfig.tiny(stage, **{**base, **overrides})


def trainable(model: SSPModel) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """An offline hub cache holding the reduced Mask2Former stand-in; yields its spec."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return mask2former_standin(tmp_path / "hub")


def test_the_demo_model_has_no_recipe():
    for stage in (1, 2):
        config = SSPConfig.tiny(stage)
        assert (config.freeze_pretrained, config.swin_adapters, config.decoder_adapters) == (False, False, "none")
        assert config.drop_path_rate is None
        model = SSPModel(config)
        assert all(p.requires_grad for p in model.parameters())
        assert not any(".swin_adapt_" in n or ".avs_adapt." in n for n, _ in model.named_parameters())
    paper = SSPConfig.paper(1, allow_random_init=True)
    assert {k: getattr(paper, k) for k in PAPER_RECIPE} == PAPER_RECIPE
    assert PAPER_RECIPE == {
        "freeze_pretrained": True,
        "swin_adapters": True,
        "decoder_adapters": "replace",
        "drop_path_rate": 0.3,
    }
    with pytest.raises(SSPError, match="decoder_adapters"):
        SSPConfig.tiny(1, decoder_adapters="lora")
    with pytest.raises(SSPError, match="swin_adapters needs"):
        SSPConfig.tiny(1, swin_adapters=True)  # a timm Swin has no place for them


@pytest.mark.parametrize("stage", [1, 2])
def test_which_parameters_train_in_each_phase(stage):
    torch.manual_seed(0)
    model = SSPModel(recipe_config(stage))
    names = [n for n, _ in model.named_parameters()]
    swin = {n for n in names if ".swin_adapt_" in n}
    decoder = {n for n in names if ".avs_adapt." in n}
    # one adapter (2 Linear = 4 tensors) per Swin attention and MLP, per pixel-decoder encoder
    # layer and per masked-attention decoder layer
    assert len(swin) == 4 * 2 * sum(SMALL_SWIN["depths"])
    assert len(decoder) == 4 * (model.config.encoder_layers + model.config.decoder_layers - 1)
    drop = [m.drop_path for m in model.pixel_level_module.encoder.modules() if hasattr(m, "drop_path")]
    assert len(drop) == sum(SMALL_SWIN["depths"]) and all(d.drop_prob == 0.3 for d in drop)  # AAVS: every block

    fragments = AAVS_TRAINABLE[stage]
    expected = {n for n in names if n.startswith(("audio_encoder.", "audio_projection."))}
    expected |= {n for n in names if any(f in n for f in fragments)}
    assert trainable(model) == expected
    assert decoder <= expected and not swin & expected
    assert ("transformer_module.queries_features.weight" in expected) == (stage == 1)  # AAVS's avss list omits it
    if stage == 2:
        assert {"transformer_module.audio_embed.weight", "transformer_module.silence_embed.weight"} <= expected
    assert not any(n.startswith("pixel_level_module.encoder.swin.") for n in expected)
    assert all(torch.count_nonzero(p) == 0 for n, p in model.named_parameters() if n in swin)  # phase 1: identity

    start_phase2(model, model.config, torch.Generator().manual_seed(0))
    assert trainable(model) == expected | swin
    assert all(torch.count_nonzero(p) > 0 for n, p in model.named_parameters() if n in swin and n.endswith("weight"))
    apply_recipe(model, model.config, phase=1)
    assert trainable(model) == expected

    # not frozen: everything trains, the Swin adapters still wait for phase 2
    loose = SSPModel(recipe_config(stage, freeze_pretrained=False))
    assert trainable(loose) == {n for n, _ in loose.named_parameters()} - swin
    # an explicit list replaces AAVS's
    custom = SSPModel(recipe_config(stage, trainable_pretrained=["class_predictor"]))
    assert {n for n in trainable(custom) if n.startswith(("pixel_level", "transformer", "class"))} == {
        "class_predictor.weight",
        "class_predictor.bias",
    }


def test_adapters_at_init_leave_the_frozen_pretrained_model_unchanged():
    torch.manual_seed(0)
    plain = SSPModel(recipe_config(2, swin_adapters=False, decoder_adapters="none")).eval()
    batch = make_batch(2)

    def output(**recipe) -> torch.Tensor:
        model = SSPModel(recipe_config(2, **recipe)).eval()
        missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
        assert not unexpected and all(".swin_adapt_" in k or ".avs_adapt." in k for k in missing)
        with torch.no_grad():
            return model, model(batch).mask_logits

    with torch.no_grad():
        reference = plain(batch).mask_logits
    for recipe in ({"decoder_adapters": "residual"}, {"decoder_adapters": "none"}):
        model, out = output(swin_adapters=True, **recipe)
        assert torch.equal(out, reference), recipe  # zero Swin adapters, zero-init residual adapters
    # AAVS's phase-2 re-init and its "replace" decoder adapters do change the function
    reinit_swin_adapters(model, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(model(batch).mask_logits, reference)
    _, replaced = output(swin_adapters=True, decoder_adapters="replace")
    assert not torch.allclose(replaced, reference)


def test_hub_standin_loads_by_id_with_its_architecture(hub_cache):
    from transformers import Mask2FormerForUniversalSegmentation

    resolved = resolve_mask2former(hub_cache)
    architecture = architecture_from_mask2former_config(resolved.path)
    assert architecture["hf_swin"] == {
        "embed_dim": 32,
        "depths": [1, 1, 1, 1],
        "num_heads": [1, 2, 4, 8],
        "window_size": 4,
    }
    assert (architecture["hidden_dim"], architecture["encoder_layers"], architecture["decoder_layers"]) == (64, 1, 3)
    assert (architecture["encoder_feedforward_dim"], architecture["dim_feedforward"]) == (128, 128)

    # the tiny preset (timm Swin, other widths) becomes the stand-in's architecture
    model = SSPModel(SSPConfig.tiny(1, mask2former_weights=hub_cache)).eval()
    assert model.config.backbone == HF_SWIN_BACKBONE
    assert {k: getattr(model.config, k) for k in architecture} == architecture
    record = model.pretrained_weights()["model.mask2former_weights"]
    assert record["source"] == "hub" and record["revision"] == hub_cache.split("@")[1]
    assert set(record["files"]) >= {"config.json", "model.safetensors"}

    reference = Mask2FormerForUniversalSegmentation.from_pretrained(str(resolved.path)).eval()
    theirs = reference.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith(("pixel_level_module.", "transformer_module.")) and "queries" not in key:
            assert torch.equal(value, theirs["model." + key]), key
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = model.pixel_level_module(pixels)
        upstream = reference.model.pixel_level_module(pixels)
    assert torch.allclose(ours[0], upstream.decoder_last_hidden_state, atol=1e-6)

    # the snapshot folder as a local path: same weights, recorded as local
    local = SSPModel(SSPConfig.tiny(1, mask2former_weights=str(resolved.path)))
    assert local.pretrained_weights()["model.mask2former_weights"]["source"] == "local"
    key = "pixel_level_module.encoder.swin.encoder.layers.0.blocks.0.attention.q_proj.weight"
    assert torch.equal(local.state_dict()[key], model.state_dict()[key])


SWIN_TO_AAVS = (  # the documented key map (ssp/models/weights.py), written out in reverse
    ("attention.q_proj.", "attention.self.query."),
    ("attention.k_proj.", "attention.self.key."),
    ("attention.v_proj.", "attention.self.value."),
    ("attention.relative_position_bias.", "attention.self."),
    ("attention.o_proj.", "attention.output.dense."),
    ("attention.swin_adapt_1.", "attention.output.swin_adapt_1."),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
    ("mlp.swin_adapt_3.", "output.swin_adapt_3."),
)


def aavs_state(model: SSPModel) -> dict[str, torch.Tensor]:
    """``model`` as AAVS's AdaptiveAVS.state_dict() (transformers 4.35 names) would hold it."""
    state = {"model.criterion.empty_weight": torch.ones(model.config.num_labels + 1)}
    for key, value in model.state_dict().items():
        if key.startswith("audio_projection."):
            state["audio_proj." + key.removeprefix("audio_projection.")] = value.clone()
        elif key.startswith("class_predictor."):
            state["model." + key] = value.clone()
        elif key.startswith(("pixel_level_module.", "transformer_module.")):
            if key.startswith("pixel_level_module.encoder.swin.layernorm."):
                continue  # the current SwinModel's unused final norm: not in 4.35's SwinBackbone
            if key.startswith("pixel_level_module.encoder.swin."):
                key = key.replace("encoder.swin.", "encoder.", 1)
                for ours, theirs in SWIN_TO_AAVS:
                    key = key.replace(ours, theirs)
                if key.endswith("relative_position_bias_table"):
                    index = key.replace("relative_position_bias_table", "relative_position_index")
                    state["model.model." + index] = torch.zeros(4, dtype=torch.long)  # 4.35's buffer: dropped
            state["model.model." + key] = value.clone()
    return state


def test_aavs_checkpoint_loads_by_the_documented_key_map(tmp_path):
    torch.manual_seed(3)
    source = SSPModel(recipe_config(2))
    start_phase2(source, source.config, torch.Generator().manual_seed(1))  # non-zero Swin adapters
    state = aavs_state(source)
    assert any(".attention.output.swin_adapt_1.0.weight" in k for k in state)
    path = tmp_path / "f_miou_best.pth"
    torch.save(state, path)

    torch.manual_seed(4)
    target = SSPModel(recipe_config(2, mask2former_weights=str(path)))
    mine = target.state_dict()
    for key, value in source.state_dict().items():
        # AAVS reads precomputed VGGish features; 4.35's Swin has no final norm
        if not key.startswith(("audio_encoder.", "pixel_level_module.encoder.swin.layernorm.")):
            assert torch.equal(mine[key], value), key
    assert list(target.pretrained_weights()["model.mask2former_weights"]["files"]) == ["f_miou_best.pth"]

    # a key the model does not have is an error naming the file
    bad = tmp_path / "extra.pth"
    torch.save({**state, "model.model.transformer_module.surprise.weight": torch.zeros(1)}, bad)
    with pytest.raises(DataError, match=r"extra\.pth.*surprise"):
        SSPModel(recipe_config(2, mask2former_weights=str(bad)))
    # AAVS's adapters into a model without them: an error saying which knobs
    with pytest.raises(DataError, match=r"f_miou_best\.pth.*swin_adapters"):
        SSPModel(recipe_config(2, swin_adapters=False, decoder_adapters="none", mask2former_weights=str(path)))
