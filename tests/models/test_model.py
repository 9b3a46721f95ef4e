"""SSP model: shapes, gradients in every Table 2 setting, no GT at eval, eq. 2, audio-aware
queries, stage-2 injection, the transformers seam, weight loading, the paper preset."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from ssp.errors import DataError, SSPError
from ssp.models import SSPConfig, SSPModel
from ssp.models.audio_queries import audio_aware_queries
from ssp.models.premask import apply_pre_mask, post_mask_target, pre_mask
from ssp.paper import TABLE2
from tests.models.helpers import SIZE, make_batch, tiny_config


class NoGroundTruth(dict):
    """A batch whose "masks" cannot be read."""

    def __getitem__(self, key):
        if key == "masks":
            raise AssertionError("the model read the GT masks in eval mode")
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key == "masks":
            raise AssertionError("the model read the GT masks in eval mode")
        return super().get(key, default)


# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("row", [*TABLE2, "full/head"])  # full/head: post-mask on its own head
def test_every_ablation_row_shapes_and_gradients(stage, row, tiny_text_model):
    from ssp.models.criterion import SSPCriterion

    torch.manual_seed(0)
    switches = TABLE2[row.split("/")[0]].switches
    form = "head" if row.endswith("/head") else "recall"
    config = tiny_config(stage, tiny_text_model, **switches, post_mask_form=form)
    model, criterion = SSPModel(config), SSPCriterion(config)
    batch = make_batch(stage)
    n, q = 2, config.num_queries

    output = model(batch)
    assert output.class_logits.shape == (n, q, config.num_labels + 1)
    assert output.mask_logits.shape == (n, q, SIZE // 4, SIZE // 4)
    assert len(output.aux_outputs) == config.decoder_layers - 1
    assert (output.premask is not None) == config.pre_mask
    assert (output.stepping_stone is not None) == (stage == 2)
    assert (output.post_mask_logits is not None) == (config.post_mask and config.post_mask_form == "head")

    # Upstream Mask2Former zero-initialises the deformable attention's offset and weight
    # projections, so at step 0 the pixel decoder's level embedding has an exactly-zero
    # gradient. One optimiser step first; then every trainable parameter must get one.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion(output, batch)["loss"].backward()
    optimizer.step()
    optimizer.zero_grad()
    criterion(model(make_batch(stage, seed=1)), make_batch(stage, seed=1))["loss"].backward()
    no_gradient = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0)
    ]
    assert no_gradient == []

    # Parts that a configuration does not use are not created in it.
    names = [name for name, _ in model.named_parameters()]
    assert any(n.startswith("text_module.") for n in names) == (config.text != "none")
    assert any("silence_embed" in n for n in names) == (stage == 2)
    if config.text != "none":
        assert not any(p.requires_grad for p in model.text_module.text_encoder.parameters())  # frozen

    model.eval()
    prediction = model.predict(NoGroundTruth(batch))
    if stage == 1:
        assert prediction.shape == (n, SIZE, SIZE)
    else:
        assert prediction.shape == (n, config.num_classes, SIZE, SIZE)
        assert (prediction >= 0).all() and torch.isfinite(prediction).all()


@pytest.mark.parametrize("stage", [1, 2])
def test_eval_never_reads_ground_truth(stage, tiny_text_model):
    model = SSPModel(tiny_config(stage, tiny_text_model, **TABLE2["full"].switches)).eval()
    batch = make_batch(stage)
    batch.pop("masks")
    guarded = NoGroundTruth(batch)
    guarded["masks"] = torch.zeros(2, SIZE, SIZE, dtype=torch.long)  # present but unreadable
    output = model(guarded)
    assert output.class_logits.isfinite().all()
    model.predict(guarded)
    if stage == 2:
        # the stepping stone at eval is stage 1's prediction (binary)
        assert torch.equal(output.stepping_stone, (batch["stage1_mask"] > 0.5).float())
        del guarded["stage1_mask"]
        with pytest.raises(SSPError, match="stage1_mask"):
            model(guarded)


def test_training_mode_uses_ground_truth_stepping_stone():
    model = SSPModel(tiny_config(2)).train()
    batch = make_batch(2)
    output = model(batch)
    assert torch.equal(output.stepping_stone, (batch["masks"] > 0).float())


def test_training_stone_from_stage1_carries_its_errors_and_never_reads_ground_truth():
    """stepping_stone_train='stage1': training sees stage 1's mask (> 0.5), as at test, so the
    stone can be wrong in training too; without stage-1 masks in the batch it says so."""
    model = SSPModel(tiny_config(2, stepping_stone_train="stage1")).train()
    batch = make_batch(2)
    batch["stage1_mask"][0, :20] = 0.0  # stage 1 missed part of the object
    batch["stage1_mask"][1, -4:] = 0.7  # ... and added a silent neighbour
    stone = model(batch).stepping_stone
    assert torch.equal(stone, (batch["stage1_mask"] > 0.5).float())
    assert not torch.equal(stone, (batch["masks"] > 0).float())
    del batch["stage1_mask"]
    with pytest.raises(SSPError, match="stepping_stone_train='stage1'.*stage1_mask"):
        model(batch)
    with pytest.raises(SSPError, match="stepping_stone_train"):
        tiny_config(2, stepping_stone_train="oracle")


@pytest.mark.parametrize("form", ["binary", "soft"])
def test_stepping_stone_at_test_binary_or_soft(form, monkeypatch):
    """binary (both presets): stage 1's probability > 0.5, as AAVS's saved 0/255 masks and as
    the GT the model trains with; soft: the probability as is. The stone reaches the mask
    features, the positional prompts and the first attention mask alike."""
    model = SSPModel(tiny_config(2, stepping_stone_test=form)).eval()
    batch = make_batch(2)
    probability = torch.linspace(0, 1, SIZE)[None, None, :].expand(2, SIZE, SIZE).clone()  # 0 .. 1 across columns
    batch["stage1_mask"] = probability
    seen = {}
    original = type(model.transformer_module).forward

    def spy(self, multi_scale, mask_features, audio, stone, **kwargs):
        seen["stone"] = stone
        return original(self, multi_scale, mask_features, audio, stone, **kwargs)

    monkeypatch.setattr(type(model.transformer_module), "forward", spy)
    with torch.no_grad():
        output = model(batch)
    expected = (probability > 0.5).float() if form == "binary" else probability
    assert torch.equal(output.stepping_stone, expected) and torch.equal(seen["stone"], expected)
    assert set(output.stepping_stone.unique().tolist()) == (
        {0.0, 1.0} if form == "binary" else set(probability.unique().tolist())
    )
    with pytest.raises(SSPError, match="stepping_stone_test"):
        tiny_config(2, stepping_stone_test="argmax")


def test_missing_inputs_are_clear_errors(tiny_text_model):
    model = SSPModel(tiny_config(1, tiny_text_model, pre_mask=True, text="vta"))
    batch = make_batch(1)
    del batch["prompt_a1"]
    with pytest.raises(SSPError, match="prompt_a1"):
        model(batch)
    batch = make_batch(1)
    del batch["flow_mask"]
    with pytest.raises(SSPError, match="flow_mask"):
        model(batch)


# ------------------------------------------------------------------------------------------
def test_pre_mask_equation_2_by_hand():
    flow = torch.tensor([[1, 1, 0, 0]])
    gt = torch.tensor([[1, 0, 1, 0]])
    # M_O ∩ M_GT -> 1; the rest of M_O ∪ M_GT -> 0.5; elsewhere 0
    assert pre_mask(flow, gt).tolist() == [[1.0, 0.5, 0.5, 0.0]]
    assert post_mask_target(flow, gt).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    frames = torch.ones(1, 3, 1, 4) * 0.8
    assert torch.allclose(apply_pre_mask(frames, pre_mask(flow, gt)[None]), torch.tensor([0.8, 0.4, 0.4, 0.0]))


def test_pre_mask_in_the_model_train_and_eval_sources():
    batch = make_batch(1)
    model = SSPModel(tiny_config(1, pre_mask=True))
    flow, gt = batch["flow_mask"], batch["masks"]
    assert torch.equal(model.train()(batch).premask, pre_mask(flow, gt))
    model.eval()
    stage1 = batch["stage1_mask"] > 0.5
    assert torch.equal(model(batch).premask, pre_mask(flow, stage1))  # default: stage 1's prediction
    del batch["stage1_mask"]  # a stage-1 model without an earlier prediction: the whole frame
    assert torch.equal(model(batch).premask, pre_mask(flow, torch.ones_like(flow)))
    model.config.premask_test_source = "flow"
    assert torch.equal(model(batch).premask, flow.float())


def test_pre_mask_trained_on_stage1_masks_never_reads_ground_truth():
    batch = make_batch(2)
    batch["stage1_mask"][0, :20] = 0.0  # stage 1 missed part of the object: differs from the GT
    model = SSPModel(tiny_config(2, pre_mask=True, premask_train_source="stage1")).train()
    flow, stage1 = batch["flow_mask"], batch["stage1_mask"] > 0.5
    premask = model(batch).premask
    assert torch.equal(premask, pre_mask(flow, stage1))
    assert not torch.equal(premask, pre_mask(flow, batch["masks"]))
    del batch["stage1_mask"]
    with pytest.raises(SSPError, match="premask_train_source='stage1'.*stage1_mask"):
        model(batch)
    with pytest.raises(SSPError, match="premask_train_source"):
        tiny_config(2, pre_mask=True, premask_train_source="oracle")


def test_audio_aware_queries_cosine_weighting_by_hand():
    features = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    embeddings = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0], [-1.0, 0.0, 0.0]])
    audio = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # two frames
    queries = audio_aware_queries(features, embeddings, audio)  # Q×N×D
    assert queries.shape == (3, 2, 3)
    # frame 0: cos = 1, 0, -1
    assert torch.allclose(queries[:, 0], torch.tensor([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-3.0, 0.0, 1.0]]))
    # frame 1: cos = 0, 1, 0
    assert torch.allclose(queries[:, 1], torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]))


def test_stepping_stone_injection_by_hand(monkeypatch):
    from ssp.models.mask2former import SteppingStoneMaskedAttentionDecoder

    model = SSPModel(tiny_config(2)).eval()
    module = model.transformer_module
    stone = torch.zeros(1, SIZE, SIZE)
    stone[:, :, SIZE // 2 :] = 1.0
    # positional prompts: silence where <=0.4, audio where >=0.6, uncertain in between
    prompt = module._stone_prompt(torch.tensor([[[0.2, 0.5], [0.8, 0.4]]]), (2, 2))  # HW×N×D
    expected = torch.stack(
        [
            module.silence_embed.weight[0],
            module.uncertain_embed.weight[0],
            module.audio_embed.weight[0],
            module.silence_embed.weight[0],
        ]
    )
    assert torch.allclose(prompt[:, 0], expected)

    seen = {}
    original = SteppingStoneMaskedAttentionDecoder.forward

    def spy(self, *args, **kwargs):
        seen["first"] = kwargs["first_attention_mask"]
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SteppingStoneMaskedAttentionDecoder, "forward", spy)
    batch = make_batch(2, n=1)
    batch["stage1_mask"] = stone
    model(batch)
    first = seen["first"]  # (N*heads)×Q×HW at the 1/32 level (2×2): left column masked
    assert first.shape == (model.config.num_attention_heads, model.config.num_queries, 4)
    assert first[0, 0].tolist() == [True, False, True, False]
    assert (first == first[:1, :1]).all()


# ------------------------------------------------------------------------------------------
def test_transformers_seam():
    """Fails loudly if the transformers internals the subclasses rely on change."""
    import transformers
    from transformers.models.mask2former import modeling_mask2former as upstream

    from ssp.models.mask2former import (
        TRANSFORMERS_VERSION,
        AudioAwareTransformerModule,
        build_mask2former_config,
        init_mask2former_weights,
    )

    assert transformers.__version__ == TRANSFORMERS_VERSION, "re-check ssp/models/mask2former.py against it"
    layer_params = list(inspect.signature(upstream.Mask2FormerMaskedAttentionDecoderLayer.forward).parameters)
    assert layer_params[:7] == [
        "self",
        "hidden_states",
        "level_index",
        "attention_mask",
        "position_embeddings",
        "query_position_embeddings",
        "encoder_hidden_states",
    ]
    assert "encoder_attention_mask" in layer_params
    assert list(inspect.signature(upstream.Mask2FormerMaskPredictor.forward).parameters) == [
        "self",
        "outputs",
        "pixel_embeddings",
        "attention_mask_target_size",
    ]
    assert list(inspect.signature(upstream.Mask2FormerSinePositionEmbedding.forward).parameters) == [
        "self",
        "shape",
        "device",
        "dtype",
        "mask",
    ]

    config = SSPConfig.tiny(stage=1)
    m2f = build_mask2former_config(config)
    torch.manual_seed(0)
    ours = AudioAwareTransformerModule(config.hidden_dim, m2f, stepping_stone=False)
    init_mask2former_weights(ours, m2f)
    theirs = upstream.Mask2FormerTransformerModule(config.hidden_dim, m2f)
    for attribute in (
        "position_embedder",
        "queries_embedder",
        "queries_features",
        "input_projections",
        "level_embed",
        "decoder",
        "num_feature_levels",
    ):
        assert hasattr(theirs, attribute)
    for attribute in ("layers", "layernorm", "mask_predictor", "num_feature_levels", "layerdrop"):
        assert hasattr(theirs.decoder, attribute)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())

    features = [torch.randn(2, config.hidden_dim, s, s) for s in (2, 4, 8)]
    mask_features = torch.randn(2, config.hidden_dim, 16, 16)
    with torch.no_grad():
        a = ours(features, mask_features)
        b = theirs(features, mask_features)
    assert len(a.masks_queries_logits) == len(b.masks_queries_logits) == config.decoder_layers
    for x, y in zip(a.masks_queries_logits, b.masks_queries_logits):
        assert torch.allclose(x, y, atol=1e-5)
    for x, y in zip(a.intermediate_hidden_states, b.intermediate_hidden_states):
        assert torch.allclose(x, y, atol=1e-5)
    assert torch.allclose(a.last_hidden_state, b.last_hidden_state, atol=1e-5)

    # The pixel decoder output fields used by PixelLevelModule.
    fields = upstream.Mask2FormerPixelDecoderOutput.__dataclass_fields__
    assert "mask_features" in fields and "multi_scale_features" in fields
    assert set(inspect.signature(upstream.Mask2FormerLoss.forward).parameters) >= {
        "masks_queries_logits",
        "class_queries_logits",
        "mask_labels",
        "class_labels",
        "auxiliary_predictions",
    }


def test_paper_preset_and_hf_parameter_names(tmp_path):
    """The paper preset's plumbing (HF Swin, 256-d, 10 predictions, 30/100 queries) at a
    reduced Swin and input, and that its names match Hugging Face Mask2Former's."""
    from transformers import Mask2FormerModel, SwinConfig

    for stage, queries in ((1, 30), (2, 100)):
        config = SSPConfig.paper(stage=stage, allow_random_init=True)
        sizes = (config.image_size, config.hidden_dim, config.decoder_layers, config.num_queries)
        assert sizes == (384, 256, 10, queries)
        assert config.audio_encoder == "vggish" and config.text_layers is None
    small_swin = {"embed_dim": 32, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8], "window_size": 4}
    config = SSPConfig.paper(stage=2, image_size=128, hf_swin=small_swin, audio_encoder="tiny", allow_random_init=True)
    model = SSPModel(config).eval()
    batch = make_batch(2, n=1, size=128)
    with torch.no_grad():
        output = model(batch)
    assert output.class_logits.shape == (1, 100, 72)
    assert output.mask_logits.shape == (1, 100, 32, 32)
    assert len(output.aux_outputs) == 9

    from ssp.models.mask2former import build_mask2former_config

    m2f = build_mask2former_config(config)
    stages = ["stage1", "stage2", "stage3", "stage4"]
    m2f.backbone_config = SwinConfig(image_size=128, out_features=stages, **small_swin)
    reference = set(Mask2FormerModel(m2f).state_dict())
    ours = {k for k in model.state_dict() if k.startswith(("pixel_level_module.", "transformer_module."))}
    additions = {
        k
        for k in ours
        if "_embed.weight" in k
        and k.split(".")[1] in ("silence_embed", "uncertain_embed", "audio_embed")
        or ".swin_adapt_" in k  # AAVS's adapters (ssp/models/adapters.py), under AAVS's names
        or ".avs_adapt." in k
    }
    assert ours - additions == reference

    # A Hugging Face Mask2Former checkpoint (AVSS head: 71 classes, 100 queries) loads as is.
    from safetensors.torch import save_file
    from transformers import Mask2FormerForUniversalSegmentation

    from ssp.models.weights import load_pretrained

    m2f.num_labels = 71
    checkpoint = Mask2FormerForUniversalSegmentation(m2f)
    path = tmp_path / "mask2former.safetensors"
    save_file({k: v.contiguous() for k, v in checkpoint.state_dict().items()}, str(path))
    skipped = load_pretrained(model, {"mask2former_weights": path})["mask2former_weights"]
    assert skipped == []
    loaded = model.state_dict()
    for key, value in checkpoint.state_dict().items():
        if not key.startswith("criterion."):
            assert torch.equal(loaded[key.removeprefix("model.")], value), key


