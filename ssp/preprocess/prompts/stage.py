"""MLLM text prompts (paper §4.2): per video, Q1 asks for a description (A1), then Q2,
with A1 in the conversation, asks for the nouns that potentially produce sound (A2).

Output, per video: ``{out}/{rel_dir}/prompts.json``::

    {"a1": "A man is playing a piano ...", "a2": ["piano", "microphone", "man"],
     "a2_raw": "piano, microphone, man.", "backend": "hf", "model": "org/name@<commit>",
     "revision": "<commit>", "question_variant": "d", "questions": {"q1": "...", "q2": "..."}}

and ``{out}/prompts_summary.json``: the backend, its settings, the resolved model weights
(hf: repository, commit, sha256 per file; not the local path), the questions and the
number of videos -- not the run's counts, so that a re-run that asks nothing leaves the
folder's content (and the fingerprint later stages depend on) as it was.

Backends (the ``backend`` param; every knob -- model, device, remote code, endpoint,
timeouts -- is a field of the ``prompts`` params section, :class:`ssp.params.PromptsParams`,
read with ``--params`` / ``--set prompts.KEY=VALUE``; only the API key is an environment
variable, the one ``prompts.api_key_env`` names):

- ``hf``: a Hugging Face vision-language model run locally, by the chat template of its
  processor or by the repository's own ``model.chat`` (MiniCPM-o, the paper's)
  (:mod:`ssp.preprocess.prompts.backends.hf`).
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
from ssp.params import PromptsParams, add_moved_flags, add_params_arguments, stage_params
from ssp.preprocess.common import (
    VideoOutputs,
    inputs_digest,
    is_up_to_date,
    run_per_video,
    stage_output_dir,
    stamp_path,
)
from ssp.preprocess.prompts.backends.hf import HFBackend, HFConfig
from ssp.preprocess.prompts.backends.openai import (
    DEFAULT_API_KEY_ENV,
    OpenAIBackend,
    OpenAIConfig,
    warn_ignored_env,
)
from ssp.preprocess.prompts.backends.scene import MISSING_SCENE, SCENE_FILE, SceneBackend
from ssp.preprocess.prompts.questions import PromptBackend, Questions, frames_to_show, parse_nouns

logger = logging.getLogger(__name__)

BACKENDS = ("hf", "openai", "scene", "none")
PROMPTS_FILE = "prompts.json"
SUMMARY_NAME = "prompts_summary.json"
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


def prompts_record(
    a1: str, a2_raw: str, backend: str, model: str, questions: Questions, revision: str | None = None
) -> dict[str, Any]:
    return {
        "a1": a1.strip(),
        "a2": parse_nouns(a2_raw),
        "a2_raw": a2_raw.strip(),
        "backend": backend,
        "model": model,
        "revision": revision,  # hf from the hub: the commit the weights came from
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
    weights = getattr(backend, "weights", None)  # hf: the resolved model
    revision = weights.revision if weights is not None else None
    summary_path = Path(config.out_dir) / SUMMARY_NAME
    summary_path.unlink(missing_ok=True)  # a failed run must not leave an old summary looking current
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
            outputs.write_json(PROMPTS_FILE, prompts_record(a1, a2_raw, name, model, questions, revision))
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
    summary = PromptsSummary(
        videos=len(records), asked=sum(max(0, n) for n in results), written=sum(n >= 0 for n in results)
    )
    write_json(
        summary_path,
        {
            "stage": STAGE,
            **params,
            "weights": {k: v for k, v in weights.to_dict().items() if k != "path"} if weights is not None else None,
            "question_variant": questions.variant,
            "videos": summary.videos,
        },
    )
    return summary


def build_backend(prompts: PromptsParams, options: Any = None) -> PromptBackend | None:
    """The backend that the ``prompts`` params name (``none``: None), every knob from
    ``prompts``. ``options``: the caller's run options; only ``options.device`` is read,
    for the hf backend when ``prompts.device`` is ``auto`` (``ssp predict`` runs the MLLM
    on its own ``--device``). hf: the model is resolved here (a missing one fails now)."""
    model = prompts.model or None
    if prompts.backend == "none":
        return None
    if prompts.backend == "scene":
        return SceneBackend(quality=prompts.quality, seed=prompts.seed)
    if prompts.backend == "hf":
        if not model:
            raise SSPError("backend hf needs prompts.model (a local model folder or a hub id org/name@revision)")
        device = prompts.device
        if device in ("", "auto") and getattr(options, "device", None) not in (None, "", "auto"):
            device = options.device
        config = HFConfig(
            model=model,
            frames_per_video=prompts.frames_per_video,
            max_new_tokens=prompts.max_new_tokens,
            device=device or "auto",
            trust_remote_code=prompts.trust_remote_code,
            hf_api=prompts.hf_api,
            chat_options=dict(prompts.chat_options),
        )
        return HFBackend(config)
    if prompts.backend == "openai":
        warn_ignored_env()
        config = OpenAIConfig(
            model=model or "",
            frames_per_video=prompts.frames_per_video,
            base_url=prompts.base_url,
            api_key_env=prompts.api_key_env,
            max_new_tokens=prompts.max_new_tokens,
            connect_timeout=prompts.connect_timeout,
            read_timeout=prompts.read_timeout,
            max_retries=prompts.max_retries,
            backoff=prompts.backoff,
            give_up_after=prompts.give_up_after,
        )
        return OpenAIBackend(config)
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
        "question_variant (a-d), model (hf: local folder or hub id org/name@revision; openai: "
        "the served model name), frames_per_video, max_new_tokens, hf_api, trust_remote_code, "
        "device, chat_options (hf), base_url, api_key_env, timeouts and retries (openai), "
        "quality and seed (scene); see ssp/params.py (PromptsParams)."
    )
    add_backend_options(parser)


# former flags of the MLLM backends, params now (ssp prompts and ssp predict)
MOVED_BACKEND_FLAGS = {
    "--max-new-tokens": "prompts.max_new_tokens",
    "--trust-remote-code": "prompts.trust_remote_code",
    "--base-url": "prompts.base_url",
    "--connect-timeout": "prompts.connect_timeout",
    "--read-timeout": "prompts.read_timeout",
    "--max-retries": "prompts.max_retries",
    "--backoff": "prompts.backoff",
    "--give-up-after": "prompts.give_up_after",
}


class _APIKeyFlag(argparse.Action):
    """``--api-key`` is gone: the key is a secret, read from the variable prompts.api_key_env names."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(
            f"{option_string} is gone: put the key in the environment variable that prompts.api_key_env "
            f"names (default {DEFAULT_API_KEY_ENV}; --set prompts.api_key_env=NAME to use another)"
        )


def add_backend_options(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """The MLLM backends' former flags (answer length, hf device and remote-code permission,
    the openai endpoint, its timeouts and retries): params of the ``prompts`` section now;
    each fails naming the ``--set`` that replaces it. Shared by ``ssp prompts`` and ``ssp
    predict`` (which has a ``--device`` of its own: ``device=False``)."""
    moved = dict(MOVED_BACKEND_FLAGS)
    if device:
        moved["--device"] = "prompts.device"
    add_moved_flags(parser, moved)
    parser.add_argument("--api-key", nargs="?", action=_APIKeyFlag, help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> int:
    prompts = stage_params(args).prompts
    if not Path(args.data_root).is_dir():
        raise DataError(args.data_root, "dataset root not found")
    records = load_records(args.data_root)
    backend = build_backend(prompts)
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
