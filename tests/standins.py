"""Stand-ins for the paper's pretrained weights, in exactly the real formats.

No test can download from the hub, so each builder writes what the real repository
holds -- ``save_pretrained`` of a reduced config of the same model class, or the
torchvggish state dict -- into a Hugging Face hub-cache layout
(``models--org--name/{blobs,snapshots/<commit>,refs/main}``), which the pipeline then
reads through the same code path as the real files (``ssp.hub.resolve_weights``
with ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` pointing at the cache). Each builder
returns the weights spec to put in params (``org/name@<commit>``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

# repository ids the paper profile names (conf/profile/paper.yaml); the stand-ins use the
# same ids so that a smoke run differs from a real one only by the cache it reads
MASK2FORMER_REPO = "facebook/mask2former-swin-base-ade-semantic"
BERT_REPO = "google-bert/bert-base-uncased"
CLIP_REPO = "openai/clip-vit-base-patch16"
VGGISH_REPO = "harritaylor/torchvggish"
VGGISH_FILE = "vggish-10086976.pth"  # the name torchvggish's release gives the file


def hub_cache_entry(cache: Path, repo_id: str, write: Callable[[Path], None], revision: str | None = None) -> str:
    """Lay out what ``write(folder)`` produces as the hub cache's copy of ``repo_id`` (blobs
    named by content hash, snapshot symlinks, ``refs/main``); returns ``repo_id@<commit>``.
    ``revision``: the commit to file it under (a profile's pinned one), else a content hash."""
    cache = Path(cache)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        write(staging)
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        digest = hashlib.sha1()
        for f in files:
            digest.update(f.relative_to(staging).as_posix().encode())
            digest.update(f.read_bytes())
        commit = revision or digest.hexdigest()  # 40 hex: stands in for the git commit
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / commit
        for f in files:
            blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            if not blob.exists():
                shutil.move(str(f), blob)
            link = snapshot / f.relative_to(staging)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink(os.path.relpath(blob, link.parent), link)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return f"{repo_id}@{commit}"


def reduced_swin_mask2former_config(num_labels: int = 150):
    """Mask2Former with a Swin backbone, the classes of facebook/mask2former-swin-base-ade-
    semantic but every width and depth reduced (runs in a fraction of a second on CPU)."""
    from transformers import Mask2FormerConfig, SwinConfig

    swin = SwinConfig(
        image_size=64,
        embed_dim=32,
        depths=[1, 1, 1, 1],
        num_heads=[1, 2, 4, 8],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return Mask2FormerConfig(
        backbone_config=swin,
        feature_size=64,
        mask_feature_size=64,
        hidden_dim=64,
        encoder_feedforward_dim=128,
        encoder_layers=1,
        decoder_layers=3,
        num_attention_heads=4,
        dim_feedforward=128,
        num_queries=20,
        num_labels=num_labels,
        common_stride=4,
    )


def mask2former_standin(cache: Path, revision: str | None = None) -> str:
    """``Mask2FormerForUniversalSegmentation.save_pretrained`` of the reduced config."""
    import torch
    from transformers import Mask2FormerForUniversalSegmentation

    def write(folder: Path) -> None:
        torch.manual_seed(0)
        Mask2FormerForUniversalSegmentation(reduced_swin_mask2former_config()).save_pretrained(folder)

    return hub_cache_entry(cache, MASK2FORMER_REPO, write, revision)


_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ".", "a", "the", "and", "of", "is", "in", "on"]


def bert_standin(cache: Path, revision: str | None = None) -> str:
    """``BertModel`` + ``BertTokenizerFast`` save_pretrained, 2 layers of width 32, a small
    WordPiece vocabulary (letters as word pieces, so any prompt tokenises)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    def write(folder: Path) -> None:
        import torch

        letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
        vocab = _VOCAB + letters + [f"##{c}" for c in letters] + [str(d) for d in range(10)]
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
        BertModel(config).save_pretrained(folder)

    return hub_cache_entry(cache, BERT_REPO, write, revision)


def clip_standin(cache: Path, revision: str | None = None) -> str:
    """``CLIPModel`` + ``CLIPImageProcessor`` save_pretrained (the layout of
    openai/clip-vit-base-patch16: a full CLIP whose vision tower is what VTA reads), reduced."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    def write(folder: Path) -> None:
        import torch

        torch.manual_seed(0)
        config = CLIPConfig(
            text_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "vocab_size": 100,
            },
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 32,
                "patch_size": 8,
            },
            projection_dim=32,
        )
        CLIPModel(config).save_pretrained(folder)
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)

    return hub_cache_entry(cache, CLIP_REPO, write, revision)