def test_vggish_audio_encoder_is_wired():
    from ssp.models.vggish import VGGish

    model = SSPModel(tiny_config(1, audio_encoder="vggish"))
    assert isinstance(model.audio_encoder, VGGish)
    output = model(make_batch(1, n=2))
    assert output.class_logits.shape[0] == 2


# ------------------------------------------------------------------------------------------
def hf_style_state(model: SSPModel) -> dict[str, torch.Tensor]:
    """The model's Mask2Former part named as in Mask2FormerForUniversalSegmentation."""
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(("pixel_level_module.", "transformer_module.")):
            state["model." + key] = value.clone()
        elif key.startswith("class_predictor."):
            state[key] = value.clone()
    return state


def test_load_pretrained_mask2former_checkpoint(tmp_path):
    from safetensors.torch import save_file

    from ssp.models.weights import load_pretrained

    torch.manual_seed(1)
    source = SSPModel(tiny_config(1))
    path = tmp_path / "m2f.safetensors"
    state = hf_style_state(source)
    state["criterion.empty_weight"] = torch.ones(2)
    save_file(state, str(path))

    torch.manual_seed(2)
    target = SSPModel(tiny_config(1, mask2former_weights=str(path)))
    for key, value in source.state_dict().items():
        if key.startswith(("pixel_level_module.", "transformer_module.", "class_predictor.")):
            assert torch.equal(target.state_dict()[key], value), key

    # Another task (stage 2: 72 class logits, 16 queries): those entries are skipped.
    other = SSPModel(tiny_config(2))
    skipped = load_pretrained(other, {"mask2former_weights": path})["mask2former_weights"]
    assert "class_predictor.weight" in skipped and "model.transformer_module.queries_features.weight" not in skipped
    assert "transformer_module.queries_features.weight" in skipped

    # A shape mismatch elsewhere names the file and the key.
    state["model.pixel_level_module.decoder.mask_projection.weight"] = torch.zeros(1, 1, 1, 1)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(DataError, match=r"bad\.safetensors.*mask_projection"):
        load_pretrained(SSPModel(tiny_config(1)), {"mask2former_weights": bad})

    # Not a checkpoint at all / a pickle that would run code: clear errors, nothing executed.
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="junk.pth"):
        load_pretrained(SSPModel(tiny_config(1)), {"mask2former_weights": junk})

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"x": Exploit()}, str(evil))
    with pytest.raises(DataError, match="evil.pth"):
        load_pretrained(SSPModel(tiny_config(1)), {"mask2former_weights": evil})
    assert not (tmp_path / "pwned").exists()


