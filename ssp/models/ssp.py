"""The SSP model: AAVS (audio-aware Mask2Former, two stages) + pre-mask, text prompts/VTA.

Interface (used by ``ssp.engine.train``, ``ssp.eval.stage1_masks``, ``ssp.eval.evaluate``, ``ssp.eval.predict``):

- ``SSPModel(config: SSPConfig)``; local weights named in the config load at build time
  (:func:`ssp.models.weights.load_pretrained`).
- ``forward(batch) -> SSPOutput`` on the flattened-frames batch of
  ``ssp.data.datasets.collate_frames``:

  ==================  ===================================================================
  ``frames``          N×3×S×S float in [0, 1], NOT normalised (the model normalises with
                      the ImageNet mean/std after the pre-mask multiply), S = image_size
  ``logmel``          N×96×64 VGGish log-mel patch per frame
  ``masks``           N×S×S int64 GT (binary in stage 1, class indices in stage 2).
                      Read by the model ONLY in training mode (stage 2's stepping stone,
                      the pre-mask's M_GT); never in eval mode.
  ``labelled``        N bool (the loss uses labelled frames only)
  ``flow_mask``       N×S×S {0,1} optical-flow mask M_O (needed by pre_mask/post_mask)
  ``stage1_mask``     N×S×S stage 1's predicted foreground probability: stage 2's stepping
                      stone at eval time (thresholded at 0.5 with
                      ``stepping_stone_test="binary"``, as is), and the pre-mask's M_GT
                      stand-in at eval time (``premask_test_source="stage1"``, > 0.5)
  ``prompt_a1``       list[str] per frame (text != "none")
  ``prompt_a2``       list[list[str]] per frame (text != "none")
  ==================  ===================================================================

- ``predict(batch) -> Tensor`` (no gradient): stage 1 returns N×S×S binary logits
  (foreground iff sigmoid > 0.5); stage 2 returns N×C×S×S per-class scores (argmax = class
  index, 0 = background), Mask2Former's semantic inference softmax(class)[..., :-1] ⊗
  sigmoid(mask) with the masks upsampled to S first.

Stage 1's foreground probability (``foreground_probability``) combines the queries as
"at least one query covers the pixel": 1 - Π_q (1 - p_q(fg) · sigmoid(m_q)). It is
Mask2Former's semantic score for one class (Σ_q p_q · sigmoid(m_q)) when queries do not
overlap, but stays in [0, 1], so its logit is defined everywhere.

Its logit (``foreground_logit``, computed in log space so that it stays finite where the
probability rounds to 0 or 1) is what the "mask" form of L'_mask supervises.

Text prompts (``text != "none"``, :mod:`ssp.models.vta`): the text module takes the mask
features and the three decoder maps after the pixel decoder and returns them with the text
in (VTA's refined text cross-attended by every position with ``text_injection=
"cross_attention"``); CLIP, for VTA's visual tokens, sees the pre-masked frames.

Post-mask (``post_mask=True``): L'_mask is "an additional mask prediction loss" (paper
§4.3) with label M_Post = M_O ∩ M_GT (:mod:`ssp.models.criterion`). The "mask" and
"recall" forms supervise the segmentation itself and need nothing from the model; the
``head`` form makes one more mask prediction in Mask2Former's form: a learned post-mask
embedding dotted with the per-pixel mask features (a 1×1 conv, ``post_mask_head``),
``SSPOutput.post_mask_logits``, not used by ``predict``.

Stepping stone at test (stage 2, ``stepping_stone_test``): "binary" thresholds stage 1's
foreground probability at ``STONE_THRESHOLD`` = 0.5, stage 1's own decision rule (AAVS saves
the argmax of its background/foreground scores as 0/255 masks, GeWu-Lab/Stepping-Stones
``avs/scripts/save_mask.py``); training sees the binary GT either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ssp.errors import SSPError
from ssp.models.adapters import add_adapters, apply_recipe
from ssp.models.audio_queries import AudioPixelSimilarity, AudioProjection, ClassCodeMatch, class_code_readout
from ssp.models.backbones import build_audio_encoder, build_visual_backbone
from ssp.models.config import SSPConfig
from ssp.models.mask2former import (
    AudioAwareTransformerModule,
    PixelLevelModule,
    build_mask2former_config,
    init_mask2former_weights,
)
from ssp.models.premask import apply_pre_mask, pre_mask
from ssp.models.vta import TextEncoder, build_text_module
from ssp.models.weights import load_pretrained, with_pretrained_architecture

IMAGENET_MEAN = (0.485, 0.456, 0.406)
STONE_THRESHOLD = 0.5  # stage 1's decision rule: foreground iff probability > 0.5
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SSPOutput:
    """What the model returns; all logits at the mask resolution h×w = S/4 × S/4.

    class_logits: N×Q×(K+1) of the last decoder layer (K = config.num_labels; the last
        logit is Mask2Former's "no object").
    mask_logits: N×Q×h×w of the last decoder layer.
    aux_outputs: (class_logits, mask_logits) of every earlier prediction, first to last.
    premask: N×S×S M_Pre that was multiplied into the frames (pre_mask), else None.
    stepping_stone: N×S×S stage-2 mask that was injected, else None.
    post_mask_logits: N×h×w prediction of the post-mask head (post_mask_form="head"), else None.
    pixel_class_logits: N×K×h×w object-class logits of the mask features, audio_class_logits:
        N×K of the projected audio (``class_aux > 0``, ClassCodeMatch), else None.
    """

    class_logits: Tensor
    mask_logits: Tensor
    aux_outputs: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    premask: Tensor | None = None
    stepping_stone: Tensor | None = None
    post_mask_logits: Tensor | None = None
    pixel_class_logits: Tensor | None = None
    audio_class_logits: Tensor | None = None


class SSPModel(nn.Module):
    """AAVS + SSP. Submodules (names follow Hugging Face Mask2Former where they exist):

    - ``pixel_level_module``: ``encoder`` (visual backbone) + ``decoder`` (Mask2Former
      pixel decoder);
    - ``transformer_module``: audio-aware queries + masked-attention decoder (+ stage-2
      silence/uncertain/audio embeddings);
    - ``class_predictor``: Linear(D, num_labels + 1);
    - ``audio_encoder`` (VGGish or the tiny CNN) and ``audio_projection`` (AAVS's MLP);
    - ``text_module``: VTA or "att" with its text encoder, only when ``text != "none"``;
    - ``post_mask_head``: the post-mask prediction, only when ``post_mask`` with the ``head`` form;
    - ``audio_pixel_match`` (``audio_fusion="similarity"``) and ``class_code_match``
      (``class_aux > 0``): audio-pixel matches added to every mask logit.
    """

    def __init__(self, config: SSPConfig):
        super().__init__()
        config = with_pretrained_architecture(config)  # a Mask2Former config.json sets the architecture
        config.validate()
        self.config = config
        # pretrained weights read while building: {param: ResolvedWeights.to_dict()} (see
        # pretrained_weights(); loaders that build a submodule leave theirs on it as `.resolved`)
        self.resolved_weights: dict[str, dict] = {}
        m2f_config = build_mask2former_config(config)
        self.m2f_config = m2f_config

        self.pixel_level_module = PixelLevelModule(m2f_config, build_visual_backbone(config), config.mask_stride)
        self.transformer_module = AudioAwareTransformerModule(
            in_features=config.hidden_dim, config=m2f_config, stepping_stone=config.stage == 2
        )
        self.class_predictor = nn.Linear(config.hidden_dim, config.num_labels + 1)
        self.audio_encoder = build_audio_encoder(config)
        self.audio_projection = AudioProjection(config.hidden_dim)
        with_match = config.audio_fusion == "similarity"
        self.audio_pixel_match = AudioPixelSimilarity(config.hidden_dim) if with_match else None
        with_codes = config.class_aux > 0
        self.class_code_match = (
            ClassCodeMatch(config.hidden_dim, config.num_classes - 1, config.class_match_gain) if with_codes else None
        )
        self.text_module = build_text_module(config)
        if self.text_module is not None:  # the frozen encoders' ResolvedWeights (model.text_model, model.clip_model)
            for module in self.text_module.modules():
                if isinstance(getattr(module, "resolved", None), dict):
                    self.resolved_weights[module.resolved["what"]] = module.resolved
        with_head = config.post_mask and config.post_mask_form == "head"
        self.post_mask_head = nn.Conv2d(config.hidden_dim, 1, kernel_size=1) if with_head else None
        init_mask2former_weights(self, m2f_config)
        add_adapters(self, config)  # AAVS's adapters (ssp.models.adapters), before weights load

        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        # (timm backbone and VGGish weights are loaded when those modules are built)
        load_pretrained(self, {"mask2former_weights": config.mask2former_weights})
        apply_recipe(self, config)  # AAVS's frozen parts (phase 1; the trainer switches to phase 2)
        if config.vggish_weights is not None and config.freeze_audio_encoder:
            self.audio_encoder.requires_grad_(False)

    def pretrained_weights(self) -> dict[str, dict]:
        """Every pretrained file this model was built from: {param: {spec, source, repo_id,
        revision, files: {name: sha256}}}, for the checkpoint metadata and the MLflow run."""
        record = dict(self.resolved_weights)
        for module in self.modules():
            resolved = getattr(module, "resolved", None)
            if isinstance(resolved, dict) and "what" in resolved:
                record.setdefault(resolved["what"], resolved)
        return dict(sorted(record.items()))

    # -------------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> SSPOutput:
        config = self.config
        frames = batch["frames"].float()
        if frames.shape[-1] != config.image_size or frames.shape[-2] != config.image_size:
            raise SSPError(f"frames are {tuple(frames.shape[-2:])}, the model expects {config.image_size}²")

        premask = None
        if config.pre_mask:
            premask = pre_mask(self._require(batch, "flow_mask", "pre_mask"), self._premask_gt(batch))
            frames = apply_pre_mask(frames, premask)
        pixel_values = (frames - self.pixel_mean) / self.pixel_std

        mask_features, multi_scale, _ = self.pixel_level_module(pixel_values)

        if self.text_module is not None:
            keys = TextEncoder.prompt_keys(
                self._require(batch, "prompt_a1", f"text={config.text!r}"),
                self._require(batch, "prompt_a2", f"text={config.text!r}"),
            )
            mask_features, multi_scale = self.text_module(mask_features, multi_scale, frames, keys)

        audio = self.audio_encoder(batch["logmel"].float().unsqueeze(1))
        audio_embedding = self.audio_projection(audio)

        stone = None
        if config.stage == 2:
            stone = self._stepping_stone(batch)
            # AAVS: the stepping stone is added to the mask features (all channels).
            mask_features = mask_features + nn.functional.interpolate(
                stone[:, None], size=mask_features.shape[-2:], mode="bilinear", align_corners=False
            )

        decoded = self.transformer_module(multi_scale, mask_features, audio_embedding, stone)
        class_logits = [self.class_predictor(h.transpose(0, 1)) for h in decoded.intermediate_hidden_states]
        masks = list(decoded.masks_queries_logits)
        if self.audio_pixel_match is not None:
            match = self.audio_pixel_match(mask_features, audio_embedding)
            masks = [m + match.to(m.dtype) for m in masks]
        pixel_class_logits = audio_class_logits = None
        if self.class_code_match is not None:
            offset, pixel_class_logits, audio_class_logits = self.class_code_match(mask_features, audio_embedding)
            masks = [m + offset.to(m.dtype) for m in masks]
        post_mask_logits = self.post_mask_head(mask_features)[:, 0] if self.post_mask_head is not None else None
        return SSPOutput(
            class_logits=class_logits[-1],
            mask_logits=masks[-1],
            aux_outputs=list(zip(class_logits[:-1], masks[:-1])),
            premask=premask,
            stepping_stone=stone,
            post_mask_logits=post_mask_logits,
            pixel_class_logits=pixel_class_logits,
            audio_class_logits=audio_class_logits,
        )

    @torch.no_grad()
    def predict(self, batch: dict) -> Tensor:
        """Stage 1: N×S×S binary logits; stage 2: N×C×S×S class scores (see module doc)."""
        output = self.forward(batch)
        size = (self.config.image_size, self.config.image_size)
        masks = nn.functional.interpolate(output.mask_logits, size=size, mode="bilinear", align_corners=False)
        if self.config.stage == 1:
            probability = foreground_probability(output.class_logits, masks, stage=1)
            eps = torch.finfo(probability.dtype).eps
            return torch.logit(probability.clamp(eps, 1 - eps))
        class_probs = output.class_logits.softmax(-1)[..., :-1]
        scores = torch.einsum("nqc,nqhw->nchw", class_probs, masks.sigmoid())
        if self.config.class_readout == "codes":
            scores = class_code_readout(scores, output.pixel_class_logits, output.audio_class_logits)
        return scores

    # -------------------------------------------------------------------------------------------
    def _premask_gt(self, batch: dict) -> Tensor:
        """M_GT of eq. 2: the GT or stage 1's mask in training (premask_train_source), a
        stand-in at eval (premask_test_source). A stage-1 model trained with "stage1" and no
        earlier stage's mask in the batch trains on its own test-time stand-in (as at test)."""
        if self.training and (self.config.stage == 2 or self.config.premask_train_source == "gt"):
            if self.config.premask_train_source == "stage1":
                return self._stage1_foreground(batch, "pre_mask with premask_train_source='stage1'")
            return (batch["masks"] > 0).float()
        source = self.config.premask_test_source
        flow = batch["flow_mask"].float()
        if source == "stage1":
            if "stage1_mask" in batch and batch["stage1_mask"] is not None:
                return self._stage1_foreground(batch, "pre_mask at eval")
            if self.config.stage == 2:
                raise SSPError("pre_mask at eval with premask_test_source='stage1' needs batch['stage1_mask']")
            source = "all"  # a stage-1 model has no earlier prediction (see SSPConfig)
        if source == "flow":
            return flow
        return torch.ones_like(flow)

    def _stepping_stone(self, batch: dict) -> Tensor:
        """Stage 2's mask: in training the GT foreground or stage 1's mask
        (``stepping_stone_train``), at eval stage 1's prediction (binary or its probability,
        ``stepping_stone_test``)."""
        if self.training:
            if self.config.stepping_stone_train == "stage1":
                return self._stage1_foreground(batch, "stepping_stone_train='stage1'")
            return (batch["masks"] > 0).float()
        if self.config.stepping_stone_test == "binary":
            return self._stage1_foreground(batch, "stage 2 at eval (the stepping stone)")
        return self._require(batch, "stage1_mask", "stage 2 at eval (the stepping stone)").float()

    def _stage1_foreground(self, batch: dict, why: str) -> Tensor:
        """Stage 1's mask as {0, 1}: its probability > ``STONE_THRESHOLD``, stage 1's own
        decision rule (the stone, and M_GT's stand-in in eq. 2)."""
        return (self._require(batch, "stage1_mask", why).float() > STONE_THRESHOLD).float()

    @staticmethod
    def _require(batch: dict, key: str, why: str):
        value = batch.get(key) if hasattr(batch, "get") else batch[key]
        if value is None:
            raise SSPError(f"{why} needs batch[{key!r}], which this batch does not have")
        return value


def _log_uncovered(class_logits: Tensor, mask_logits: Tensor, stage: int) -> Tensor:
    """N×h×w log Π_q (1 - p_q(fg) · sigmoid(m_q)) = log(1 - foreground probability), each
    factor as log((1 - p_q) + p_q · sigmoid(-m_q)) from log-probabilities: exact (and with a
    gradient) where p_q · sigmoid(m_q) rounds to 1."""
    log_probs = class_logits.log_softmax(-1)
    if stage == 1:
        log_fg, log_rest = log_probs[..., 0], log_probs[..., 1:].logsumexp(-1)
    else:  # foreground = any class but background (0) and no-object (last)
        log_fg, log_rest = log_probs[..., 1:-1].logsumexp(-1), torch.logaddexp(log_probs[..., 0], log_probs[..., -1])
    per_query = torch.logaddexp(
        log_rest[:, :, None, None], log_fg[:, :, None, None] + nn.functional.logsigmoid(-mask_logits)
    )
    return per_query.sum(1)


def foreground_logit(class_logits: Tensor, mask_logits: Tensor, stage: int) -> Tensor:
    """N×h×w logit of :func:`foreground_probability`, log p - log(1 - p) from log(1 - p)
    directly: finite and with a gradient where p rounds to 1 in float32."""
    log_uncovered = _log_uncovered(class_logits, mask_logits, stage)
    log_covered = torch.log((-torch.expm1(log_uncovered)).clamp_min(torch.finfo(log_uncovered.dtype).tiny))
    return log_covered - log_uncovered


def foreground_probability(class_logits: Tensor, mask_logits: Tensor, stage: int) -> Tensor:
    """N×h×w probability that some query covers the pixel with a foreground class.

    Stage 1: the single foreground class; stage 2: any class but background (index 0).
    Computed as 1 - Π_q (1 - p_q · sigmoid(m_q)) in log space.
    """
    return 1 - torch.exp(_log_uncovered(class_logits, mask_logits, stage))
