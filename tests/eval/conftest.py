"""Fixtures of the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssp.data.avsbench import load_records
from ssp.data.synthetic import SynthConfig, generate_dataset
from ssp.eval.stage1_masks import write_stage1_masks
from ssp.models import SSPConfig, SSPModel
from ssp.models.checkpoint import save_weights
from ssp.params import DataParams
from ssp.preprocess.logmel import compute_logmel

STAGE1_MASK_BATCH = 2  # videos per forward pass of ssp stage1-masks in the fixture


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny benchmark (logmel only), random-init stage-1/2 checkpoints, stage-1 masks of
    the test split."""
    root = tmp_path_factory.mktemp("eval")
    data = generate_dataset(SynthConfig.from_params(DataParams(seed=1, size="tiny")), root / "data", progress=False)
    compute_logmel(load_records(data), root / "logmel")
    torch.manual_seed(0)
    s1, s2 = root / "s1.safetensors", root / "s2.safetensors"
    save_weights(s1, SSPModel(SSPConfig.tiny(1, num_points=64)), {"epoch": 1})
    save_weights(s2, SSPModel(SSPConfig.tiny(2, num_points=64)), {"epoch": 1})
    write_stage1_masks(
        s1, data, root / "stage1", ("test",), logmel=root / "logmel", batch_size=STAGE1_MASK_BATCH, progress=False
    )
    return {"root": root, "data": data, "logmel": root / "logmel", "s1": s1, "s2": s2, "stage1": root / "stage1"}
