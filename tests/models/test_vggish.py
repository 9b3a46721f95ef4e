"""ssp/models/vggish.py: the VGGish network, torchvggish's weights and PCA files, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ssp.data.audio import logmel, logmel_per_second
from ssp.errors import DataError
from ssp.models.vggish import VGGish
from tests.avsbench_fixtures import SAMPLE_RATE as SR
from tests.avsbench_fixtures import tone

# The layout of torchvggish's vggish-10086976.pth (harritaylor/torchvggish), written out
# independently of the module: conv layers at features.{0,3,6,8,11,13}, fc at embeddings.{0,2,4}.
TORCHVGGISH_SHAPES = {
    "features.0.weight": (64, 1, 3, 3),
    "features.0.bias": (64,),
    "features.3.weight": (128, 64, 3, 3),
    "features.3.bias": (128,),
    "features.6.weight": (256, 128, 3, 3),
    "features.6.bias": (256,),
    "features.8.weight": (256, 256, 3, 3),
    "features.8.bias": (256,),
    "features.11.weight": (512, 256, 3, 3),
    "features.11.bias": (512,),
    "features.13.weight": (512, 512, 3, 3),
    "features.13.bias": (512,),
    "embeddings.0.weight": (4096, 12288),
    "embeddings.0.bias": (4096,),
    "embeddings.2.weight": (4096, 4096),
    "embeddings.2.bias": (4096,),
    "embeddings.4.weight": (128, 4096),
    "embeddings.4.bias": (128,),
}


@pytest.fixture(scope="module")
def torchvggish_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """Random weights saved exactly as torchvggish's file: a plain state dict."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in TORCHVGGISH_SHAPES.items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        state[key] = (
            torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
            if len(shape) > 1
            else torch.randn(shape, generator=gen) * 0.01
        )
    path = tmp_path_factory.mktemp("vggish") / "vggish-random.pth"
    torch.save(state, path)
    return path, state


def reference_vggish_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """torchvggish's VGG.forward written with functional ops: convs + pools, then the
    TF-compatible flatten (transpose(1, 3), transpose(1, 2)) and three ReLU fc layers."""
    for i, pool_after in ((0, True), (3, True), (6, False), (8, True), (11, False), (13, True)):
        x = F.relu(F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"], padding=1))
        if pool_after:
            x = F.max_pool2d(x, 2, 2)
    x = x.transpose(1, 3).transpose(1, 2).contiguous().view(x.size(0), -1)
    for i in (0, 2, 4):
        x = F.relu(F.linear(x, state[f"embeddings.{i}.weight"], state[f"embeddings.{i}.bias"]))
    return x


def test_vggish_loads_torchvggish_weights(torchvggish_file, tmp_path):
    path, state = torchvggish_file
    model = VGGish.from_torchvggish(path)
    assert set(model.state_dict()) == set(TORCHVGGISH_SHAPES)
    noisy_tone = tone(700, 3.0) + 0.1 * np.random.default_rng(1).standard_normal(3 * SR)
    examples = torch.from_numpy(logmel_per_second(noisy_tone, SR, 3))
    with torch.no_grad():
        out = model(examples)
        expected = reference_vggish_forward(state, examples[:, None])
    assert out.shape == (3, 128)  # one 128-d embedding per second
    assert out.abs().sum() > 0
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)

    # round trip through safetensors: same outputs
    st_path = tmp_path / "vggish.safetensors"
    save_file(model.state_dict(), st_path)
    with torch.no_grad():
        torch.testing.assert_close(VGGish.from_torchvggish(st_path)(examples), out, rtol=0, atol=0)


def test_vggish_pca_postprocessing(torchvggish_file, tmp_path):
    path, _ = torchvggish_file
    # torchvggish's PCA file holds numpy arrays under these names
    rng = np.random.default_rng(2)
    matrix, means = rng.standard_normal((128, 128)) * 0.05, rng.standard_normal(128) * 0.1
    pca_path = tmp_path / "vggish_pca_params.pth"
    torch.save({"pca_eigen_vectors": matrix, "pca_means": means}, pca_path)
    model = VGGish.from_torchvggish(path, pca_path=pca_path)
    raw_model = VGGish.from_torchvggish(path)
    x = torch.from_numpy(logmel(tone(300, 2.0), SR))
    with torch.no_grad():
        quantised, raw = model(x), raw_model(x)
    expected = np.round((np.clip((matrix @ (raw.numpy().T - means[:, None])).T, -2, 2) + 2) * 255 / 4)
    np.testing.assert_allclose(quantised.numpy(), expected, atol=1.0)  # float32 vs float64 rounding ties
    assert np.mean(quantised.numpy() == expected) > 0.99
    assert quantised.min() >= 0 and quantised.max() <= 255


def test_wrong_weights_files_are_clear_errors(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(DataError, match="notes.pth: not a readable weights file"):
        VGGish.from_torchvggish(text)
    resnet_like = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, resnet_like)
    with pytest.raises(DataError, match="resnet.pth: not a torchvggish VGGish weights file: missing"):
        VGGish.from_torchvggish(resnet_like)
    wrong_shape = tmp_path / "wrong_shape.safetensors"
    save_file({"features.0.weight": torch.zeros(32, 1, 3, 3), "features.0.bias": torch.zeros(32)}, wrong_shape)
    expected = r"missing \['embeddings.*wrong shapes \[.*'features.0.bias \(32,\) != \(64,\)'"
    with pytest.raises(DataError, match=expected):
        VGGish.from_torchvggish(wrong_shape)
    with pytest.raises(DataError, match="absent.pth: model.vggish_weights: weights not found"):
        VGGish.from_torchvggish(tmp_path / "absent.pth")
