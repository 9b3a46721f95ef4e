"""Prompt backend: a Hugging Face vision-language model run locally, in one of two styles
(params ``prompts.hf_api``):

- ``chat_template``: any model that ``AutoModelForImageTextToText`` and ``AutoProcessor``
  load and whose processor has a chat template (LLaVA, Qwen2.5-VL, Idefics3/SmolVLM,
  Gemma 3, ...). Greedy decoding.
- ``model_chat``: a model whose repository ships its own code and chat call, as the
  paper's MiniCPM-o-2.6 (and MiniCPM-V): ``AutoModel`` + ``AutoTokenizer`` with
  ``trust_remote_code``, then ``model.chat(msgs=[{"role": "user", "content": [PIL
  images..., question]}, ...], tokenizer=tok, sampling=False, max_new_tokens=N,
  **prompts.chat_options)``. ``sampling=False`` is MiniCPM's deterministic decoding (beam
  search); answers are cached, so they must not depend on the draw. A config with
  ``init_audio`` / ``init_tts`` (MiniCPM-o) gets both off: the stage shows frames and
  text only, and the TTS head needs packages the pipeline does not install.
- ``auto``: ``model_chat`` when the model's ``config.json`` maps ``AutoModel`` to the
  repository's code (``auto_map``) and not ``AutoModelForImageTextToText``, else
  ``chat_template``.

The model (``prompts.model``) is a local folder or a hub id ``org/name@revision``,
resolved by :func:`ssp.hub.resolve_weights` when the backend is built (the record
-- repository, commit, sha256 per file -- identifies the answers in the cache and goes
into the stage's summary); it is loaded on the first question, so a fully cached run never
loads it. The video's frames, sampled evenly, go into the first user turn; A1 is the
assistant turn before Q2. CUDA + bf16 when present. Remote code runs only with
``prompts.trust_remote_code: true``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from ssp.data.avsbench import VideoRecord
from ssp.errors import DataError, SSPError
from ssp.hub import ResolvedWeights, resolve_weights
from ssp.preprocess.prompts.questions import MAX_NEW_TOKENS, Questions, conversation, load_frames

logger = logging.getLogger(__name__)

HF_APIS = ("auto", "chat_template", "model_chat")
# keyword arguments of model.chat that the backend sets itself
_OWN_CHAT_ARGUMENTS = ("image", "msgs", "tokenizer", "max_new_tokens")


@dataclass
class HFConfig:
    model: str  # the prompts param: local folder, or hub id org/name@revision
    frames_per_video: int  # the prompts param of that name
    max_new_tokens: int = MAX_NEW_TOKENS
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    trust_remote_code: bool = False
    hf_api: str = "auto"  # auto | chat_template | model_chat
    chat_options: dict[str, Any] = field(default_factory=dict)  # model_chat: extra model.chat arguments

    def __post_init__(self) -> None:
        if self.hf_api not in HF_APIS:
            raise SSPError(f"unknown prompts.hf_api {self.hf_api!r}; choose one of {', '.join(HF_APIS)}")
        clash = sorted(set(self.chat_options) & set(_OWN_CHAT_ARGUMENTS))
        if clash:
            raise SSPError(
                f"prompts.chat_options may not set {', '.join(clash)} (the backend sets them; "
                "the answer length is prompts.max_new_tokens)"
            )


def detect_api(resolved: ResolvedWeights) -> str:
    """``model_chat`` when config.json maps AutoModel to the repository's own code and
    offers no AutoModelForImageTextToText, else ``chat_template``."""
    path = resolved.file("config.json")
    if path is None:
        raise DataError(resolved.path, f"{resolved.spec}: no config.json (not a Hugging Face model folder)")
    try:
        auto_map = json.loads(path.read_text()).get("auto_map") or {}
    except (OSError, ValueError) as err:
        raise DataError(path, f"unreadable model config: {err}") from err
    if "AutoModel" in auto_map and "AutoModelForImageTextToText" not in auto_map:
        return "model_chat"
    return "chat_template"


def weights_identity(resolved: ResolvedWeights) -> dict[str, Any]:
    """Repository, commit and one digest of every file: what makes the answers (not where
    the files lie)."""
    files = json.dumps(resolved.files, sort_keys=True).encode()
    return {
        "source": resolved.source,
        "repo_id": resolved.repo_id,
        "revision": resolved.revision,
        "files_sha256": hashlib.sha256(files).hexdigest(),
    }


class HFBackend:
    name = "hf"
    parallel = False  # one model, one video at a time

    def __init__(self, config: HFConfig, weights: ResolvedWeights | None = None):
        """``weights``: ``config.model`` already resolved (else resolved here)."""
        self.config = config
        self.model = config.model
        self.cache_key = config.model
        self.weights = weights or resolve_weights(config.model, "prompts.model")
        self.api = config.hf_api if config.hf_api != "auto" else detect_api(self.weights)
        self.settings: dict[str, Any] = {
            "frames_per_video": config.frames_per_video,
            "max_new_tokens": config.max_new_tokens,
            "hf_api": self.api,
            "weights": weights_identity(self.weights),
        }
        if self.api == "model_chat" and config.chat_options:
            self.settings["chat_options"] = dict(config.chat_options)
        self._processor = None  # chat_template: the processor; model_chat: the tokenizer
        self._network = None
        self._lock = threading.Lock()

    def _device_and_dtype(self):
        import torch  # noqa: PLC0415  (optional backend: hf only; torch takes seconds to import)

        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return device, torch.bfloat16 if device.startswith("cuda") else torch.float32

    def _load(self) -> None:
        device, dtype = self._device_and_dtype()
        source = str(self.weights.path)
        remote = self.config.trust_remote_code
        try:
            if self.api == "model_chat":
                processor, network = _load_model_chat(source, dtype, remote)
            else:
                processor, network = _load_chat_template(source, dtype, remote)
        except (OSError, ValueError, ImportError) as e:
            hint = ""
            if "trust_remote_code" in str(e) and not remote:
                hint = " (the model ships its own code: set prompts.trust_remote_code=true if you trust it)"
            raise SSPError(f"cannot load the hf model {self.config.model!r}: {e}{hint}") from e
        network.to(device).eval()
        logger.info("loaded %s (%s, %s) on %s (%s)", self.config.model, self.api, source, device, dtype)
        self._processor, self._network = processor, network

    def chat(self, record: VideoRecord, turns: list[dict[str, str]]) -> str:
        """The model's answer to ``turns``, the frames attached to the first user turn."""
        frames = load_frames(record, self.config.frames_per_video)
        with self._lock:
            if self._network is None:
                self._load()
            if self.api == "model_chat":
                return self._model_chat(frames, turns)
            return self._chat_template(frames, turns)

    def _chat_template(self, frames: list, turns: list[dict[str, str]]) -> str:
        import torch  # noqa: PLC0415  (optional backend: hf only; torch takes seconds to import)

        messages = []
        for i, turn in enumerate(turns):
            content = [{"type": "image", "image": im} for im in frames] if i == 0 else []
            content.append({"type": "text", "text": turn["text"]})
            messages.append({"role": turn["role"], "content": content})
        network = self._network
        inputs = self._processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        inputs = inputs.to(network.device, dtype=network.dtype)
        with torch.inference_mode():
            output = network.generate(**inputs, max_new_tokens=self.config.max_new_tokens, do_sample=False)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        return self._processor.decode(new_tokens, skip_special_tokens=True).strip()

    def _model_chat(self, frames: list, turns: list[dict[str, str]]) -> str:
        import torch  # noqa: PLC0415  (optional backend: hf only; torch takes seconds to import)

        msgs = [
            {"role": turn["role"], "content": [*frames, turn["text"]] if i == 0 else [turn["text"]]}
            for i, turn in enumerate(turns)
        ]
        options = {"sampling": False, **self.config.chat_options}
        with torch.inference_mode():
            answer = self._network.chat(
                image=None,
                msgs=msgs,
                tokenizer=self._processor,
                max_new_tokens=self.config.max_new_tokens,
                **options,
            )
        if not isinstance(answer, str):
            answer = getattr(answer, "text", answer)  # return_dict=True: an object with .text
        if not isinstance(answer, str):
            raise SSPError(
                f"model.chat of {self.config.model!r} returned {type(answer).__name__}, not text "
                "(check prompts.chat_options: no streaming)"
            )
        return answer.strip()

    def answer_q1(self, record: VideoRecord, questions: Questions) -> str:
        return self.chat(record, conversation(questions))

    def answer_q2(self, record: VideoRecord, questions: Questions, a1: str) -> str:
        return self.chat(record, conversation(questions, a1))


