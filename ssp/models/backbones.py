"""Visual and audio encoders.

Visual: every backbone returns four feature maps (strides 4, 8, 16, 32) in N×C×H×W and
exposes ``channels`` (the contract of Hugging Face backbones, which Mask2Former's pixel
decoder consumes).

- :class:`TimmBackbone`: any timm model with ``features_only`` (Swin, PVT-v2, ...), random
  init, or weights (a local file, or a hub id: :func:`ssp.hub.resolve_weights`)
  through timm's own loader (``pretrained_cfg_overlay=dict(file=...)``, which reads
  safetensors or ``torch.load(weights_only=True)``); what was read is kept as ``.resolved``.
- Hugging Face ``SwinBackbone`` (``backbone == HF_SWIN_BACKBONE``): the Swin of
  ``Mask2FormerForUniversalSegmentation``, so that its parameter names match Mask2Former
  checkpoints (``model.pixel_level_module.encoder.*``, in the current transformers naming;
  :mod:`ssp.models.weights` renames older files). ``drop_path_rate`` (SSPConfig; AAVS 0.3)
  sets its stochastic depth; AAVS's adapters go in afterwards (:mod:`ssp.models.adapters`).

Audio: ``audio_encoder == "vggish"`` uses :class:`ssp.models.vggish.VGGish` (N×1×96×64 log-mel ->
N×128; ``vggish_weights`` = torchvggish's weights file, else random init); ``"tiny"``
is :class:`TinyAudioEncoder`, a small log-mel CNN with the same input and output
contract, for CPU runs.
"""

from __future__ import annotations

from torch import Tensor, nn
from transformers import SwinBackbone, SwinConfig
from transformers.models.swin.modeling_swin import SwinDropPath, SwinLayer

from ssp.errors import DataError, SSPError
from ssp.hub import resolve_weights
from ssp.models.config import HF_SWIN_BACKBONE, SSPConfig
from ssp.models.vggish import VGGish

# files a timm weights folder / hub repository may hold, in order of preference
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


class TimmBackbone(nn.Module):
    """A timm ``features_only`` model returning four N×C×H×W maps (strides 4-32)."""

    def __init__(self, name: str, image_size: int, weights: str | None = None, **kwargs):
        super().__init__()
        import timm  # noqa: PLC0415  (optional backend: timm backbones only; timm takes seconds to import)

        create_kwargs = dict(kwargs)
        if "swin" in name or "vit" in name:
            create_kwargs.setdefault("img_size", image_size)
        self.resolved = None
        if weights is not None:
            resolved = resolve_weights(str(weights), "model.backbone_weights")
            weights = resolved.file(*TIMM_WEIGHT_FILES)
            if weights is None:
                raise DataError(
                    resolved.path, f"model.backbone_weights: no weights file ({', '.join(TIMM_WEIGHT_FILES)})"
                )
            self.resolved = resolved.to_dict()
            create_kwargs["pretrained_cfg_overlay"] = dict(file=str(weights))
        try:
            self.body = timm.create_model(
                name, pretrained=weights is not None, features_only=True, out_indices=(0, 1, 2, 3), **create_kwargs
            )
        except RuntimeError as err:  # state-dict mismatch inside timm's loader
            if weights is not None:
                raise DataError(weights, f"does not fit timm model {name!r}: {err}") from err
            raise
        self.channels = list(self.body.feature_info.channels())
        reductions = list(self.body.feature_info.reduction())
        if reductions != [4, 8, 16, 32]:
            raise SSPError(f"backbone {name!r} has feature strides {reductions}, Mask2Former needs [4, 8, 16, 32]")
        # Swin-like timm models return channels-last maps.
        output_fmt = getattr(self.body, "output_fmt", "NCHW")
        self.channels_last = getattr(output_fmt, "value", output_fmt) == "NHWC"

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        features = self.body(pixel_values)
        if self.channels_last:
            features = [f.permute(0, 3, 1, 2).contiguous() for f in features]
        return list(features)


class HFSwinBackbone(SwinBackbone):
    """Hugging Face's Swin (as inside Mask2Former), returning the four stage maps.

    A subclass rather than a wrapper, so that parameter names are exactly those under
    ``model.pixel_level_module.encoder.`` in Mask2Former checkpoints.

    ``drop_path_rate`` (None: SwinConfig's default 0.1, linear over the blocks) is applied
    at the same rate in every block, as AAVS's transformers 4.35 did (its ``SwinStage``
    computes the linear schedule but never passes it to ``SwinLayer``, which reads
    ``config.drop_path_rate``); transformers 5 applies the linear schedule.
    """

    def __init__(self, image_size: int, swin: dict, drop_path_rate: float | None = None):
        extra = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
        super().__init__(
            SwinConfig(image_size=image_size, out_features=["stage1", "stage2", "stage3", "stage4"], **swin, **extra)
        )
        if drop_path_rate is not None:
            for module in self.modules():
                if isinstance(module, SwinLayer):
                    module.drop_path = SwinDropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        return list(super().forward(pixel_values).feature_maps)


def build_visual_backbone(config: SSPConfig) -> nn.Module:
    if config.backbone == HF_SWIN_BACKBONE:
        if config.backbone_weights is not None:
            raise SSPError(
                "backbone_weights is for timm backbones; the Hugging Face Swin loads from mask2former_weights"
            )
        return HFSwinBackbone(config.image_size, config.hf_swin, config.drop_path_rate)
    kwargs = dict(config.backbone_kwargs)
    if config.drop_path_rate is not None:
        kwargs.setdefault("drop_path_rate", config.drop_path_rate)
    return TimmBackbone(config.backbone, config.image_size, config.backbone_weights, **kwargs)


class TinyAudioEncoder(nn.Module):
    """A small CNN over the 96×64 VGGish log-mel patch, producing a 128-d embedding.

    Same contract as VGGish (N×1×96×64 -> N×128) at ~1/100 of its cost, so that the tiny
    model trains on CPU; the audio-aware queries see the same 128-d input either way.
    """

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64), embedding_dim: int = 128):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 1
        for out_channels in channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.embedding = nn.Linear(in_channels, embedding_dim)

    def forward(self, logmel: Tensor) -> Tensor:
        x = self.features(logmel)
        return self.embedding(x.mean(dim=(2, 3)))


def build_audio_encoder(config: SSPConfig) -> nn.Module:
    if config.audio_encoder == "tiny":
        if config.vggish_weights is not None:
            raise SSPError("vggish_weights needs audio_encoder='vggish'")
        return TinyAudioEncoder()
    if config.vggish_weights is not None:
        # torchvggish's file: .pth read with weights_only=True, or .safetensors; a file
        # that does not fit is a DataError naming it.
        return VGGish.from_torchvggish(config.vggish_weights).train()
    return VGGish()
