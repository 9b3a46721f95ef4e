"""Content fingerprints of stage outputs: one small JSON that changes iff the files do.

Why: DVC re-walks and re-hashes every directory dependency once per stage that lists it.
The stage-2 cells (main model, the ablation grid's rows × seeds, samples) all read the
same five folders (dataset, flow masks, log-mel, prompts, stage-1 masks: ~14k files on
the demo data), so listing the folders in each cell made a no-op ``dvc repro`` walk
~260k files (12 s). Instead one ``stage2_inputs`` stage lists the folders and writes
their fingerprints with ``ssp fingerprint``; the cells depend on that JSON. DVC still
sees every change: a changed file changes its folder's digest, so the JSON changes, so
every cell is stale; an upstream re-run that reproduces the same files changes nothing.

The digest is the md5 over (relative path, size, content md5) of every file, in sorted
path order -- content only: timestamps and the walk order do not matter.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ssp.fileio import tree_digest, write_json


def fingerprints(paths: list[str | Path]) -> dict[str, dict[str, Any]]:
    return {str(p): tree_digest(p) for p in paths}


# ---------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write content fingerprints (md5 over every file's path, size and content) of files or "
        "folders to one JSON file. Stages that read many large folders depend on that file "
        "instead of the folders, so a no-op `dvc repro` walks each folder once."
    )
    parser.add_argument("paths", nargs="+", type=Path, help="files or folders to fingerprint")
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")


def main(args: argparse.Namespace) -> int:
    result = fingerprints(args.paths)
    write_json(args.out, result)
    for name, digest in result.items():
        print(f"{name}: {digest['files']} files, {digest['bytes'] / 1e6:.1f} MB, md5 {digest['md5']}")
    return 0
