"""MLLM text prompts (paper §4.2): per video, Q1 asks for a description (A1), then Q2,
with A1 in the conversation, asks for the nouns that potentially produce sound (A2).

Output, per video: ``{out}/{rel_dir}/prompts.json``::

    {"a1": "A man is playing a piano ...", "a2": ["piano", "microphone", "man"],
     "a2_raw": "piano, microphone, man.", "backend": "openai", "model": "...",
     "question_variant": "d", "questions": {"q1": "...", "q2": "..."}}

Backends (the ``backend`` param; every knob is a field of the ``prompts`` params section,
:class:`ssp.params.PromptsParams`, read with ``--params`` / ``--set prompts.KEY=VALUE``):

- ``hf``: a Hugging Face image-text-to-text model run locally (:mod:`ssp.preprocess.prompts.backends.hf`).
- ``openai``: an OpenAI-compatible chat-completions endpoint, e.g. vLLM or Ollama
  (:mod:`ssp.preprocess.prompts.backends.openai`).
- ``scene``: the generated benchmark's ``scene.json`` answers, degraded by the quality
  knob (mimics the paper's prompt-quality study, Fig. 6/7).
- ``none``: writes empty prompts (``a1 = ""``, ``a2 = []``) so that the ablation rows
  without text still find one prompts file per video; a model configured without text
  never reads them.

Answers are cached per video in
``{cache_dir}/{backend}/{model_slug}/{question_version}/{rel_dir}.json`` and written as
soon as each answer arrives (A1 alone if Q2 then fails), so a run that dies keeps every
answer already obtained and a re-run asks only for the missing ones. The question
version hashes the exact question texts, so editing a question re-asks everything.
The default cache dir is ``{out}/.cache``; when DVC owns ``{out}`` (DVC clears a
stage's outputs before re-running it) point ``--cache-dir`` outside it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from tqdm.auto import tqdm

from ssp.data.avsbench import VideoRecord, load_records
from ssp.errors import DataError, SSPError
from ssp.fileio import write_json
from ssp.params import PromptsParams, add_params_arguments, stage_params
from ssp.preprocess.common import (
    VideoOutputs,
    inputs_digest,
    is_up_to_date,
    run_per_video,
    stage_output_dir,
    stamp_path,
)
from ssp.preprocess.prompts.backends.hf import HFBackend, HFConfig
from ssp.preprocess.prompts.backends.openai import OpenAIBackend, OpenAIConfig
from ssp.preprocess.prompts.backends.scene import MISSING_SCENE, SCENE_FILE, SceneBackend
from ssp.preprocess.prompts.questions import MAX_NEW_TOKENS, PromptBackend, Questions, frames_to_show, parse_nouns

logger = logging.getLogger(__name__)

BACKENDS = ("hf", "openai", "scene", "none")
PROMPTS_FILE = "prompts.json"
STAGE = "prompts"


# --------------------------------------------------------------------------- cache


def model_slug(model: str) -> str:
    """A path-safe name for a model id or local path (long ones keep a hash suffix)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_.") or "model"
    if len(slug) > 80:
        slug = slug[:60] + "-" + hashlib.sha256(model.encode()).hexdigest()[:12]
    return slug


@dataclass
class AnswerCache:
    """Per-video answers on disk: ``{root}/{backend}/{model_slug}/{question_version}/{rel_dir}.json``.
    An entry whose settings differ (e.g. another frame count) counts as missing."""

    root: Path
    backend: str
    cache_key: str
    questions: Questions
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return Path(self.root) / self.backend / model_slug(self.cache_key) / self.questions.version

    def path(self, record: VideoRecord) -> Path:
        return self.folder / f"{record.rel_dir}.json"

    def load(self, record: VideoRecord) -> dict[str, Any]:
        path = self.path(record)
        if not path.is_file():
            return {}
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            logger.warning("%s: unreadable cache entry, asking again", path)
            return {}
        if entry.get("settings") != self.settings or entry.get("questions") != self.questions.as_dict():
            return {}
        return entry

    def save(self, record: VideoRecord, a1: str | None, a2_raw: str | None) -> None:
        write_json(
            self.path(record),
            {
                "uid": record.uid,
                "settings": self.settings,
                "questions": self.questions.as_dict(),
                "a1": a1,
                "a2_raw": a2_raw,
            },
        )


