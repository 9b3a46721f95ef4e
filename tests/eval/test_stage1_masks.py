"""ssp stage1-masks: every frame of the chosen splits as a PNG, skipped when up to date, a
stage-2 checkpoint refused; the PNGs hold exactly what an in-process stage-1 model gives
stage 2 (ssp.engine.predict.stepping_stone), so both stepping-stone paths agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ssp.data.avsbench import load_records
from ssp.engine.inputs import InputDirs, build_dataset, dataset_batches
from ssp.engine.predict import stepping_stone
from ssp.errors import SSPError
from ssp.eval.stage1_masks import write_stage1_masks
from ssp.models.checkpoint import load_model
from tests.eval.conftest import STAGE1_MASK_BATCH


def test_written_then_up_to_date(checkpoints, tmp_path):
    out = tmp_path / "masks"
    kwargs = {"logmel": checkpoints["logmel"], "progress": False}
    assert write_stage1_masks(checkpoints["s1"], checkpoints["data"], out, ("val", "test"), **kwargs) == {
        "written": 6,
        "skipped": 0,
    }
    assert len(list(out.rglob("*.png"))) == 2 * (5 + 5 + 10)  # every frame, labelled or not
    assert write_stage1_masks(checkpoints["s1"], checkpoints["data"], out, ("val", "test"), **kwargs) == {
        "written": 0,
        "skipped": 6,
    }
    with pytest.raises(SSPError, match="stage1-masks needs stage 1's"):
        write_stage1_masks(checkpoints["s2"], checkpoints["data"], out, ("test",), **kwargs)


def test_pngs_are_the_in_process_stepping_stones(checkpoints):
    """Exactly, batched as the PNGs were written; batched otherwise, a pixel may land one
    quantization step away (float sums differ with the batch, by ~1e-7 before rounding)."""
    model, config, _ = load_model(checkpoints["s1"])
    records = load_records(checkpoints["data"], splits=["test"])
    dataset = build_dataset(records, config, InputDirs(logmel=checkpoints["logmel"]))
    by_uid = {r.uid: r for r in records}
    for batch_size, steps in ((STAGE1_MASK_BATCH, 0), (1, 1)):
        for batch in dataset_batches(dataset, batch_size):
            stones = stepping_stone(model, batch)
            for i, (v, f) in enumerate(zip(batch["video_index"].tolist(), batch["frame_index"].tolist(), strict=True)):
                png = checkpoints["stage1"] / by_uid[batch["uid"][v]].rel_dir / f"{f}.png"
                stored = torch.from_numpy(np.asarray(Image.open(png), dtype=np.float32)) / 255
                assert float((stones[i] - stored).abs().max()) * 255 <= steps + 1e-4, (batch_size, png)