def test_config_round_trip_and_validation():
    config = SSPConfig.tiny(stage=2, **TABLE2["full"].switches)
    assert SSPConfig.from_dict(config.to_dict()) == config
    assert config.num_labels == 71 and SSPConfig.tiny(stage=1).num_labels == 1
    with pytest.raises(SSPError, match="text"):
        SSPConfig.tiny(text="bert")
    with pytest.raises(SSPError, match="unknown keys"):
        SSPConfig.from_dict({**config.to_dict(), "lr": 1})
    with pytest.raises(SSPError, match="post_mask_form"):
        SSPConfig.tiny(post_mask_form="both")
    # checkpoints saved before post_mask_form existed were trained with the head form
    older = {k: v for k, v in config.to_dict().items() if k != "post_mask_form"}
    assert config.post_mask_form == "recall" and SSPConfig.from_dict(older).post_mask_form == "head"
    # ... and before the paper-profile components: soft stones, the residual VTA output, and
    # the text model under its former name
    oldest = {k: v for k, v in older.items() if k not in ("stepping_stone_test", "text_injection", "text_model")}
    restored = SSPConfig.from_dict({**oldest, "text_model_path": "/models/bert"})
    assert (restored.stepping_stone_test, restored.text_injection, restored.text_model) == (
        "soft",
        "residual",
        "/models/bert",
    )
    for field, value in (("text_visual_tokens", "blip"), ("text_injection", "add"), ("post_mask_form", "dice")):
        with pytest.raises(SSPError, match=field):
            SSPConfig.tiny(**{field: value})
    assert set(TABLE2) == {"aavs", "pre_mask", "pre_mask_post_mask", "text_att", "text_vta", "pre_mask_vta", "full"}
    assert TABLE2["full"].switches == {"pre_mask": True, "text": "vta", "post_mask": True}


