"""Pretrained weights by Hugging Face hub id (pinned revision) or local path, resolved once.

Every pretrained part of the pipeline (Mask2Former/AAVS, VGGish, BERT, CLIP, Perceiver IO
and RAFT flow, the MLLM) is named by one *weights spec* in params:

- a local path: a file (state dict) or a folder (``save_pretrained`` layout), used as is;
- ``org/name@revision``: a hub repository at a pinned revision (a commit hash, or a tag or
  branch, which is resolved to the commit it points at and recorded). Without
  ``@revision``, or with a branch, the spec floats: allowed, with a warning, because the
  run is then not reproducible from its params alone (``ssp weights --pin`` writes the
  commits into the profile);
- an ``https://`` URL of one file (VGGish's torchvggish release), checked against the
  torch.hub sha256 prefix in its name and kept beside the hub cache.

:func:`resolve_weights` turns a spec into a :class:`ResolvedWeights`: the local path to
load from (a file, or the snapshot folder in the Hugging Face cache), the repository and
the commit, and the sha256 of every file it covers. The record goes into the checkpoint
metadata and the MLflow run of every model that used it, and into the summary of every
preprocessing stage, so a result says exactly which weights made it.

Downloads go through ``huggingface_hub.snapshot_download`` (the standard cache,
``HF_HOME`` / ``HF_HUB_CACHE``); with ``HF_HUB_OFFLINE=1`` the cache alone is read, which
is how the tests run against stand-ins laid out as a hub cache and how a cluster node
without internet runs after ``huggingface-cli download``. Loading never executes code from
a weights file (safetensors or ``torch.load(weights_only=True)``), except an MLLM that
needs its repository's code, which requires ``prompts.trust_remote_code: true``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ssp.errors import DataError

log = logging.getLogger(__name__)

# org/name[@revision]: the hub's naming rules (letters, digits, - _ .), one slash.
_HUB_ID = re.compile(r"^(?:hf://|hub:)?(?P<repo>[A-Za-z0-9][\w.\-]*/[\w.\-]+)(?:@(?P<rev>[\w.\-/]+))?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# a spec ending like a weights file is a local path (a missing file must not be looked up on the hub)
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".pkl", ".h5", ".npz")

# The params that name pretrained weights, and what each fetches of a hub repository (repositories also hold pickled .bin,
# TF and Flax copies of the same weights, which are never read here); `ssp weights` and the
# loaders resolve with the same list, so a pre-fetch fetches exactly what a run reads.
HUB_FILES: dict[str, tuple[str, ...]] = {
    "model.mask2former_weights": ("*.json", "*.safetensors", "*.pth", "*.pt"),  # HF folder or AAVS .pth
    "model.backbone_weights": ("*.json", "*.safetensors", "*.pth", "*.pt"),
    "model.vggish_weights": ("*.pth", "*.pt", "*.safetensors"),
    "model.text_model": (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
        "model.safetensors",
    ),
    "model.clip_model": ("config.json", "preprocessor_config.json", "model.safetensors"),
    "flow.weights": ("*.json", "*.safetensors", "*.pth", "*.pt"),  # Perceiver IO folder or a RAFT file
    "prompts.model": ("*.json", "*.py", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"),
}

_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256
_RESOLVED: dict[tuple, ResolvedWeights] = {}  # see resolve_weights
_LOCK = threading.Lock()


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a weights spec was found and exactly what it is."""

    what: str  # the param that named it, e.g. "model.mask2former_weights"
    spec: str  # as written in params
    source: str  # "hub" | "local" | "url"
    path: Path  # the file or folder to load from
    repo_id: str | None = None
    revision: str | None = None  # the commit hash (hub); None for local files
    files: dict[str, str] = field(default_factory=dict)  # relative name -> sha256

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["path"] = str(self.path)
        return record

    def weights_file(self, suffixes: tuple[str, ...], prefer: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> Path:
        """The one state-dict file of the spec: the file itself, else the first of ``prefer``
        in the folder, else its only top-level file ending in one of ``suffixes`` (names
        containing a ``skip`` word left out); anything else is a DataError naming ``what``."""
        found = self.file(*prefer)
        if found is not None:
            return found
        names = sorted(
            n for n in self.files if "/" not in n and n.endswith(suffixes) and not any(w in n.lower() for w in skip)
        )
        if len(names) != 1:
            wanted = " or ".join([*prefer, f"one {'/'.join(suffixes)} file"])
            raise DataError(self.path, f"{self.what}: expected {wanted}, found {names}")
        return self.path / names[0]

    def file(self, *names: str) -> Path | None:
        """The first of ``names`` present (self.path itself when it is a file)."""
        if self.path.is_file():
            return self.path
        for name in names:
            if (self.path / name).is_file():
                return self.path / name
        return None


def parse_hub_spec(spec: str) -> tuple[str, str | None] | None:
    """(repo_id, revision or None) when ``spec`` names a hub repository, else None.

    A spec is local when it exists on disk, is absolute, starts with ``.`` or ``~``, or has
    ends like a weights file (``.pth``, ``.safetensors``, ...) or has more than one slash;
    ``hub:``/``hf://`` force the hub reading."""
    text = spec.strip()
    forced = text.startswith(("hub:", "hf://"))
    local = Path(os.path.expanduser(text))
    if not forced and (local.exists() or text.startswith(("/", ".", "~")) or local.suffix in _FILE_SUFFIXES):
        return None
    match = _HUB_ID.match(text)
    if match is None:
        return None
    return match.group("repo"), match.group("rev")


def resolve_weights(spec: str, what: str, allow_patterns: Iterable[str] | None = None) -> ResolvedWeights:
    """A weights spec (local path or ``org/name@revision``) -> :class:`ResolvedWeights`.

    ``allow_patterns``: for hub repositories, the files to fetch (default: ``HUB_FILES[what]``,
    else everything); everything in the snapshot that matches is hashed. A spec that cannot be found raises a DataError naming
    ``what`` and the spec."""
    if not spec or not str(spec).strip():
        raise DataError(what, "no weights given (empty spec)")
    spec = str(spec).strip()
    # resolved once per process: a model reads Mask2Former's config.json and then its weights,
    # and a floating spec must not move to another commit between the two
    key = (spec, what, tuple(allow_patterns) if allow_patterns is not None else None, _cache_dir())
    with _LOCK:
        known = _RESOLVED.get(key)
    if known is not None and known.path.exists():
        return known
    resolved = _resolve(spec, what, allow_patterns)
    if resolved.source != "local":  # a local file may be rewritten in place: always looked at again
        with _LOCK:
            _RESOLVED[key] = resolved
    return resolved


def _resolve(spec: str, what: str, allow_patterns: Iterable[str] | None) -> ResolvedWeights:
    if spec.startswith(("https://", "http://")):
        path = _url_file(spec, what)
        return ResolvedWeights(what=what, spec=spec, source="url", path=path, files=_digests(path))
    hub = parse_hub_spec(spec)
    if hub is None:
        path = Path(os.path.expanduser(spec))
        if not path.exists():
            raise DataError(
                path, f"{what}: weights not found (a local file or folder, or a hub id 'org/name@revision')"
            )
        return ResolvedWeights(what=what, spec=spec, source="local", path=path.resolve(), files=_digests(path))
    repo_id, revision = hub
    if allow_patterns is None:
        allow_patterns = HUB_FILES.get(what)
    folder = _snapshot(repo_id, revision, what, spec, list(allow_patterns) if allow_patterns else None)
    commit = folder.name if _COMMIT.match(folder.name) else revision
    if revision is None or not _COMMIT.match(revision):
        log.warning(
            "%s = %s is not pinned to a commit: it follows %s (now %s). Write %s@%s (or run "
            "`ssp weights --pin`) to make the run reproducible from its params",
            what,
            spec,
            f"the branch/tag {revision!r}" if revision else "the repository's main branch",
            commit,
            repo_id,
            commit,
        )
    return ResolvedWeights(
        what=what,
        spec=spec,
        source="hub",
        path=folder,
        repo_id=repo_id,
        revision=commit,
        files=_digests(folder, allow_patterns),
    )


def _snapshot(repo_id: str, revision: str | None, what: str, spec: str, allow_patterns: list[str] | None) -> Path:
    from huggingface_hub import snapshot_download  # noqa: PLC0415  (imported only when a hub spec is used)
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError  # noqa: PLC0415

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=allow_patterns,
                local_files_only=offline,
                cache_dir=_cache_dir(),
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError) as err:
        hint = (
            "not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
            if offline
            else "could not be downloaded or found in the cache"
        )
        if "@" not in spec:  # `weights/vggish` may have been meant as a relative path
            hint += f"; read as a hub id because no local path {os.path.abspath(spec)} exists"
        raise DataError(
            what,
            f"{spec}: {hint} (cache: {_cache_dir()}; fetch it where there is network with "
            f"`huggingface-cli download {repo_id}{' --revision ' + revision if revision else ''}`, "
            "or give a local path)",
        ) from err
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise DataError(what, f"{spec}: cannot fetch from the hub ({type(err).__name__}: {err})") from err