def _load_chat_template(source: str, dtype, trust_remote_code: bool):
    from transformers import (  # noqa: PLC0415  (optional backend: hf only; the model classes take seconds)
        AutoModelForImageTextToText,
        AutoProcessor,
    )

    processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=True)
    network = AutoModelForImageTextToText.from_pretrained(
        source, dtype=dtype, trust_remote_code=trust_remote_code, local_files_only=True
    )
    if getattr(processor, "chat_template", None) is None:
        raise SSPError(f"the processor of {source!r} has no chat template (prompts.hf_api: model_chat?)")
    return processor, network


def _load_model_chat(source: str, dtype, trust_remote_code: bool):
    from transformers import (  # noqa: PLC0415  (optional backend: hf only; the model classes take seconds)
        AutoConfig,
        AutoModel,
        AutoTokenizer,
    )

    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=True)
    for switch in ("init_audio", "init_tts"):  # MiniCPM-o: frames and text only
        if hasattr(config, switch):
            setattr(config, switch, False)
    network = AutoModel.from_pretrained(
        source, config=config, dtype=dtype, trust_remote_code=trust_remote_code, local_files_only=True
    )
    if not callable(getattr(network, "chat", None)):
        raise SSPError(
            f"{type(network).__name__} of {source!r} has no chat(msgs, tokenizer) method "
            "(prompts.hf_api: chat_template?)"
        )
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=True)
    return tokenizer, network