# --------------------------------------------------------------------------- the stage


@dataclass
class PromptsConfig:
    out_dir: Path
    question_variant: str  # the prompts param of that name (Q1 wording of Fig. 7)
    cache_dir: Path | None = None  # default: {out_dir}/.cache
    workers: int = 1  # videos asked at once (backends that allow it)

    @property
    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir is not None else Path(self.out_dir) / ".cache"


@dataclass
class PromptsSummary:
    videos: int = 0
    asked: int = 0  # questions sent to the backend in this run
    written: int = 0  # videos whose prompts.json was (re)written


def prompts_record(a1: str, a2_raw: str, backend: str, model: str, questions: Questions) -> dict[str, Any]:
    return {
        "a1": a1.strip(),
        "a2": parse_nouns(a2_raw),
        "a2_raw": a2_raw.strip(),
        "backend": backend,
        "model": model,
        "question_variant": questions.variant,
        "questions": questions.as_dict(),
    }


def _inputs(record: VideoRecord, backend: PromptBackend | None) -> list[Path]:
    """Files a video's prompts depend on (for the up-to-date stamp)."""
    if backend is None:
        return []
    if backend.name == "scene":
        paths = [Path(record.root) / record.rel_dir / SCENE_FILE]
    else:
        paths = frames_to_show(record, backend.settings.get("frames_per_video", 1))
    for path in paths:
        if not Path(path).is_file():
            raise DataError(path, MISSING_SCENE if backend.name == "scene" else "missing")
    return paths


def _run_threads(
    records: Sequence[VideoRecord], fn: Callable[[VideoRecord], int], workers: int, desc: str
) -> list[int]:
    """:func:`run_per_video` with threads instead of processes: for I/O-bound backends
    (HTTP) that share one client. Same contract: failures are collected and reported
    together, naming each video; an interrupt stops at once."""
    results: dict[int, int] = {}
    failures: list[tuple[int, str]] = []
    with tqdm(total=len(records), desc=desc, unit="video") as bar, ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(fn, record): i for i, record in enumerate(records)}
        try:
            for future in as_completed(futures):
                i = futures[future]
                try:
                    results[i] = future.result()
                except Exception as e:  # noqa: BLE001 - reported per video below
                    failures.append((i, str(e) if isinstance(e, SSPError) else f"{type(e).__name__}: {e}"))
                bar.update()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    if failures:
        lines = [f"  {records[i].rel_dir}: {message}" for i, message in sorted(failures)]
        raise SSPError(
            f"{desc}: {len(failures)} of {len(records)} failed (the others are written):\n" + "\n".join(lines)
        )
    return [results[i] for i in range(len(records))]


