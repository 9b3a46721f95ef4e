"""The two questions of paper §4.2 (Fig. 7 variants), A2 parsing, the backend protocol and
the frames a backend shows the model."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from ssp.data.avsbench import VideoRecord, read_frame
from ssp.errors import DataError, SSPError

logger = logging.getLogger(__name__)

# Q1 variants of Fig. 7 (a-c verbatim), progressively more precise; d is the paper's
# final Q1, worded as quoted in §4.2.
QUESTION_1_VARIANTS: dict[str, str] = {
    "a": "Describe the video.",
    "b": "Describe the video with every objects location.",
    "c": "Describe the video, give every objects location with their characteristic, "
    'with a format of "A NOUN VERB NOUN".',
    "d": "Describe the video, give every object's location with their characteristic, "
    'with a format of "A NOUN VERB NOUN", for example: "a man plays a guitar".',
}
# Q2 of §4.2. The paper writes "with A_1"; Fig. 7 calls the first answer "Answer1". A1 is
# the assistant turn right before Q2 in the conversation, so the model sees it.
QUESTION_2 = "According to the video, with Answer1, give the NOUN word that potentially produce sound."
# Answer length limit of the model backends (hf, openai): the default of prompts.max_new_tokens.
MAX_NEW_TOKENS = 256


@dataclass(frozen=True)
class Questions:
    """The two questions asked per video; ``version`` names them in the cache."""

    variant: str
    q1: str
    q2: str

    @classmethod
    def from_variant(cls, variant: str) -> "Questions":
        if variant not in QUESTION_1_VARIANTS:
            raise SSPError(f"unknown question variant {variant!r}; choose one of {sorted(QUESTION_1_VARIANTS)}")
        return cls(variant=variant, q1=QUESTION_1_VARIANTS[variant], q2=QUESTION_2)

    @property
    def version(self) -> str:
        digest = hashlib.sha256(f"{self.q1}\n{self.q2}".encode()).hexdigest()[:8]
        return f"q1{self.variant}-{digest}"

    def as_dict(self) -> dict[str, str]:
        return {"q1": self.q1, "q2": self.q2}


# --------------------------------------------------------------------------- A2 parsing

# a short lead-in before a colon ("Answer2:", "The sound-producing objects are:")
_LEAD_IN = re.compile(r"^\s*([^:\n]*):\s*")
_MAX_LEAD_IN_WORDS = 6
_ITEM_SEPARATORS = re.compile(r"[,;\n/&]|\band\b|\bor\b", re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•]+|\d+[.)])\s*")
_NOT_WORD = re.compile(r"[^a-z0-9'\- ]+")
_ARTICLES = ("a", "an", "the")


def parse_nouns(answer: str) -> list[str]:
    """A2's free text -> clean list of nouns: drop a short lead-in ending with a colon,
    split on commas / "and" (and ; / & "or" new lines), drop bullets, punctuation and
    leading articles, lower-case, dedupe in order.

    >>> parse_nouns("Piano, the microphone and a man.")
    ['piano', 'microphone', 'man']
    """
    text = answer.strip()
    lead_in = _LEAD_IN.match(text)
    if lead_in and len(lead_in.group(1).split()) <= _MAX_LEAD_IN_WORDS:
        text = text[lead_in.end() :]
    nouns: list[str] = []
    for item in _ITEM_SEPARATORS.split(text):
        item = _BULLET.sub("", item).lower()
        item = _NOT_WORD.sub(" ", item)
        words = [w.strip("'-") for w in item.split()]
        words = [w for w in words if w]
        while words and words[0] in _ARTICLES:
            words = words[1:]
        noun = " ".join(words)
        if noun and noun not in nouns:
            nouns.append(noun)
    return nouns


# --------------------------------------------------------------------------- backends


class PromptBackend(Protocol):
    """What the stage needs from a backend. ``model`` is recorded in prompts.json;
    ``cache_key`` (a path-safe string) and ``settings`` identify its answers in the cache;
    ``parallel`` says whether several videos may be asked at once (threads)."""

    name: str
    model: str
    cache_key: str
    settings: dict[str, Any]
    parallel: bool

    def answer_q1(self, record: VideoRecord, questions: Questions) -> str: ...

    def answer_q2(self, record: VideoRecord, questions: Questions, a1: str) -> str: ...


def conversation(questions: Questions, a1: str | None = None) -> list[dict[str, str]]:
    """The chat for Q1 (``a1`` None) or for Q2 (Q1, A1 as the assistant's turn, Q2).
    Chat backends attach the video's frames to the first user turn."""
    turns = [{"role": "user", "text": questions.q1}]
    if a1 is not None:
        turns += [{"role": "assistant", "text": a1}, {"role": "user", "text": questions.q2}]
    return turns


def sample_frame_indices(num_frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over the video, first and last included."""
    if num_frames <= 0:
        return []
    if count >= num_frames:
        return list(range(num_frames))
    if count <= 1:
        return [num_frames // 2]
    step = (num_frames - 1) / (count - 1)
    return sorted({round(i * step) for i in range(count)})


def frames_to_show(record: VideoRecord, count: int) -> list[Path]:
    """Paths of the ``count`` frames sampled evenly from the video."""
    if not record.frame_paths:
        raise DataError(Path(record.root) / record.rel_dir, "video has no frames")
    return [record.frame_paths[i] for i in sample_frame_indices(len(record.frame_paths), count)]


def load_frames(record: VideoRecord, count: int) -> list[Image.Image]:
    """The sampled frames of a video as RGB PIL images (a bad frame is a DataError naming it)."""
    return [Image.fromarray(read_frame(path, record.root)) for path in frames_to_show(record, count)]
