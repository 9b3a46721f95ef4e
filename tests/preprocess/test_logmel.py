"""ssp/preprocess/logmel.py: VGGish log-mel numerics, the VGGish network and its weights file, `ssp logmel`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ssp.models.vggish import VGGish
from ssp.preprocess.logmel import LogMelStageParams, compute_logmel, log_mel_spectrogram, logmel, logmel_from_wav, logmel_per_second, samples_needed
from ssp.data.avsbench import VideoRecord
from ssp.errors import DataError, SSPError

SR = 16_000


def tone(hz: float, seconds: float, rate: int = SR, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * hz * np.arange(int(round(seconds * rate))) / rate)


# An independent, loop-by-loop transcription of tensorflow/models' vggish_input.py +
# mel_features.py (the reference the module must match), written from their definitions.
def reference_waveform_to_examples(samples: np.ndarray) -> np.ndarray:
    window, hop, fft = 400, 160, 512
    hann = np.array([0.5 - 0.5 * math.cos(2 * math.pi * n / window) for n in range(window)])
    n_frames = 1 + (len(samples) - window) // hop
    spec = np.array([np.abs(np.fft.rfft(samples[f * hop:f * hop + window] * hann, fft)) for f in range(n_frames)])

    def mel(hz):
        return 1127.0 * math.log(1.0 + hz / 700.0)

    n_bins = fft // 2 + 1
    bin_mel = [mel(8000.0 * b / (n_bins - 1)) for b in range(n_bins)]
    lo, hi = mel(125.0), mel(7500.0)
    edges = [lo + (hi - lo) * k / 65 for k in range(66)]
    weights = np.zeros((n_bins, 64))
    for band in range(64):
        left, centre, right = edges[band], edges[band + 1], edges[band + 2]
        for b in range(1, n_bins):  # the DC bin (b = 0) is left out
            m = bin_mel[b]
            weights[b, band] = max(0.0, min((m - left) / (centre - left), (right - m) / (right - centre)))
    log_mel = np.log(spec @ weights + 0.01)
    n_examples = 1 + (n_frames - 96) // 96
    return np.stack([log_mel[e * 96:e * 96 + 96] for e in range(n_examples)])


def test_logmel_matches_reference_transcription():
    rng = np.random.default_rng(0)
    samples = 0.3 * rng.standard_normal(int(2.5 * SR)) + tone(440, 2.5)
    ours = logmel(samples, SR)
    ref = reference_waveform_to_examples(samples)
    assert ours.shape == ref.shape == (2, 96, 64)  # 2.5 s -> 248 frames -> 2 whole examples
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_tone_peaks_in_its_mel_band():
    # band k is centred at edge k+1 of 66 mel-spaced edges between 125 and 7500 Hz
    edges = np.linspace(1127 * np.log(1 + 125 / 700), 1127 * np.log(1 + 7500 / 700), 66)
    for hz in (250.0, 1000.0, 4000.0):
        expected = int(np.argmin(np.abs(edges[1:-1] - 1127 * np.log(1 + hz / 700))))
        spectrum = log_mel_spectrogram(tone(hz, 1.0), SR).mean(axis=0)
        assert int(np.argmax(spectrum)) == expected, hz
    # silence is log(0.01) everywhere
    np.testing.assert_allclose(logmel(np.zeros(SR), SR), np.log(0.01), rtol=1e-6)


def test_framing_and_per_second_patches():
    assert samples_needed(1) == 400 + 160 * 95 and samples_needed(5) == 400 + 160 * (5 * 96 - 1)
    for n in (1, 5):
        assert logmel(np.ones(samples_needed(n)), SR).shape == (n, 96, 64)
        assert logmel(np.ones(samples_needed(n) - 1), SR).shape == (n - 1, 96, 64)

    ten_seconds = tone(1000, 10.0)
    patches = logmel_per_second(ten_seconds, SR, 10)
    assert patches.shape == (10, 96, 64) and patches.dtype == np.float32
    np.testing.assert_array_equal(patches, logmel(ten_seconds, SR)[:10])  # AVSBench: first T examples

    short = tone(1000, 4.5)
    with pytest.raises(DataError, match="4.500 s long"):
        logmel_per_second(short, SR, 5, source="clip.wav")
    padded = logmel_per_second(short, SR, 5, pad=True)
    assert padded.shape == (5, 96, 64)
    np.testing.assert_allclose(padded[4, -10:], np.log(0.01), rtol=1e-6)  # the padded tail is silence
    np.testing.assert_array_equal(padded[:4], logmel(short, SR)[:4])


def test_stereo_and_resampling():
    mono = tone(1000, 3.0)
    np.testing.assert_array_equal(logmel(np.stack([mono, mono], axis=1), SR), logmel(mono, SR))
    at_44k = tone(1000, 3.0, rate=44_100)
    resampled = logmel(at_44k, 44_100)
    assert resampled.shape == (3, 96, 64)
    # band-limited resampling: the same tone gives the same mel energies, up to a small
    # error (compared in the linear domain: near-silent bands magnify errors in the log)
    energy, expected = np.exp(resampled) - 0.01, np.exp(logmel(mono, SR)) - 0.01
    np.testing.assert_allclose(energy[:, 5:-5], expected[:, 5:-5], atol=2e-3 * expected.max())


def test_logmel_from_wav(tmp_path):
    samples = np.round(tone(500, 3.0) * 32767).astype(np.int16)
    wav = tmp_path / "audio.wav"
    sf.write(wav, samples, SR, subtype="PCM_16")
    np.testing.assert_array_equal(logmel_from_wav(wav, 3), logmel_per_second(samples / 32768.0, SR, 3))
    with pytest.raises(DataError, match="audio.wav") as err:
        logmel_from_wav(wav, 4)
    assert "audio is 3.000 s long" in str(err.value)

    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(DataError, match="broken.wav: cannot decode audio"):
        logmel_from_wav(broken, 1)
    with pytest.raises(DataError, match="missing"):
        logmel_from_wav(tmp_path / "nope.wav", 1)


# --------------------------------------------------------------------------- VGGish

# The layout of torchvggish's vggish-10086976.pth (harritaylor/torchvggish), written out
# independently of the module: conv layers at features.{0,3,6,8,11,13}, fc at embeddings.{0,2,4}.
TORCHVGGISH_SHAPES = {
    "features.0.weight": (64, 1, 3, 3), "features.0.bias": (64,),
    "features.3.weight": (128, 64, 3, 3), "features.3.bias": (128,),
    "features.6.weight": (256, 128, 3, 3), "features.6.bias": (256,),
    "features.8.weight": (256, 256, 3, 3), "features.8.bias": (256,),
    "features.11.weight": (512, 256, 3, 3), "features.11.bias": (512,),
    "features.13.weight": (512, 512, 3, 3), "features.13.bias": (512,),
    "embeddings.0.weight": (4096, 12288), "embeddings.0.bias": (4096,),
    "embeddings.2.weight": (4096, 4096), "embeddings.2.bias": (4096,),
    "embeddings.4.weight": (128, 4096), "embeddings.4.bias": (128,),
}


@pytest.fixture(scope="module")
def torchvggish_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """Random weights saved exactly as torchvggish's file: a plain state dict."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in TORCHVGGISH_SHAPES.items():
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        state[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5 if len(shape) > 1 \
            else torch.randn(shape, generator=gen) * 0.01
    path = tmp_path_factory.mktemp("vggish") / "vggish-random.pth"
    torch.save(state, path)
    return path, state


def reference_vggish_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """torchvggish's VGG.forward written with functional ops: convs + pools, then the
    TF-compatible flatten (transpose(1, 3), transpose(1, 2)) and three ReLU fc layers."""
    import torch.nn.functional as F

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
    examples = torch.from_numpy(logmel_per_second(tone(700, 3.0) + 0.1 * np.random.default_rng(1).standard_normal(3 * SR), SR, 3))
    with torch.no_grad():
        out = model(examples)
        expected = reference_vggish_forward(state, examples[:, None])
    assert out.shape == (3, 128)  # one 128-d embedding per second
    assert out.abs().sum() > 0
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)

    # round trip through safetensors: same outputs
    from safetensors.torch import save_file

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
    from safetensors.torch import save_file

    save_file({"features.0.weight": torch.zeros(32, 1, 3, 3), "features.0.bias": torch.zeros(32)}, wrong_shape)
    with pytest.raises(DataError, match=r"missing \['embeddings.*wrong shapes \[.*'features.0.bias \(32,\) != \(64,\)'"):
        VGGish.from_torchvggish(wrong_shape)
    with pytest.raises(DataError, match="missing"):
        VGGish.from_torchvggish(tmp_path / "absent.pth")


