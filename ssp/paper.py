"""The paper's result tables, defined once (everything that names a Table-2 row reads
it from here: training, params (the DVC grid), the report, the samples, the
bench).

Table 2 ("adding key modules" to AAVS) as switch settings, our reading of each row (the
table's note: "VTA must be used in the presence of the textual prompts", i.e. VTA rows
always include the prompts):

- ``aavs``: the baseline, no SSP addition;
- ``pre_mask``: "w. Pre-mask", optical-flow pre-mask only (eq. 2);
- ``pre_mask_post_mask``: "w. Pre-mask w. Post-mask", both flow components, no text;
- ``text_att``: "w. Textual prompts w/o. VTA", A1/A2 through plain cross-attention
  ("att", §5.3), no flow component;
- ``text_vta``: "w. Textual prompts w. VTA", A1/A2 through VTA, no flow;
- ``pre_mask_vta``: "w/o. Post-mask", the full model minus the post-mask loss;
- ``full``: "Full model", pre-mask + VTA + post-mask.

Numbers are the paper's test-set results in %, in :data:`COLUMNS` order. Table 1 compares
SSP with other methods; the two we train, AAVS and SSP, are Table 2's first and last rows
(the same numbers in both tables): :data:`TABLE1`.

Where our numbers come from (``ssp report``): the S4 / MS3 columns of a row from a
stage-1 (binary) model with the row's switches trained on v1s + v1m (DVC matrix
``ablation_avs``), the AVSS columns from the stage-2 model with the row's switches (DVC
matrix ``ablation``): :data:`STAGE_COLUMNS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ssp.errors import SSPError

# S4 = AVSBench-object single source (v1s), MS3 = multi-source (v1m), AVSS = semantic (v2)
COLUMNS = ("S4 mIoU", "S4 F", "MS3 mIoU", "MS3 F", "AVSS mIoU", "AVSS F")


@dataclass(frozen=True)
class PaperRow:
    name: str  # row id: DVC stage suffix, run folder, MLflow tag
    label: str  # the paper's wording
    switches: dict[str, Any]  # SSPConfig fields this row sets
    numbers: tuple[float, ...]  # the paper's results, COLUMNS order


def _row(name: str, label: str, pre_mask: bool, text: str, post_mask: bool, numbers: tuple) -> PaperRow:
    return PaperRow(name, label, {"pre_mask": pre_mask, "text": text, "post_mask": post_mask}, numbers)


TABLE2: dict[str, PaperRow] = {
    r.name: r
    for r in (
        _row("aavs", "AAVS [29]", False, "none", False, (83.2, 91.3, 67.3, 77.6, 48.5, 53.2)),
        _row("pre_mask", "w. Pre-mask", True, "none", False, (84.1, 92.3, 69.5, 82.3, 49.2, 53.7)),
        _row(
            "pre_mask_post_mask", "w. Pre-mask w. Post-mask", True, "none", True, (85.0, 92.5, 70.2, 83.7, 49.4, 53.9)
        ),
        _row("text_att", "w. Textual prompts w/o. VTA", False, "att", False, (83.7, 91.8, 68.1, 78.9, 48.6, 53.0)),
        _row("text_vta", "w. Textual prompts w. VTA", False, "vta", False, (84.3, 92.0, 69.8, 83.3, 49.0, 53.4)),
        _row("pre_mask_vta", "w/o. Post-mask", True, "vta", False, (84.5, 92.4, 70.4, 83.2, 49.7, 54.1)),
        _row("full", "Full model", True, "vta", True, (85.4, 93.3, 72.3, 84.6, 50.1, 54.5)),
    )
}
ROWS: tuple[str, ...] = tuple(TABLE2)

# Table 1, the methods we train: the paper's method name -> its Table-2 row
TABLE1: dict[str, str] = {"AAVS [29]": "aavs", "SSP": "full"}

# the model stage each column's numbers come from: S4/MS3 binary (stage 1), AVSS (stage 2)
STAGE_COLUMNS: dict[int, tuple[int, ...]] = {1: (0, 1, 2, 3), 2: (4, 5)}


def row(name: str) -> PaperRow:
    """The Table-2 row ``name``; an unknown name is an error listing the rows."""
    if name not in TABLE2:
        raise SSPError(f"unknown ablation row {name!r}; rows: {', '.join(ROWS)}")
    return TABLE2[name]