def vggish_standin(cache: Path, revision: str | None = None) -> str:
    """torchvggish's weights file (the full VGGish: its shape is fixed), random values, as
    the one .pth file of a hub repository."""

    return hub_cache_entry(cache, VGGISH_REPO, lambda folder: _write_vggish(folder / VGGISH_FILE), revision)


def _write_vggish(path: Path) -> None:
    """torchvggish's state dict of a seeded random VGGish."""
    import torch

    from ssp.models.vggish import VGGish

    torch.manual_seed(0)
    torch.save({k: v.contiguous() for k, v in VGGish().state_dict().items()}, path)


# --------------------------------------------------------------------------- flow and MLLM

PERCEIVER_FLOW_REPO = "deepmind/optical-flow-perceiver"
MINICPM_REPO = "openbmb/MiniCPM-o-2_6"


def reduced_perceiver_flow_config():
    """PerceiverForOpticalFlow's config reduced: a few latents, one self-attention, 24×32
    training tiles."""
    from transformers import PerceiverConfig

    return PerceiverConfig(
        num_latents=8,
        d_latents=16,
        num_blocks=1,
        num_self_attends_per_block=1,
        num_self_attention_heads=1,
        num_cross_attention_heads=1,
        train_size=[24, 32],
    )


def perceiver_flow_standin(cache: Path, seed: int = 0, revision: str | None = None) -> str:
    """``PerceiverForOpticalFlow.save_pretrained`` (config.json + model.safetensors, the
    files the stage fetches from deepmind/optical-flow-perceiver) of the reduced config.
    ``seed``: another seed makes other weights, i.e. another revision."""
    import torch
    from transformers import PerceiverForOpticalFlow

    def write(folder: Path) -> None:
        torch.manual_seed(seed)
        PerceiverForOpticalFlow(reduced_perceiver_flow_config()).save_pretrained(folder)

    return hub_cache_entry(cache, PERCEIVER_FLOW_REPO, write, revision)


# MiniCPM-o-2.6 ships its own code (config.json "auto_map"): a configuration, a model with a
# chat(msgs=..., tokenizer=...) method, and a tokenizer class. The stand-in keeps that
# layout and the chat signature, with a model of three small layers whose answer is a
# deterministic function of its weights, the images and the text.
_MINICPM_CONFIGURATION = """
from transformers import PretrainedConfig


class MiniCPMOConfig(PretrainedConfig):
    model_type = "minicpmo"

    def __init__(self, vocab_size=32, hidden_size=8, init_vision=True, init_audio=True, init_tts=True, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.init_vision = init_vision
        self.init_audio = init_audio
        self.init_tts = init_tts
        super().__init__(**kwargs)
"""

_MINICPM_MODELING = """
import torch
from PIL import Image
from torch import nn
from transformers import PreTrainedModel

from .configuration_minicpm import MiniCPMOConfig


class MiniCPMO(PreTrainedModel):
    config_class = MiniCPMOConfig
    CALLS = []  # the arguments of every chat() call, for tests

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.vision = nn.Linear(3, config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        if config.init_audio:
            self.apm = nn.Linear(4, config.hidden_size)
        if config.init_tts:  # as the real one without its extra packages
            raise ImportError("please make sure vector_quantize_pytorch and vocos are installed.")
        self.post_init()

    def _init_weights(self, module):
        pass  # torch's own initialisation (seeded by the builder)

    def chat(self, image=None, msgs=None, tokenizer=None, processor=None, max_new_tokens=2048,
             sampling=True, max_slice_nums=None, use_image_id=None, **kwargs):
        type(self).CALLS.append(dict(image=image, msgs=msgs, tokenizer=tokenizer, max_new_tokens=max_new_tokens,
                                     sampling=sampling, max_slice_nums=max_slice_nums,
                                     use_image_id=use_image_id, **kwargs))
        assert msgs and msgs[0]["role"] in ("user", "system"), "The role of first msg should be user"
        images, texts = [], []
        for msg in msgs:
            assert msg["role"] in ("system", "user", "assistant")
            for part in [msg["content"]] if isinstance(msg["content"], str) else msg["content"]:
                if isinstance(part, Image.Image):
                    images.append(part)
                elif isinstance(part, str):
                    texts.append(part)
                else:
                    raise TypeError(f"unsupported content {type(part).__name__}")
        weight = self.head.weight
        ids = tokenizer(" ".join(texts), return_tensors="pt")["input_ids"].to(weight.device)
        with torch.no_grad():
            hidden = self.embed(ids).mean(dim=1)[0]
            for im in images:
                rgb = torch.tensor(list(im.convert("RGB").resize((8, 8)).getdata()), dtype=torch.float32)
                hidden = hidden + self.vision((rgb.mean(0) / 255).to(weight.device, weight.dtype))
            logits = self.head(torch.tanh(hidden)).float()
        logits[tokenizer.all_special_ids] = float("-inf")
        words = tokenizer.convert_ids_to_tokens(logits.topk(min(3, max_new_tokens)).indices.tolist())
        return ", ".join(words) + "."
"""