def run_prompts(records: Iterable[VideoRecord], backend: PromptBackend | None, config: PromptsConfig) -> PromptsSummary:
    """Ask Q1 then Q2 for every video (cached answers are reused, answers are cached as
    soon as they arrive), write each video's prompts.json, and raise one SSPError naming
    every video that failed (their prompts.json is not written; the others are).
    ``backend`` None means ``none``: empty prompts."""
    records = sorted(records, key=lambda r: r.rel_dir)
    questions = Questions.from_variant(config.question_variant)
    name = backend.name if backend is not None else "none"
    model = backend.model if backend is not None else ""
    params = {
        "backend": name,
        "model": model,
        "questions": questions.version,
        "settings": backend.settings if backend is not None else {},
    }
    cache = (
        AnswerCache(config.resolved_cache_dir, name, backend.cache_key, questions, backend.settings)
        if backend is not None
        else None
    )

    def process(record: VideoRecord) -> int:
        """Returns the number of questions asked for this video (-1: already up to date)."""
        out_dir = stage_output_dir(config.out_dir, record)
        stamp = inputs_digest(_inputs(record, backend), params)
        if is_up_to_date(out_dir, STAGE, stamp):
            return -1
        # out of date: drop the old prompts now, so that if this video fails no stale
        # prompts (other questions, other model) stay behind for downstream stages
        stamp_path(out_dir, STAGE).unlink(missing_ok=True)
        (out_dir / PROMPTS_FILE).unlink(missing_ok=True)
        asked = 0
        a1, a2_raw = "", ""
        if backend is not None:
            entry = cache.load(record)
            a1, a2_raw = entry.get("a1"), entry.get("a2_raw")
            if a1 is None:
                a1 = backend.answer_q1(record, questions)
                cache.save(record, a1, None)  # keep A1 even if Q2 fails below
                asked += 1
            if a2_raw is None:
                a2_raw = backend.answer_q2(record, questions, a1)
                cache.save(record, a1, a2_raw)
                asked += 1
        with VideoOutputs(out_dir, STAGE, stamp) as outputs:
            outputs.write_json(PROMPTS_FILE, prompts_record(a1, a2_raw, name, model, questions))
        return asked

    desc = f"prompts ({name})"
    parallel = backend is None or backend.parallel
    try:
        if config.workers > 1 and parallel and len(records) > 1:
            results = _run_threads(records, process, config.workers, desc)
        else:
            results = run_per_video(records, process, workers=1, desc=desc, name=lambda r: r.rel_dir)
    except SSPError as e:
        if cache is None:
            raise
        raise SSPError(
            f"{e}\nEvery answer obtained is cached in {cache.folder}; a re-run asks only for the missing ones."
        ) from None
    return PromptsSummary(
        videos=len(records), asked=sum(max(0, n) for n in results), written=sum(n >= 0 for n in results)
    )


# Execution options of the model backends: flags of `ssp prompts`, not params (where the
# model runs and how to reach it). None: the backend config's own default.
BACKEND_OPTIONS = (
    "max_new_tokens",
    "device",
    "trust_remote_code",
    "base_url",
    "api_key",
    "connect_timeout",
    "read_timeout",
    "max_retries",
    "backoff",
    "give_up_after",
)


def build_backend(prompts: PromptsParams, options: Any = None) -> PromptBackend | None:
    """The backend that the ``prompts`` params name (``none``: None), with its knobs from
    ``prompts`` and the execution options (:data:`BACKEND_OPTIONS`) from the attributes of
    ``options`` (e.g. the parsed command line); a missing or None one takes the backend's
    default."""
    given = {name: getattr(options, name, None) for name in BACKEND_OPTIONS}
    given = {name: value for name, value in given.items() if value is not None}
    model = prompts.model or None
    if prompts.backend == "none":
        return None
    if prompts.backend == "scene":
        return SceneBackend(quality=prompts.quality, seed=prompts.seed)
    if prompts.backend == "hf":
        if not model:
            raise SSPError("backend hf needs prompts.model (a local model folder or a model id)")
        hf_options = {k: v for k, v in given.items() if k in ("max_new_tokens", "device", "trust_remote_code")}
        return HFBackend(HFConfig(model=model, frames_per_video=prompts.frames_per_video, **hf_options))
    if prompts.backend == "openai":
        openai_options = {k: v for k, v in given.items() if k not in ("device", "trust_remote_code")}
        return OpenAIBackend(
            OpenAIConfig.from_env(model=model, frames_per_video=prompts.frames_per_video, **openai_options)
        )
    raise SSPError(f"unknown backend {prompts.backend!r}; choose one of {BACKENDS}")


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data_root", type=Path, help="dataset root (either AVSBench layout, or `ssp synth` output)")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder; gets {out}/{video dir}/prompts.json, mirroring the dataset",
    )
    add_params_arguments(
        parser,
        "prompts.quality=0.5",
        moved={
            "--backend": "prompts.backend",
            "--question-variant": "prompts.question_variant",
            "--model": "prompts.model",
            "--frames-per-video": "prompts.frames_per_video",
            "--quality": "prompts.quality",
            "--seed": "prompts.seed",
        },
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="videos asked at once (openai and scene; hf runs one at a time). Default: 1",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="answer cache (reused across runs). Default: {out}/.cache"
    )
    parser.epilog = (
        "Reads the prompts section of the params file: backend (hf | openai | scene | none), "
        "question_variant (a-d), model (hf: local model folder or hub id if cached; openai: the "
        "served model name, else $OPENAI_MODEL), frames_per_video, quality and seed (scene); see "
        "ssp/params.py (PromptsParams)."
    )
    add_backend_options(parser)