def url_cache_path(url: str) -> Path:
    """Where a URL spec's file is kept: ``{hub cache}/../ssp-urls/<url digest>/<file name>``."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    return Path(_cache_dir()).parent / "ssp-urls" / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def _url_file(url: str, what: str) -> Path:
    """A weights file by URL (torchvggish publishes VGGish as a GitHub release file), kept in
    ``{hub cache}/../ssp-urls/``. A file name with torch.hub's ``-<sha256 prefix>.`` suffix
    (``vggish-10086976.pth``) is checked against that prefix when downloaded."""
    target = url_cache_path(url)
    name = target.name
    if target.is_file():
        return target
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise DataError(what, f"{url}: not downloaded yet and HF_HUB_OFFLINE is set (expected at {target})")
    import torch.hub  # noqa: PLC0415  (only for URL specs)

    prefix = re.search(r"-([0-9a-f]{8,})\.[^.]+$", name)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), hash_prefix=prefix.group(1) if prefix else None)
    except Exception as err:  # network, HTTP, hash mismatch
        raise DataError(what, f"{url}: cannot download ({type(err).__name__}: {err})") from err
    return target


def _cache_dir() -> str:
    """The hub cache, read from the environment at call time (huggingface_hub reads it
    once at import, before a test or a launcher may have set it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    from huggingface_hub import constants  # noqa: PLC0415

    return str(constants.HF_HUB_CACHE)


def _digests(path: Path, patterns: Iterable[str] | None = None) -> dict[str, str]:
    """sha256 per file (relative names; symlinks in a hub snapshot followed to their blob)."""
    if path.is_file():
        return {path.name: sha256_file(path)}
    import fnmatch  # noqa: PLC0415

    patterns = list(patterns or [])
    out = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts):
        rel = file.relative_to(path).as_posix()
        if patterns and not any(fnmatch.fnmatch(rel, p) for p in patterns):
            continue
        out[rel] = sha256_file(file)
    return out


def sha256_file(path: Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime) for the process: a 400 MB
    checkpoint is hashed once however many models read it. A hub-cache file that links to
    a blob named by a 64-hex digest (how the hub stores LFS files: by their sha256) takes
    that name instead of reading 17 GB of MLLM shards again."""
    real = path.resolve()
    if path.is_symlink() and real.parent.name == "blobs" and _SHA256.match(real.name):
        return real.name
    stat = real.stat()
    key = (str(real), stat.st_size, stat.st_mtime_ns)
    with _LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    digest = hashlib.sha256()
    with open(real, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    with _LOCK:
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]