_MINICPM_TOKENIZATION = """
from transformers import PreTrainedTokenizerFast


class MiniCPMOTokenizerFast(PreTrainedTokenizerFast):
    tts_end = "<|tts_eos|>"
"""

_MINICPM_WORDS = ["a", "the", "man", "dog", "plays", "guitar", "piano", "barks", "sings", "video", "describe"]
_MINICPM_SPECIAL = ["<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]


def minicpm_standin(cache: Path, seed: int = 0, revision: str | None = None) -> str:
    """What openbmb/MiniCPM-o-2_6 holds, reduced: config.json whose ``auto_map`` points at
    ``configuration_minicpm.py`` / ``modeling_minicpmo.py`` (a ``PreTrainedModel`` with
    ``chat(msgs=..., tokenizer=...)``, loaded only with ``trust_remote_code=True``),
    model.safetensors, and a word-level tokenizer whose class is the repository's own
    (``tokenization_minicpmo_fast.py``). config.json asks for the audio encoder and the TTS
    head (``init_audio`` / ``init_tts`` true, as the real one); building the TTS head fails,
    as the real one does without its extra packages, so a loader must switch it off."""
    import json

    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import AutoConfig, AutoModel, PreTrainedTokenizerFast

    def write(folder: Path) -> None:
        vocab = {token: i for i, token in enumerate(_MINICPM_SPECIAL + _MINICPM_WORDS)}
        words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        words.normalizer = normalizers.Lowercase()
        words.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=words,
            unk_token="<unk>",
            bos_token="<|im_start|>",
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
        )
        tokenizer.save_pretrained(folder)
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
        tokenizer_config["tokenizer_class"] = "MiniCPMOTokenizerFast"
        tokenizer_config["auto_map"] = {"AutoTokenizer": [None, "tokenization_minicpmo_fast.MiniCPMOTokenizerFast"]}
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
        (folder / "tokenization_minicpmo_fast.py").write_text(_MINICPM_TOKENIZATION)
        (folder / "configuration_minicpm.py").write_text(_MINICPM_CONFIGURATION)
        (folder / "modeling_minicpmo.py").write_text(_MINICPM_MODELING)
        config = {
            "architectures": ["MiniCPMO"],
            "auto_map": {
                "AutoConfig": "configuration_minicpm.MiniCPMOConfig",
                "AutoModel": "modeling_minicpmo.MiniCPMO",
                "AutoModelForCausalLM": "modeling_minicpmo.MiniCPMO",
            },
            "model_type": "minicpmo",
            "vocab_size": len(vocab),
            "hidden_size": 8,
            "init_vision": True,
            "init_audio": True,
            "init_tts": False,
        }
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        torch.manual_seed(seed)
        model = AutoModel.from_config(
            AutoConfig.from_pretrained(folder, trust_remote_code=True), trust_remote_code=True
        )
        model.save_pretrained(folder)
        saved = json.loads((folder / "config.json").read_text())
        saved["init_tts"] = True  # as released: the loader decides what to build
        (folder / "config.json").write_text(json.dumps(saved, indent=2))

    return hub_cache_entry(cache, MINICPM_REPO, write, revision)


def vggish_url_standin(url: str) -> Path:
    """torchvggish's file where ``ssp.hub`` keeps a URL spec's download (what a run that
    fetched it would find), written from the same stand-in as :func:`vggish_standin`."""
    from ssp.hub import url_cache_path

    path = url_cache_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_vggish(path)
    return path


def paper_profile_standins(cache: Path, specs: dict[str, str]) -> dict[str, str]:
    """A stand-in for every weights spec a profile names ({param: spec}, e.g. from
    ``ssp.ops.weights.weight_specs``), filed under the spec's own repository and pinned
    commit (a URL: where its download is kept), so the profile runs unchanged against
    ``HF_HUB_CACHE=cache`` with ``HF_HUB_OFFLINE=1``. Returns {param: what was written}."""
    from ssp.hub import parse_hub_spec

    builders = {
        MASK2FORMER_REPO: mask2former_standin,
        BERT_REPO: bert_standin,
        CLIP_REPO: clip_standin,
        VGGISH_REPO: vggish_standin,
        PERCEIVER_FLOW_REPO: perceiver_flow_standin,
        MINICPM_REPO: minicpm_standin,
    }
    written = {}
    for what, spec in specs.items():
        if spec.startswith("https://"):
            written[what] = str(vggish_url_standin(spec))
            continue
        repo_id, revision = parse_hub_spec(spec)
        if repo_id not in builders:
            raise KeyError(f"{what}: no stand-in for {repo_id}")
        written[what] = builders[repo_id](cache, revision=revision)
    return written
