"""Prompt backend: an OpenAI-compatible chat-completions endpoint (vLLM, Ollama, LM Studio,
a hosted API, ...).

``POST {base_url}/chat/completions`` with the video's frames as base64 JPEG data URLs
(``image_url`` content parts) in the first user turn, A1 as the assistant turn before Q2,
temperature 0. Transient failures (HTTP 5xx, 429, timeouts, connection errors) are
retried with exponential backoff and jitter; other 4xx answers and malformed replies
fail the video at once with a message naming it. After ``give_up_after`` questions in
a row have failed, the endpoint is taken for dead and the remaining videos fail at once
("not asked") instead of each waiting through its retries.

Everything comes from the ``prompts`` params (model, base_url, timeouts, retries), except
the API key, a secret: it is read from the environment variable that
``prompts.api_key_env`` names (default ``OPENAI_API_KEY``; "" = send no key).
``$OPENAI_BASE_URL`` / ``$OPENAI_MODEL`` are not read (a run must not depend on an
untracked variable); a warning says so when they are set.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field

import httpx

from ssp.data.avsbench import VideoRecord
from ssp.errors import SSPError
from ssp.preprocess.prompts.questions import MAX_NEW_TOKENS, Questions, conversation, load_frames

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://localhost:8000/v1"  # vLLM's default; Ollama: http://localhost:11434/v1
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
IGNORED_ENV = {"OPENAI_BASE_URL": "prompts.base_url", "OPENAI_MODEL": "prompts.model"}
MAX_BACKOFF_S = 60.0


class EndpointError(SSPError):
    """The endpoint failed for one video (after retries, or with a non-retryable answer);
    the stage reports it under the video's name."""


@dataclass
class OpenAIConfig:
    model: str
    frames_per_video: int  # the prompts param of that name
    base_url: str = DEFAULT_BASE_URL
    api_key_env: str = DEFAULT_API_KEY_ENV  # NAME of the environment variable holding the key ("" = none)
    api_key: str | None = field(default=None, repr=False)  # explicit key (programmatic use); wins over the env
    max_new_tokens: int = MAX_NEW_TOKENS
    jpeg_quality: int = 90
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    max_retries: int = 4  # retries after the first attempt
    backoff: float = 1.0  # first retry delay (s); doubles each retry, plus up to 100% jitter
    give_up_after: int = 3  # after this many questions failed in a row, stop asking (0: never)

    def __post_init__(self) -> None:
        if not self.model:
            raise SSPError("backend openai needs prompts.model: the model name the endpoint serves")

    def resolved_api_key(self) -> str | None:
        """The explicit key, else the value of ``$api_key_env`` (None when unset)."""
        if self.api_key:
            return self.api_key
        if not self.api_key_env:
            return None
        return os.environ.get(self.api_key_env) or None


def warn_ignored_env() -> None:
    """A warning for each formerly read variable that is set but no longer used."""
    for variable, param in IGNORED_ENV.items():
        if os.environ.get(variable):
            logger.warning("$%s is set but not read: set %s in params (--set %s=...)", variable, param, param)


def jpeg_data_url(image, quality: int = 90) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class OpenAIBackend:
    name = "openai"
    parallel = True  # httpx.Client is thread-safe; --workers requests in flight

    def __init__(self, config: OpenAIConfig, client: httpx.Client | None = None):
        self.config = config
        self.model = config.model
        self.cache_key = config.model
        self.settings = {"frames_per_video": config.frames_per_video, "max_new_tokens": config.max_new_tokens}
        self._failures_in_a_row = 0
        self._lock = threading.Lock()
        api_key = config.resolved_api_key()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.Client(
            base_url=config.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
        )

    def close(self) -> None:
        self.client.close()

    def request_body(self, record: VideoRecord, turns: list[dict[str, str]]) -> dict:
        frames = load_frames(record, self.config.frames_per_video)
        messages = []
        for i, turn in enumerate(turns):
            if i == 0:
                content = [{"type": "text", "text": turn["text"]}] + [
                    {"type": "image_url", "image_url": {"url": jpeg_data_url(im, self.config.jpeg_quality)}}
                    for im in frames
                ]
            else:
                content = turn["text"]
            messages.append({"role": turn["role"], "content": content})
        return {
            "model": self.config.model,
            "messages": messages,
            "max_tokens": self.config.max_new_tokens,
            "temperature": 0.0,
        }

    def chat(self, record: VideoRecord, turns: list[dict[str, str]]) -> str:
        # A dead endpoint would cost every remaining video its full retry schedule:
        # after `give_up_after` failures in a row the remaining videos are not asked.
        if 0 < self.config.give_up_after <= self._failures_in_a_row:
            raise EndpointError(
                f"not asked: {self._failures_in_a_row} questions in a row failed at "
                f"{self.config.base_url} (is the endpoint up?)"
            )
        try:
            answer = self._chat(record, turns)
        except EndpointError:
            with self._lock:
                self._failures_in_a_row += 1
            raise
        with self._lock:
            self._failures_in_a_row = 0
        return answer

    def _chat(self, record: VideoRecord, turns: list[dict[str, str]]) -> str:
        body = self.request_body(record, turns)
        video = record.rel_dir
        attempts = self.config.max_retries + 1
        for attempt in range(1, attempts + 1):
            delay = None
            try:
                response = self.client.post("chat/completions", json=body)
            except httpx.TimeoutException as e:
                problem = f"timed out ({type(e).__name__})"
            except httpx.TransportError as e:
                problem = f"connection error ({type(e).__name__}: {e})"
            else:
                if response.status_code == 200:
                    return self._parse(response)
                problem = f"HTTP {response.status_code}: {response.text[:200].strip()}"
                if response.status_code != 429 and response.status_code < 500:
                    raise EndpointError(f"endpoint {self.config.base_url} answered {problem}")
                delay = _retry_after(response)
            if attempt == attempts:
                raise EndpointError(f"endpoint {self.config.base_url} {problem}, gave up after {attempts} attempts")
            if delay is None:
                base = self.config.backoff * 2 ** (attempt - 1)
                delay = base + random.uniform(0, base)
            delay = min(delay, MAX_BACKOFF_S)
            logger.warning("%s: %s; retry %d/%d in %.1f s", video, problem, attempt, attempts - 1, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _parse(self, response: httpx.Response) -> str:
        try:
            reply = response.json()
        except ValueError:
            raise EndpointError(f"malformed reply (not JSON): {response.text[:200]!r}") from None
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"malformed reply (no choices[0].message.content): {str(reply)[:200]}") from None
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not isinstance(content, str):
            raise EndpointError(f"malformed reply (content is {type(content).__name__})")
        return content.strip()

    def answer_q1(self, record: VideoRecord, questions: Questions) -> str:
        return self.chat(record, conversation(questions))

    def answer_q2(self, record: VideoRecord, questions: Questions, a1: str) -> str:
        return self.chat(record, conversation(questions, a1))
