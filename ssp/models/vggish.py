"""The VGGish network (torchvggish layout); its input is ssp.preprocess.logmel's log-mel."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from ssp.errors import DataError, SSPError
from ssp.hub import resolve_weights

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- VGGish

EMBEDDING_SIZE = 128
QUANTIZE_MIN, QUANTIZE_MAX = -2.0, 2.0
# (out_channels | "M" for 2x2 max-pool), as in VGGish / torchvggish's make_layers()
VGGISH_LAYERS: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")


class VGGishPostprocessor(nn.Module):
    """PCA (with whitening) + clipping to [-2, 2] + 8-bit quantisation of the raw
    embedding, as the released AudioSet embeddings (torchvggish's Postprocessor).
    Its parameters come from torchvggish's ``vggish_pca_params-970ea276.pth``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("pca_matrix", torch.zeros(EMBEDDING_SIZE, EMBEDDING_SIZE))
        self.register_buffer("pca_means", torch.zeros(EMBEDDING_SIZE, 1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        pca_applied = (self.pca_matrix @ (embeddings.T - self.pca_means)).T
        clipped = pca_applied.clamp(QUANTIZE_MIN, QUANTIZE_MAX)
        return torch.round((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))


class VGGish(nn.Module):
    """VGGish: (N, 96, 64) or (N, 1, 96, 64) log-mel examples -> (N, 128) embeddings,
    i.e. one 128-d vector per second for :func:`ssp.data.audio.logmel_per_second` input.

    State-dict keys match torchvggish (``features.{0,3,6,8,11,13}.*``,
    ``embeddings.{0,2,4}.*``, and ``pproc.pca_matrix`` / ``pproc.pca_means`` when
    ``postprocess``), so its weights file loads as is. Without a weights file the
    network is randomly initialised (trained from scratch with the model).
    """

    def __init__(self, postprocess: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 1
        for v in VGGISH_LAYERS:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_channels = v
        self.features = nn.Sequential(*layers)
        # 96 x 64 input after four 2x2 pools -> 512 channels of 6 x 4
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_SIZE),
            nn.ReLU(inplace=True),
        )
        self.postprocess = postprocess
        if postprocess:
            self.pproc = VGGishPostprocessor()

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        if examples.dim() == 3:
            examples = examples.unsqueeze(1)
        x = self.features(examples)
        # The fc weights were converted from TensorFlow, which flattens (H, W, C):
        # channels last before flattening.
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        x = self.embeddings(x)
        if self.postprocess:
            x = self.pproc(x)
        return x

    @classmethod
    def from_torchvggish(
        cls, path: str | Path, pca_path: str | Path | None = None, postprocess: bool | None = None
    ) -> "VGGish":
        """Load torchvggish's weights file (``.pth`` read with weights_only=True, or
        ``.safetensors`` with the same keys). ``pca_path`` (torchvggish's
        ``vggish_pca_params-*.pth`` with ``pca_eigen_vectors`` and ``pca_means``, or a
        file with ``pproc.*`` keys) enables postprocessing; so do ``pproc.*`` keys in
        ``path``. A file that is not VGGish weights is a :class:`DataError` naming it.

        ``path`` may also be a weights spec (:mod:`ssp.hub`): a hub repository or a
        folder holding exactly one ``vggish*.pth`` / ``*.safetensors`` file. What was read
        is kept as ``model.resolved`` (id, revision, sha256) for the run's record."""
        resolved = resolve_weights(str(path), "model.vggish_weights")
        path = resolved.weights_file((".pth", ".pt", ".safetensors"), skip=("pca",))
        state = load_state_dict(path)
        has_pca = any(k.startswith("pproc.") for k in state)
        if pca_path is not None:
            state.update(load_pca_params(pca_path))
            has_pca = True
        if postprocess is None:
            postprocess = has_pca
        if postprocess and not has_pca:
            raise SSPError(f"{path}: postprocess=True needs PCA parameters (pass pca_path)")
        if not postprocess:
            state = {k: v for k, v in state.items() if not k.startswith("pproc.")}
        with torch.device("meta"):  # no random init of 72M parameters: all are loaded below
            model = cls(postprocess=postprocess)
        _load_checked(model, state, path)
        model.resolved = resolved.to_dict()
        return model.eval()


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} state dict from ``.safetensors`` or a torch file (no code
    execution: weights_only=True). Any failure is a :class:`DataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "weights file is missing")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise DataError(path, f"not a readable weights file ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise DataError(path, "weights file does not hold a state dict")
    out = {}
    for k, v in state.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(v)
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise DataError(path, f"weights file entry {k!r} is not a tensor")
        out[k] = v
    return out


def _numpy_safe_globals() -> list:
    """What torch.load(weights_only=True) needs to unpickle plain numpy arrays (the PCA
    file of torchvggish stores them); numpy 1 pickles name ``numpy.core``, numpy 2
    ``numpy._core``."""
    reconstruct = np._core.multiarray._reconstruct
    safe: list = [reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype]
    safe += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "uint8")]
    return safe


def load_pca_params(path: str | Path) -> dict[str, torch.Tensor]:
    """torchvggish's PCA parameters as ``pproc.*`` state-dict entries."""
    state = load_state_dict(path)
    if "pproc.pca_matrix" in state and "pproc.pca_means" in state:
        matrix, means = state["pproc.pca_matrix"], state["pproc.pca_means"]
    elif "pca_eigen_vectors" in state and "pca_means" in state:
        matrix, means = state["pca_eigen_vectors"], state["pca_means"]
    else:
        raise DataError(
            path, f"no PCA parameters (expected pca_eigen_vectors and pca_means; found {sorted(state)[:5]})"
        )
    matrix, means = matrix.float(), means.float().reshape(-1, 1)
    if tuple(matrix.shape) != (EMBEDDING_SIZE, EMBEDDING_SIZE) or tuple(means.shape) != (EMBEDDING_SIZE, 1):
        raise DataError(
            path, f"PCA parameters have shapes {tuple(matrix.shape)} and {tuple(means.shape)}, expected 128x128 and 128"
        )
    return {"pproc.pca_matrix": matrix, "pproc.pca_means": means}


def _load_checked(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """load_state_dict with a :class:`DataError` that names the file and every kind of mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{what} {items[:4]}{' ...' if len(items) > 4 else ''}"
        for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shapes", wrong))
        if items
    ]
    if problems:
        raise DataError(path, "not a torchvggish VGGish weights file: " + "; ".join(problems))
    model.load_state_dict(state, strict=True, assign=True)
