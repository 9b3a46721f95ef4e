"""Prompt backend: a Hugging Face image-text-to-text model run locally.

Any model that ``AutoModelForImageTextToText`` and ``AutoProcessor`` load and whose
processor has a chat template (LLaVA, Qwen2.5-VL, Idefics3/SmolVLM, Gemma 3, ...).
The video's frames, sampled evenly, go into the first user turn as images; A1 is the
assistant turn before Q2. Greedy decoding, so answers are reproducible. CUDA + bf16 when
present. The model is loaded on the first question, so a fully cached run never loads it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from ssp.data.avsbench import VideoRecord
from ssp.errors import SSPError
from ssp.preprocess.prompts.questions import MAX_NEW_TOKENS, Questions, conversation, load_frames

logger = logging.getLogger(__name__)


@dataclass
class HFConfig:
    model: str  # local folder (or a hub id already in the local cache)
    frames_per_video: int  # the prompts param of that name
    max_new_tokens: int = MAX_NEW_TOKENS
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    trust_remote_code: bool = False


class HFBackend:
    name = "hf"
    parallel = False  # one model, one video at a time

    def __init__(self, config: HFConfig):
        self.config = config
        self.model = config.model
        self.cache_key = config.model
        self.settings = {"frames_per_video": config.frames_per_video, "max_new_tokens": config.max_new_tokens}
        self._processor = None
        self._network = None
        self._lock = threading.Lock()

    def _load(self):
        import torch  # noqa: PLC0415  (optional backend: hf only; torch takes seconds to import)
        from transformers import (  # noqa: PLC0415  (optional backend: hf only; the model classes take seconds)
            AutoModelForImageTextToText,
            AutoProcessor,
        )

        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        source = self.config.model
        local_only = Path(source).exists()
        try:
            processor = AutoProcessor.from_pretrained(
                source, trust_remote_code=self.config.trust_remote_code, local_files_only=local_only
            )
            network = AutoModelForImageTextToText.from_pretrained(
                source, dtype=dtype, trust_remote_code=self.config.trust_remote_code, local_files_only=local_only
            )
        except (OSError, ValueError) as e:
            raise SSPError(f"cannot load the hf model {source!r}: {e}") from e
        if getattr(processor, "chat_template", None) is None:
            raise SSPError(f"the processor of {source!r} has no chat template")
        network.to(device).eval()
        logger.info("loaded %s on %s (%s)", source, device, dtype)
        self._processor, self._network = processor, network

    def chat(self, record: VideoRecord, turns: list[dict[str, str]]) -> str:
        """Greedy answer of the model to ``turns``, the frames attached to the first user turn."""
        import torch  # noqa: PLC0415  (optional backend: hf only; torch takes seconds to import)

        frames = load_frames(record, self.config.frames_per_video)
        messages = []
        for i, turn in enumerate(turns):
            content = [{"type": "image", "image": im} for im in frames] if i == 0 else []
            content.append({"type": "text", "text": turn["text"]})
            messages.append({"role": turn["role"], "content": content})
        with self._lock:
            if self._network is None:
                self._load()
            network = self._network
            inputs = self._processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            )
            inputs = inputs.to(network.device, dtype=network.dtype)
            with torch.inference_mode():
                output = network.generate(**inputs, max_new_tokens=self.config.max_new_tokens, do_sample=False)
            new_tokens = output[0, inputs["input_ids"].shape[1] :]
            return self._processor.decode(new_tokens, skip_special_tokens=True).strip()

    def answer_q1(self, record: VideoRecord, questions: Questions) -> str:
        return self.chat(record, conversation(questions))

    def answer_q2(self, record: VideoRecord, questions: Questions, a1: str) -> str:
        return self.chat(record, conversation(questions, a1))
