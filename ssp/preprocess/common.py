"""Shared plumbing of the per-video preprocessing stages (frames, logmel, flow, prompts).

Conventions every stage follows:

- Outputs mirror the dataset: a video's outputs go to ``stage_output_dir(out, record)``
  = ``{out}/{record.rel_dir}``.
- Every file is written atomically (``ssp.fileio``), through :class:`VideoOutputs`, which
  remembers what it wrote so that a video that fails leaves no output of the stage behind
  (neither this attempt's files nor the previous run's, which are stale by then).
- A video's outputs are complete iff its stamp file ``_done_{stage}.json`` exists, was
  written LAST, and holds the digest the stage computes now (:func:`inputs_digest`): a
  hash of the inputs that matter (file sizes + mtimes) and of the stage's parameters. Change a parameter or
  touch an input and the video is redone; change nothing and it is skipped. The stamp
  names the stage so that two stages may share one output folder.
- :func:`run_per_video` runs a stage's per-video function over all videos (in a process
  pool when ``workers > 1``) with a tqdm progress bar. One bad video does not stop the
  others: failures are collected and reported together at the end as one
  :class:`~ssp.errors.SSPError` naming each failed video; videos that succeeded stay
  written.

Typical stage function::

    def process(record, out, params):
        out_dir = stage_output_dir(out, record)
        fp = inputs_digest([record.audio_path], params)
        if is_up_to_date(out_dir, "logmel", fp):
            return False
        with VideoOutputs(out_dir, "logmel", fp) as outputs:
            with outputs.path("logmel.npy") as tmp:  # atomic; any writer taking a path
                np.save(tmp, features)
        return True
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from tqdm.auto import tqdm

from ssp.errors import SSPError
from ssp.fileio import atomic_path, write_json

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def stage_output_dir(out: str | Path, record: Any) -> Path:
    """Folder of one video's outputs: ``{out}/{record.rel_dir}`` (mirrors the dataset)."""
    return Path(out) / record.rel_dir


def stamp_path(out_dir: str | Path, stage: str) -> Path:
    return Path(out_dir) / f"_done_{stage}.json"


