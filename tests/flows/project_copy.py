"""A scratch copy of this repository for the end-to-end tests that run its own dvc.yaml."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# overrides the end-to-end tests share: sizes and schedules only (2 frames per clip, no
# loader workers, one overlay, one stage-2 epoch, 2 prompt frames)
SMALL_SCHEDULE = [
    "train1.max_frames=2",
    "train1.num_workers=0",
    "train1.overlays=1",
    "train2.epochs=1",
    "train2.max_frames=2",
    "train2.num_workers=0",
    "train2.overlays=1",
    "prompts.frames_per_video=2",
]


def copy_repository(proj: Path) -> None:
    """The repository's files (code, dvc.yaml, conf/, params.yaml; not the tests, infra or
    benchmarks) in ``proj``, a fresh git repository, as a clone would have them: tracked
    files and new ones git does not ignore (a change under development is tested before
    its commit)."""
    listed = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
    tracked = subprocess.run(listed, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for rel in tracked.split():
        if rel.startswith(("tests/", "infra/", "bench/")) or not (ROOT / rel).is_file():
            continue
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, proj / rel)
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
