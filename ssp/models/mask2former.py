"""Mask2Former pieces of AAVS, reused from Hugging Face transformers (pinned 5.23.0).

Reused as is: ``Mask2FormerPixelDecoder`` (multi-scale deformable-attention encoder +
FPN), the masked-attention decoder layers, the mask predictor and the sine position
embedding. Subclassed, because AAVS injects into them:

- :class:`SteppingStoneMaskedAttentionDecoder` (of ``Mask2FormerMaskedAttentionDecoder``):
  ``forward`` takes ``first_attention_mask``, which replaces the attention mask computed
  from the learnable queries' first mask prediction (stage 2: the stepping stone, <0.5
  masked). Without it the loop is the upstream one.
- :class:`AudioAwareTransformerModule` (of ``Mask2FormerTransformerModule``): ``forward``
  takes the per-frame audio embedding (audio-aware queries, see
  :mod:`ssp.models.audio_queries`) and the stage-2 stepping stone, which adds learned
  silence / uncertain / audio embeddings to the positional encodings of the decoder's
  keys where the (resized) mask is <=0.4 / in between / >=0.6.

Parameter names are those of ``Mask2FormerModel`` (``pixel_level_module.encoder/decoder``,
``transformer_module.*``), so Mask2Former and AAVS checkpoints load by name.
``tests/models/test_model.py::test_transformers_seam`` fails loudly if the internals used here
change: it checks the version, the attributes, the call signatures, and that both
subclasses reproduce the upstream forward exactly when nothing is injected.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from transformers.models.mask2former.configuration_mask2former import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerMaskedAttentionDecoder,
    Mask2FormerMaskedAttentionDecoderLayer,
    Mask2FormerMaskedAttentionDecoderOutput,
    Mask2FormerPixelDecoder,
    Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention,
    Mask2FormerTransformerModule,
)

from ssp.models.audio_queries import audio_aware_queries
from ssp.models.config import SSPConfig

TRANSFORMERS_VERSION = "5.23.0"  # the version whose internals the subclasses follow

# Stepping-stone thresholds of AAVS for the positional-encoding prompts.
SILENCE_MAX = 0.4
AUDIO_MIN = 0.6


def build_mask2former_config(config: SSPConfig) -> Mask2FormerConfig:
    """The Hugging Face config that the reused Mask2Former modules read."""
    return Mask2FormerConfig(
        feature_size=config.hidden_dim,
        mask_feature_size=config.hidden_dim,
        hidden_dim=config.hidden_dim,
        encoder_feedforward_dim=config.encoder_feedforward_dim,
        encoder_layers=config.encoder_layers,
        decoder_layers=config.decoder_layers,
        num_attention_heads=config.num_attention_heads,
        dim_feedforward=config.dim_feedforward,
        num_queries=config.num_queries,
        num_labels=config.num_labels,
        dropout=0.0,  # upstream also uses it as layerdrop; AAVS trains without
        no_object_weight=config.no_object_weight,
        class_weight=config.class_weight,
        mask_weight=config.mask_weight,
        dice_weight=config.dice_weight,
        train_num_points=config.num_points,
        oversample_ratio=config.oversample_ratio,
        importance_sample_ratio=config.importance_sample_ratio,
    )


class PixelLevelModule(nn.Module):
    """Backbone (``encoder``) + Mask2Former pixel decoder (``decoder``), as in Mask2Former.

    Returns the mask features (1/4 as in Mask2Former, or 1/``mask_stride`` through
    :class:`FineMaskFeatures`) and the three multi-scale maps (1/32, 1/16, 1/8) that the
    masked-attention decoder reads.
    """

    def __init__(self, m2f_config: Mask2FormerConfig, encoder: nn.Module, mask_stride: int = 4):
        super().__init__()
        self.encoder = encoder
        self.decoder = Mask2FormerPixelDecoder(m2f_config, feature_channels=encoder.channels)
        self.fine = FineMaskFeatures(m2f_config.mask_feature_size, mask_stride) if mask_stride < 4 else None

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        backbone_features = self.encoder(pixel_values)
        decoded = self.decoder(backbone_features, output_hidden_states=False)
        mask_features = decoded.mask_features
        if self.fine is not None:
            mask_features = self.fine(mask_features, pixel_values)
        return mask_features, list(decoded.multi_scale_features), backbone_features


class FineMaskFeatures(nn.Module):
    """Mask features finer than Mask2Former's 1/4 (``SSPConfig.mask_stride`` 2 or 1).

    The backbones' first map is at 1/4, so the finer laterals come from a small conv stem on
    the image (3x3 conv + GroupNorm + ReLU at 1/1, then stride 2 to 1/2). Each halving of the
    stride is one FPN step as in the pixel decoder: the coarser map upsampled (nearest) plus a
    1x1 lateral of the stem, then a conv + GroupNorm + ReLU (3x3 at 1/2; 1x1 at 1/1, where a 3x3
    at full width is the costliest layer of the tiny model), and a 1x1 output projection (as
    Mask2Former's ``mask_projection``). Why: at 64 px the 1/4 grid is 16x16 for objects ~14 px
    across with 3-5 px parts, which capped even an all-objects segmentation near IoU 0.75-0.8
    (bench/README.md, Mask resolution).
    """

    def __init__(self, dim: int, stride: int, stem_channels: int = 16):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"mask_stride must be 4, 2 or 1, got {stride}")
        self.stride = stride
        self.stem1 = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, padding=1, bias=False), nn.GroupNorm(4, stem_channels), nn.ReLU()
        )
        wide = 2 * stem_channels
        self.stem2 = nn.Sequential(
            nn.Conv2d(stem_channels, wide, 3, stride=2, padding=1, bias=False), nn.GroupNorm(8, wide), nn.ReLU()
        )
        self.lateral2 = nn.Conv2d(wide, dim, 1)
        self.output2 = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.GroupNorm(32, dim), nn.ReLU())
        if stride == 1:
            self.lateral1 = nn.Conv2d(stem_channels, dim, 1)
            self.output1 = nn.Sequential(nn.Conv2d(dim, dim, 1, bias=False), nn.GroupNorm(32, dim), nn.ReLU())
        self.projection = nn.Conv2d(dim, dim, 1)

    def forward(self, mask_features: Tensor, pixel_values: Tensor) -> Tensor:
        if mask_features.shape[-1] * 4 != pixel_values.shape[-1]:
            raise ValueError(f"mask features {tuple(mask_features.shape[-2:])} are not 1/4 of the image")
        full = self.stem1(pixel_values.to(mask_features.dtype))
        half = self.stem2(full)
        x = nn.functional.interpolate(mask_features, scale_factor=2.0, mode="nearest") + self.lateral2(half)
        x = self.output2(x)
        if self.stride == 1:
            x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest") + self.lateral1(full)
            x = self.output1(x)
        return self.projection(x)


class SteppingStoneMaskedAttentionDecoder(Mask2FormerMaskedAttentionDecoder):
    """Mask2Former's masked-attention decoder with an optional first attention mask."""

    def forward(
        self,
        inputs_embeds: Tensor,
        multi_stage_positional_embeddings: list[Tensor],
        pixel_embeddings: Tensor,
        encoder_hidden_states: list[Tensor],
        query_position_embeddings: Tensor,
        feature_size_list: list,
        first_attention_mask: Tensor | None = None,
        **unused,
    ) -> Mask2FormerMaskedAttentionDecoderOutput:
        hidden_states = inputs_embeds
        intermediate = [self.layernorm(hidden_states)]
        predicted_mask, attention_mask = self.mask_predictor(intermediate[0], pixel_embeddings, feature_size_list[0])
        mask_predictions = [predicted_mask]
        if first_attention_mask is not None:
            # (N*heads)×Q×HW booleans, True = masked
            attention_mask = first_attention_mask

        for idx, decoder_layer in enumerate(self.layers):
            if self.training and self.layerdrop > 0.0 and torch.rand([]) < self.layerdrop:
                continue
            level_index = idx % self.num_feature_levels
            # A query whose mask covers nothing attends everywhere (as upstream).
            fully_masked = attention_mask.sum(-1) == attention_mask.shape[-1]
            attention_mask = attention_mask & ~fully_masked.unsqueeze(-1)

            layer_outputs = decoder_layer(
                hidden_states,
                level_index,
                None,
                multi_stage_positional_embeddings,
                query_position_embeddings,
                encoder_hidden_states,
                encoder_attention_mask=attention_mask,
            )
            hidden_states = layer_outputs[0]
            normed = self.layernorm(hidden_states)
            predicted_mask, attention_mask = self.mask_predictor(
                normed, pixel_embeddings, feature_size_list[(idx + 1) % self.num_feature_levels]
            )
            intermediate.append(normed)
            mask_predictions.append(predicted_mask)

        return Mask2FormerMaskedAttentionDecoderOutput(
            last_hidden_state=hidden_states.transpose(0, 1),
            intermediate_hidden_states=tuple(intermediate),
            masks_queries_logits=tuple(mask_predictions),
        )


class AudioAwareTransformerModule(Mask2FormerTransformerModule):
    """Mask2Former's transformer module with AAVS's audio-aware queries and stage-2 prompts."""

    def __init__(self, in_features: int, config: Mask2FormerConfig, stepping_stone: bool):
        super().__init__(in_features, config)
        self.decoder = SteppingStoneMaskedAttentionDecoder(config)
        self.num_heads = config.num_attention_heads
        if stepping_stone:
            # Created only in stage 2 (unused parameters would get no gradient in stage 1).
            self.silence_embed = nn.Embedding(1, config.hidden_dim)
            self.uncertain_embed = nn.Embedding(1, config.hidden_dim)
            self.audio_embed = nn.Embedding(1, config.hidden_dim)

    def forward(
        self,
        multi_scale_features: list[Tensor],
        mask_features: Tensor,
        audio_embedding: Tensor | None = None,
        stepping_stone: Tensor | None = None,
        **unused,
    ) -> Mask2FormerMaskedAttentionDecoderOutput:
        """
        Args:
            multi_scale_features: three N×D×h×w maps (1/32, 1/16, 1/8).
            mask_features: N×D×H/4×W/4 per-pixel embeddings.
            audio_embedding: N×D projected audio per frame (None: plain Mask2Former queries).
            stepping_stone: N×H×W mask in [0, 1] (stage 2), or None.
        """
        features, positions, sizes = [], [], []
        for level in range(self.num_feature_levels):
            x = multi_scale_features[level]
            sizes.append(x.shape[-2:])
            position = self.position_embedder(x.shape, x.device, x.dtype, None).flatten(2).permute(2, 0, 1)  # HW×N×D
            if stepping_stone is not None:
                position = position + self._stone_prompt(stepping_stone, x.shape[-2:]).to(position.dtype)
            positions.append(position)
            features.append(
                (self.input_projections[level](x).flatten(2) + self.level_embed.weight[level][None, :, None]).permute(
                    2, 0, 1
                )
            )

        batch_size = features[0].shape[1]
        query_embeddings = self.queries_embedder.weight.unsqueeze(1).repeat(1, batch_size, 1)
        if audio_embedding is None:
            query_features = self.queries_features.weight.unsqueeze(1).repeat(1, batch_size, 1)
        else:
            query_features = audio_aware_queries(
                self.queries_features.weight, self.queries_embedder.weight, audio_embedding
            )

        first_attention_mask = None
        if stepping_stone is not None:
            stone = _resize(stepping_stone, sizes[0]).flatten(1)  # N×HW
            masked = (stone < 0.5)[:, None, None, :]  # N×1×1×HW
            first_attention_mask = masked.expand(-1, self.num_heads, query_features.shape[0], -1).flatten(0, 1)

        return self.decoder(
            inputs_embeds=query_features,
            multi_stage_positional_embeddings=positions,
            pixel_embeddings=mask_features,
            encoder_hidden_states=features,
            query_position_embeddings=query_embeddings,
            feature_size_list=sizes,
            first_attention_mask=first_attention_mask,
        )

    def _stone_prompt(self, stepping_stone: Tensor, size) -> Tensor:
        """HW×N×D: silence / uncertain / audio embedding per position of one level."""
        stone = _resize(stepping_stone, size).flatten(1).transpose(0, 1)[..., None]  # HW×N×1
        silence = (stone <= SILENCE_MAX).to(stone.dtype)
        audio = (stone >= AUDIO_MIN).to(stone.dtype)
        uncertain = 1.0 - silence - audio
        return (
            silence * self.silence_embed.weight[0]
            + uncertain * self.uncertain_embed.weight[0]
            + audio * self.audio_embed.weight[0]
        )


def _resize(mask: Tensor, size) -> Tensor:
    """N×H×W -> N×h×w, bilinear (as AAVS resizes the stepping stone)."""
    resized = nn.functional.interpolate(mask[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)
    return resized[:, 0]


@torch.no_grad()
def init_mask2former_weights(module: nn.Module, config: Mask2FormerConfig) -> None:
    """Initialise the reused Mask2Former modules the way Mask2Former does.

    Building the upstream modules directly (not through ``PreTrainedModel``) skips their
    custom init; in particular the pixel decoder's ``level_embed`` is allocated
    uninitialised and the deformable attention needs its directional offset grid.
    """
    for sub in module.modules():
        if isinstance(sub, Mask2FormerPixelDecoder):
            nn.init.normal_(sub.level_embed, std=1.0)
        elif isinstance(sub, Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention):
            nn.init.constant_(sub.sampling_offsets.weight, 0.0)
            thetas = torch.arange(sub.n_heads, dtype=torch.float32) * (2.0 * math.pi / sub.n_heads)
            grid = torch.stack([thetas.cos(), thetas.sin()], -1)
            grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(sub.n_heads, 1, 1, 2)
            grid = grid.repeat(1, sub.n_levels, sub.n_points, 1)
            for point in range(sub.n_points):
                grid[:, :, point, :] *= point + 1
            sub.sampling_offsets.bias.copy_(grid.view(-1))
            nn.init.constant_(sub.attention_weights.weight, 0.0)
            nn.init.constant_(sub.attention_weights.bias, 0.0)
            nn.init.xavier_uniform_(sub.value_proj.weight)
            nn.init.constant_(sub.value_proj.bias, 0.0)
            nn.init.xavier_uniform_(sub.output_proj.weight)
            nn.init.constant_(sub.output_proj.bias, 0.0)
        elif isinstance(sub, Mask2FormerMaskedAttentionDecoderLayer):
            for p in sub.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p, gain=config.init_xavier_std)
            nn.init.zeros_(sub.cross_attn.in_proj_bias)
        elif isinstance(sub, Mask2FormerTransformerModule):
            for projection in sub.input_projections:
                if isinstance(projection, nn.Conv2d):
                    nn.init.xavier_uniform_(projection.weight, gain=config.init_xavier_std)
                    nn.init.constant_(projection.bias, 0.0)