def inputs_digest(inputs: Iterable[str | Path], params: dict[str, Any]) -> str:
    """Hash of what a video's outputs depend on: each input's file name, size and mtime,
    and the stage parameters (JSON-serialisable). File names, not full paths, so that a
    moved dataset stays up to date; sizes + mtimes instead of content hashes: cheap on
    large videos, and a copy that changes mtimes only costs one recomputation.

    Not to be confused with ``ssp fingerprint`` (:mod:`ssp.ops.fingerprint`), the content
    digest of whole stage-output folders that DVC stages depend on."""
    items = []
    for path in inputs:
        path = Path(path)
        st = path.stat()  # a missing input is the caller's bug or a DataError it checks first
        items.append([path.name, st.st_size, st.st_mtime_ns])
    blob = json.dumps({"inputs": items, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def is_up_to_date(out_dir: str | Path, stage: str, digest: str) -> bool:
    """True iff the stage's stamp exists, holds ``digest`` (:func:`inputs_digest`) and every
    output it lists is still there."""
    out_dir = Path(out_dir)
    try:
        stamp = json.loads(stamp_path(out_dir, stage).read_text())
    except (OSError, ValueError):
        return False
    if stamp.get("fingerprint") != digest:
        return False
    return all((out_dir / rel).is_file() for rel in stamp.get("outputs", []))


class VideoOutputs:
    """Context manager for (re)writing one video's outputs of one stage.

    Enter it before doing the work. On entry the old stamp is removed (the outputs are
    incomplete from now on). Use :meth:`path` to get an atomic temp path for each output
    file (or :meth:`write_json`). On success the stamp is written last. On any exception
    the video is left with no output of this stage: every file written in this attempt,
    and every output listed by the previous stamp, is deleted, and so are the folders
    that end up empty (the video's folder included).
    """

    def __init__(self, out_dir: str | Path, stage: str, digest: str, info: dict | None = None):
        self.out_dir = Path(out_dir)
        self.stage = stage
        self.digest = digest
        self.info = dict(info or {})
        self.written: list[Path] = []
        self._previous: list[Path] = []

    def __enter__(self) -> "VideoOutputs":
        stamp = stamp_path(self.out_dir, self.stage)
        try:
            old = json.loads(stamp.read_text())
            self._previous = [self.out_dir / rel for rel in old.get("outputs", [])]
        except (OSError, ValueError):
            pass
        stamp.unlink(missing_ok=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self

    @contextmanager
    def path(self, rel: str | Path) -> Iterator[Path]:
        """``with outputs.path("frames/0.jpg") as tmp: write(tmp)``: atomic write of
        ``{out_dir}/frames/0.jpg`` (the temp file keeps the suffix, for writers that pick
        the format from it)."""
        target = self.out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            yield tmp
        self.written.append(target)

    def write_json(self, rel: str | Path, obj: Any) -> Path:
        target = self.out_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        write_json(target, obj)
        self.written.append(target)
        return target

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            outputs = sorted({p.relative_to(self.out_dir).as_posix() for p in self.written})
            write_json(
                stamp_path(self.out_dir, self.stage),
                {"stage": self.stage, "fingerprint": self.digest, "outputs": outputs, **self.info},
            )
            return
        for p in [*self.written, *self._previous]:
            p.unlink(missing_ok=True)
        _remove_empty_dirs(self.out_dir)


def _remove_empty_dirs(folder: Path) -> None:
    """Remove ``folder`` and its subfolders, deepest first, where they are empty
    (never touching anything that another stage or video put there)."""
    if not folder.is_dir():
        return
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            sub.rmdir()
        except OSError:
            pass
    try:
        folder.rmdir()
    except OSError:
        pass


def _item_name(item: Any) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    for attr in ("uid", "name"):
        value = getattr(item, attr, None)
        if isinstance(value, str):
            return value
    return str(item)


def _failure_message(err: BaseException) -> str:
    return str(err) if isinstance(err, SSPError) else f"{type(err).__name__}: {err}"


def _call_in_worker(fn: Callable[[T], R], item: T) -> tuple[bool, R | str]:
    """Run in a pool worker: failures come back as their message, because exceptions
    do not always survive pickling (an unpicklable one would break the whole pool)."""
    try:
        return True, fn(item)
    except Exception as err:  # noqa: BLE001 - reported by run_per_video
        logger.debug("%s failed", _item_name(item), exc_info=True)
        return False, _failure_message(err)


def run_per_video(
    items: Sequence[T],
    fn: Callable[[T], R],
    workers: int = 1,
    desc: str = "videos",
    name: Callable[[T], str] = _item_name,
) -> list[R]:
    """Apply ``fn`` to every item (video record or path) with a progress bar.

    ``workers > 1`` uses a process pool ("spawn" start method: safe with torch/OpenCV
    threads); ``fn`` must then be picklable (a module-level function or a
    ``functools.partial`` of one). Failures do not stop the run: after all items are
    processed, one :class:`SSPError` lists every failed item and why. Returns the
    results of all items in input order when none failed.
    """
    results: dict[int, R] = {}
    failures: list[tuple[int, str]] = []
    bar = tqdm(total=len(items), desc=desc, unit="video", disable=len(items) == 0)
    try:
        if workers <= 1 or len(items) <= 1:
            for i, item in enumerate(items):
                try:
                    results[i] = fn(item)
                except Exception as err:  # noqa: BLE001 - collected and reported below
                    logger.debug("%s failed", name(item), exc_info=True)
                    failures.append((i, _failure_message(err)))
                bar.update()
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=ctx) as pool:
                futures = {pool.submit(_call_in_worker, fn, item): i for i, item in enumerate(items)}
                for future in as_completed(futures):
                    i = futures[future]
                    try:
                        ok, value = future.result()
                    except Exception as err:  # noqa: BLE001 - e.g. a worker killed by the OOM killer
                        ok, value = False, _failure_message(err)
                    if ok:
                        results[i] = value
                    else:
                        failures.append((i, value))
                    bar.update()
    finally:
        bar.close()

    if failures:
        failures.sort()
        lines = [f"  {msg}" if msg.startswith(name(items[i])) else f"  {name(items[i])}: {msg}" for i, msg in failures]
        raise SSPError(f"{desc}: {len(failures)} of {len(items)} failed (the others are written):\n" + "\n".join(lines))
    return [results[i] for i in range(len(items))]


def default_workers() -> int:
    """Worker processes to use when the user does not say: all cores but one."""
    return max(1, (os.cpu_count() or 2) - 1)