def add_backend_options(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """How to run or reach the MLLM (not params: they do not change the answers' meaning):
    the answer length, the hf backend's device and remote-code permission, the openai
    endpoint and its retries. Shared by ``ssp prompts`` and ``ssp predict`` (which has its
    own ``--device``: ``device=False``)."""
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help=f"answer length limit (hf, openai). Default: {MAX_NEW_TOKENS}"
    )
    hf = parser.add_argument_group("hf backend")
    if device:
        hf.add_argument(
            "--device",
            default=None,
            help=f"auto (CUDA + bf16 when present, else CPU), cpu, cuda, cuda:1... Default: {HFConfig.device}",
        )
    hf.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow the model folder's own Python code to run (only for models you trust)",
    )
    oa = parser.add_argument_group("openai backend")
    oa.add_argument(
        "--base-url",
        default=None,
        help="endpoint base URL, e.g. http://localhost:8000/v1 (default: $OPENAI_BASE_URL, "
        f"else {OpenAIConfig.base_url})",
    )
    oa.add_argument(
        "--api-key", default=None, help="API key (default: $OPENAI_API_KEY; prefer the variable, a flag shows in `ps`)"
    )
    oa.add_argument(
        "--connect-timeout",
        type=float,
        default=None,
        help=f"seconds to connect. Default: {OpenAIConfig.connect_timeout:g}",
    )
    oa.add_argument(
        "--read-timeout",
        type=float,
        default=None,
        help=f"seconds to wait for an answer. Default: {OpenAIConfig.read_timeout:g}",
    )
    oa.add_argument(
        "--max-retries",
        type=int,
        default=None,
        help=f"retries on 5xx/429/timeouts/connection errors, exponential backoff. Default: {OpenAIConfig.max_retries}",
    )
    oa.add_argument(
        "--backoff",
        type=float,
        default=None,
        help=f"first retry delay in seconds (doubles each retry, plus jitter). Default: {OpenAIConfig.backoff:g}",
    )
    oa.add_argument(
        "--give-up-after",
        type=int,
        default=None,
        help="after this many questions in a row failed (retries included), take the endpoint "
        "for dead and do not ask the remaining videos; 0 = never. "
        f"Default: {OpenAIConfig.give_up_after}",
    )


def main(args: argparse.Namespace) -> int:
    prompts = stage_params(args).prompts
    if not Path(args.data_root).is_dir():
        raise DataError(args.data_root, "dataset root not found")
    records = load_records(args.data_root)
    backend = build_backend(prompts, args)
    config = PromptsConfig(
        out_dir=args.out,
        question_variant=prompts.question_variant,
        cache_dir=args.cache_dir,
        workers=max(1, args.workers),
    )
    try:
        summary = run_prompts(records, backend, config)
    finally:
        if hasattr(backend, "close"):
            backend.close()
    logger.info(
        "prompts: %d videos, %d questions asked, %d prompts.json written to %s",
        summary.videos,
        summary.asked,
        summary.written,
        args.out,
    )
    return 0
