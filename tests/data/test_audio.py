"""ssp/data/audio.py: VGGish log-mel numerics (against an independent transcription of the
reference), per-second patches, resampling, reading wav files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf

from ssp.data.audio import log_mel_spectrogram, logmel, logmel_from_wav, logmel_per_second, samples_needed
from ssp.errors import DataError
from tests.avsbench_fixtures import SAMPLE_RATE as SR
from tests.avsbench_fixtures import tone


# An independent, loop-by-loop transcription of tensorflow/models' vggish_input.py +
# mel_features.py (the reference the module must match), written from their definitions.
def reference_waveform_to_examples(samples: np.ndarray) -> np.ndarray:
    window, hop, fft = 400, 160, 512
    hann = np.array([0.5 - 0.5 * math.cos(2 * math.pi * n / window) for n in range(window)])
    n_frames = 1 + (len(samples) - window) // hop
    spec = np.array([np.abs(np.fft.rfft(samples[f * hop : f * hop + window] * hann, fft)) for f in range(n_frames)])

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
    return np.stack([log_mel[e * 96 : e * 96 + 96] for e in range(n_examples)])


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