# --------------------------------------------------------------------------- ssp logmel stage


def make_record(root: Path, uid: str, seconds: float, num_frames: int) -> VideoRecord:
    rel_dir = f"v2/{uid}"
    folder = root / rel_dir
    (folder / "frames").mkdir(parents=True)
    audio = folder / "audio.wav"
    sf.write(audio, tone(400 + 100 * num_frames, seconds), SR, subtype="PCM_16")
    return VideoRecord(
        uid=uid, subset="v2", split="train", category="dog", root=root, rel_dir=rel_dir,
        frame_paths=[folder / "frames" / f"{i}.jpg" for i in range(num_frames)], audio_path=audio,
        mask_paths=[None] * num_frames,
    )


def test_logmel_stage_writes_skips_and_reports(tmp_path):
    root, out = tmp_path / "data", tmp_path / "features"
    good = make_record(root, "good", 5.0, 5)
    short = make_record(root, "short", 2.0, 5)
    with pytest.raises(SSPError) as err:
        compute_logmel([good, short], out)
    assert "1 of 2 failed" in str(err.value) and str(short.audio_path) in str(err.value)
    assert not (out / "v2" / "short").exists()

    features = np.load(out / "v2" / "good" / "logmel.npy")
    assert features.shape == (5, 96, 64) and features.dtype == np.float32
    np.testing.assert_array_equal(features, logmel_from_wav(good.audio_path, 5))

    mtime = (out / "v2" / "good" / "logmel.npy").stat().st_mtime_ns
    assert compute_logmel([good], out) == [False]  # up to date: nothing done
    assert (out / "v2" / "good" / "logmel.npy").stat().st_mtime_ns == mtime

    assert compute_logmel([good, short], out, LogMelStageParams(pad_short_audio=True)) == [True, True]
    assert np.load(out / "v2" / "short" / "logmel.npy").shape == (5, 96, 64)


def test_ssp_logmel_cli_on_an_avsbench_dataset(tmp_path):
    from tests.avsbench_fixtures import write_semantic_dataset

    from ssp.cli import main as ssp_main
    from ssp.data.avsbench import load_records

    root = write_semantic_dataset(tmp_path / "avsbench", videos=[
        {"uid": "s4_dog", "subset": "v1s", "split": "train", "objects": ["dog"]},
        {"uid": "v2_car", "subset": "v2", "split": "val", "objects": ["car"]},
    ])
    out = tmp_path / "logmel"
    assert ssp_main(["logmel", str(root), "--out", str(out)]) == 0
    records = load_records(root)
    files = [out / r.rel_dir / "logmel.npy" for r in records]
    assert [np.load(f).shape for f in files] == [(r.num_frames, 96, 64) for r in records] == [(5, 96, 64), (10, 96, 64)]
    mtimes = [f.stat().st_mtime_ns for f in files]
    assert ssp_main(["logmel", str(root), "--out", str(out)]) == 0
    assert [f.stat().st_mtime_ns for f in files] == mtimes
