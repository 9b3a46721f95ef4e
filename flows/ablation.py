"""The ``ablation`` flow: the Table-2 grid (``ablation@<row>-<seed>`` for the AVSS columns,
``ablation_avs@<row>-<seed>`` for S4/MS3) and the λ'_mask sweep
(``sweep@<value>``), one Prefect task per cell, plus what they depend on (stage 1,
the stepping-stone masks, preprocessing) when stale. Cells already computed for the
current code, data and params are skipped by DVC."""

from __future__ import annotations

import argparse
from typing import Any

from prefect import flow

from flows.reproduce import add_set_argument, reproduce


@flow(name="ablation", log_prints=True)
def ablation(
    project_dir: str = ".", include_sweep: bool = True, track: bool = True, overrides: list[str] | None = None
) -> dict[str, Any]:
    # `ablation_avs`: the S4/MS3 (stage-1) cells; `samples` is the Fig. 8 grid of the rows'
    # predictions, it needs every ablation cell
    targets = ["ablation", "ablation_avs", "samples"] + (["sweep"] if include_sweep else [])
    return reproduce(project_dir=project_dir, targets=targets, track=track, overrides=overrides)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Run the ablation grid (and the lambda' sweep) as Prefect tasks.")
    ap.add_argument("--project-dir", default=".", help="folder holding dvc.yaml and params.yaml")
    ap.add_argument("--no-sweep", action="store_true", help="the grid only, not the lambda' sweep")
    add_set_argument(ap)
    a = ap.parse_args()
    ablation(project_dir=a.project_dir, include_sweep=not a.no_sweep, overrides=a.overrides)
