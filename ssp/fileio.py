"""Files: atomic writes, and content digests of files and folders.

Atomic writes: every stage writes through these so that a killed run never leaves a
half-written output behind (write to a temp file beside the target, fsync, then rename,
which is atomic on POSIX).

Content digests (:func:`tree_digest`): what ``ssp fingerprint`` writes for DVC and
``ssp validate`` puts in its report (the dataset's content, see
:mod:`ssp.ops.fingerprint`): md5 over every file's relative path, size and content md5,
in sorted path order; timestamps and the walk order do not matter.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ssp.errors import SSPError

CHUNK = 1 << 20  # bytes read at a time when hashing


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    Use it for writers that want a file name (cv2.imwrite, soundfile, torch.save).
    ``suffix`` defaults to the target's suffix so that writers that pick the format
    from the extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.",
        suffix=suffix if suffix is not None else ".tmp" + path.suffix,
        dir=path.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(path: str | Path) -> dict[str, Any]:
    """``{"md5", "files", "bytes"}`` of a file or a folder (recursively; symlinks followed)."""
    path = Path(path)
    if not path.exists():
        raise SSPError(f"{path}: does not exist (run the stage that makes it first)")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.md5()
    total = 0
    for p in files:
        rel = p.name if p == path else p.relative_to(path).as_posix()
        size = p.stat().st_size
        total += size
        h.update(f"{rel}\0{size}\0{file_md5(p)}\n".encode())
    return {"md5": h.hexdigest(), "files": len(files), "bytes": total}