def test_pvt_v2_backbone_from_timm():
    config = tiny_config(1, backbone="pvt_v2_b0", backbone_kwargs={})
    model = SSPModel(config)
    assert model.pixel_level_module.encoder.channels == [32, 64, 160, 256]
    output = model(make_batch(1))
    assert output.mask_logits.shape == (2, config.num_queries, SIZE // 4, SIZE // 4)


@pytest.mark.parametrize("text", ["att", "vta"])
def test_trainable_text_model_gets_gradients(text, tiny_text_model):
    from ssp.models.criterion import SSPCriterion

    config = tiny_config(1, tiny_text_model, text=text, text_trainable=True)
    model, criterion = SSPModel(config), SSPCriterion(config)
    bert = model.text_module.text_encoder.bert
    assert all(p.requires_grad for p in bert.parameters()) and bert.training
    batch = make_batch(1)
    criterion(model(batch), batch)["loss"].backward()
    assert [n for n, p in bert.named_parameters() if p.grad is None or p.grad.abs().sum() == 0] == []


def test_timm_backbone_weights_from_a_local_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    from ssp.models.backbones import TimmBackbone

    source = timm.create_model("pvt_v2_b0", pretrained=False)
    path = tmp_path / "pvt_v2_b0.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = SSPModel(tiny_config(1, backbone="pvt_v2_b0", backbone_kwargs={}, backbone_weights=str(path)))
    loaded = model.pixel_level_module.encoder.body.state_dict()
    assert torch.equal(loaded["patch_embed.proj.weight"], source.state_dict()["patch_embed.proj.weight"])

    other = tmp_path / "pvt_v2_b1.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("pvt_v2_b1").state_dict().items()}, str(other))
    with pytest.raises(DataError, match="pvt_v2_b1.safetensors"):
        TimmBackbone("pvt_v2_b0", SIZE, weights=str(other))


def test_frozen_text_model_is_not_in_the_state_dict(tiny_text_model):
    config = tiny_config(1, tiny_text_model, text="vta")
    state = SSPModel(config).state_dict()
    assert not any(".bert." in k for k in state) and any(k.startswith("text_module.visual_in") for k in state)
    other = SSPModel(config)
    assert not other.load_state_dict(state, strict=True).missing_keys
    del state["text_module.visual_in.weight"]
    with pytest.raises(RuntimeError, match="visual_in"):
        other.load_state_dict(state, strict=True)
    trainable = tiny_config(1, tiny_text_model, text="vta", text_trainable=True)
    assert any(".bert." in k for k in SSPModel(trainable).state_dict())


def test_audio_pixel_similarity_starts_as_aavs_then_makes_the_mask_follow_the_audio():
    """audio_fusion="similarity" (bench/README.md, Probes): a fresh model computes exactly what
    AAVS does (the audio side starts at zero); once it has learned a match, another audio
    moves the masks, which AAVS's queries alone barely do (the probe: 0.01 % of pixels)."""
    aavs = SSPModel(tiny_config(1)).eval()
    matched = SSPModel(tiny_config(1, audio_fusion="similarity")).eval()
    missing, unexpected = matched.load_state_dict(aavs.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("audio_pixel_match.") for k in missing)
    batch = make_batch(1, n=2)
    swapped = {**batch, "logmel": batch["logmel"].flip(0)}  # each frame gets the other's audio
    with torch.no_grad():
        assert torch.allclose(matched(batch).mask_logits, aavs(batch).mask_logits, atol=1e-6)
        torch.manual_seed(0)
        torch.nn.init.normal_(matched.audio_pixel_match.audio.weight, std=1.0)
        moved = (matched(batch).mask_logits - matched(swapped).mask_logits).abs().mean()
        still = (aavs(batch).mask_logits - aavs(swapped).mask_logits).abs().mean()
    assert moved > 50 * still
    with pytest.raises(SSPError, match="audio_fusion"):
        SSPConfig.tiny(1, audio_fusion="film")


@pytest.mark.parametrize("stride", [2, 1])
def test_finer_mask_features_predict_at_their_stride_and_train(stride):
    """mask_stride (bench/README.md, Mask resolution): masks are predicted on a 1/stride grid
    from a conv stem on the image; every new part gets a gradient, and Mask2Former's 1/4
    (mask_stride 4) builds no extra module, so Mask2Former/AAVS checkpoints still load by name."""
    torch.manual_seed(0)
    model = SSPModel(tiny_config(1, mask_stride=stride))
    batch = make_batch(1, n=2)
    output = model(batch)
    side = SIZE // stride
    assert output.mask_logits.shape[-2:] == (side, side)
    assert all(masks.shape[-2:] == (side, side) for _, masks in output.aux_outputs)
    output.mask_logits.sum().backward()
    fine = dict(model.pixel_level_module.fine.named_parameters())
    assert fine and all(p.grad is not None and p.grad.abs().sum() > 0 for p in fine.values())
    assert SSPModel(tiny_config(1)).pixel_level_module.fine is None
    # not in any Mask2Former checkpoint: it trains under AAVS's frozen recipe (tests/engine/
    # test_recipe_phase.py loads a Mask2Former file into a model with it)
    frozen = SSPModel(tiny_config(1, mask_stride=stride, freeze_pretrained=True)).named_parameters()
    trains = {n: p.requires_grad for n, p in frozen if n.startswith("pixel_level_module.")}
    assert all(v for n, v in trains.items() if n.startswith("pixel_level_module.fine."))
    assert not any(v for n, v in trains.items() if n.startswith("pixel_level_module.encoder."))
    with pytest.raises(SSPError, match="mask_stride"):
        SSPConfig.tiny(1, mask_stride=8)


def test_class_code_readout_by_hand():
    """class_readout="codes": the object mass per pixel stays, the class codes re-split it."""
    from ssp.models.audio_queries import class_code_readout

    # one pixel, background + 2 object classes: s = (0.2, 0.5, 0.3); object mass 0.8
    scores = torch.tensor([0.2, 0.5, 0.3]).view(1, 3, 1, 1)
    # pixel codes softmax -> (0.25, 0.75); audio: class 1 sounds (sigmoid 0.5), class 2 more (0.9)
    pixel = torch.log(torch.tensor([0.25, 0.75])).view(1, 2, 1, 1)
    audio = torch.logit(torch.tensor([[0.5, 0.9]]))
    out = class_code_readout(scores, pixel, audio).flatten()
    r = torch.tensor([0.25 * 0.5, 0.75 * 0.9])
    weighted = torch.tensor([0.5, 0.3]) * r
    expected = torch.cat([torch.tensor([0.2]), 0.8 * weighted / weighted.sum()])
    torch.testing.assert_close(out, expected)
    assert out.argmax() == 2 and scores.flatten().argmax() == 1  # the codes flip the class

    # uniform codes keep the queries' split; codes at lower resolution are upsampled
    scores = torch.rand(2, 4, 8, 8)
    same = class_code_readout(scores, torch.zeros(2, 3, 4, 4), torch.zeros(2, 3))
    torch.testing.assert_close(same, scores)


def test_class_code_readout_in_the_model_changes_classes_not_the_foreground():
    """Same weights, two read-outs: background score and object mass are the same, so every
    binary number (1 - normalised background) is unchanged; only the class split moves."""
    torch.manual_seed(0)
    config = tiny_config(2, class_aux=3.0)
    model = SSPModel(config).eval()
    batch = make_batch(2)
    queries = model.predict(batch)
    model.config = SSPConfig.from_dict({**config.to_dict(), "class_readout": "codes"})
    codes = model.predict(batch)
    torch.testing.assert_close(codes[:, 0], queries[:, 0])
    torch.testing.assert_close(codes[:, 1:].sum(1), queries[:, 1:].sum(1))
    assert not torch.allclose(codes, queries)

    for stage, aux in ((1, 3.0), (2, 0.0)):
        with pytest.raises(SSPError, match="class_readout"):
            SSPConfig.tiny(stage, class_aux=aux, class_readout="codes")
    with pytest.raises(SSPError, match="class_readout"):
        SSPConfig.tiny(2, class_aux=3.0, class_readout="votes")
