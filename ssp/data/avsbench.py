"""AVSBench readers: both on-disk layouts, one record type, torch datasets on top.

CONTRACT (other modules rely on it; implementation in progress):

Layouts (see DESIGN.md, "AVSBench layouts to read"):
- ``semantic``: AVSBench-semantic (subsets v1s = S4, v1m = MS3, v2 = AVSS).
  ``metadata.csv`` (vid,uid,s_min,s_sec,a_obj,split,label), ``label2idx.json``,
  where the ``label`` column holds the SUBSET (v1s / v1m / v2, as in the official
  AVSS loader) and ``a_obj`` the sounding object categories;
  ``{root}/{label}/{uid}/frames/{i}.jpg``, ``audio.wav``, ``labels_rgb/{i}.png``,
  optionally ``labels_semantic/{i}.png``.
  The generated benchmark (``ssp synth``) uses this layout and adds per video
  ``scene.json`` (ground truth of the scene, for the ``scene`` prompt backend and
  the per-scenario tables).
- ``object``: AVSBench-object v1 (S4 ``s4_meta_data.csv``, MS3 ``ms3_meta_data.csv``).

Every reader returns :class:`VideoRecord` objects. Preprocessing stages write their
outputs under ``{out}/{record.rel_dir}/...`` so outputs mirror the dataset layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Layout = Literal["semantic", "object"]
Subset = Literal["v1s", "v1m", "v2"]
Split = Literal["train", "val", "test"]

SUBSETS: tuple[str, ...] = ("v1s", "v1m", "v2")
SPLITS: tuple[str, ...] = ("train", "val", "test")
FRAMES_PER_SUBSET = {"v1s": 5, "v1m": 5, "v2": 10}


@dataclass
class VideoRecord:
    uid: str                      # unique id (semantic: `uid` column; object: video name)
    subset: str                   # v1s | v1m | v2
    split: str                    # train | val | test
    category: str                 # semantic: `a_obj` column; S4: category; MS3: "" (multi-source)
    root: Path                    # dataset root
    rel_dir: str                  # per-video folder relative to root; outputs mirror it
    frame_paths: list[Path]       # one per second, in order
    audio_path: Path
    mask_paths: list[Path | None]             # colour (semantic) or binary (object) masks; None = unlabelled
    semantic_mask_paths: list[Path | None] = field(default_factory=list)  # labels_semantic/{i}.png if present
    labelled: list[bool] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)   # a_obj, split into names
    layout: str = "semantic"
    start: float = 0.0            # clip start in the source video (s), if known

    @property
    def num_frames(self) -> int:
        return len(self.frame_paths)
