"""Audio as the model reads it: a wav file -> VGGish log-mel patches, one per second.

The log-mel is computed exactly as VGGish's reference preprocessing
(``vggish_input.waveform_to_examples`` + ``mel_features`` of tensorflow/models, also
shipped by torchvggish and used by AVSBench):

- mono (mean over channels), resampled to 16 kHz if needed;
- frames of 25 ms (400 samples) every 10 ms (160 samples), no padding: a frame is
  kept only if it fits entirely (``1 + (n - 400) // 160`` frames);
- periodic Hann window (``0.5 - 0.5 cos(2 pi n / 400)``), magnitude of a 512-point
  real FFT (257 bins);
- 64 triangular mel bands whose edges are spaced evenly on the HTK mel scale
  (``1127 ln(1 + f / 700)``) between 125 and 7500 Hz; the triangles are linear in mel;
  the DC bin gets weight 0 in every band;
- ``log(mel + 0.01)``;
- non-overlapping examples of 96 frames (0.96 s) with hop 96 frames, no padding.

Example ``k`` therefore covers ``[0.96 k, 0.96 k + 0.975]`` s. AVSBench takes the first
T examples of a T-second clip as "one patch per second" (so the patches drift 40 ms per
second from the second boundaries); :func:`logmel_per_second` does the same by default.

Differences from torchvggish, both deliberate: resampling uses ``scipy.signal.resample_poly``
(torchvggish uses resampy, which is not a dependency; audio already at 16 kHz, which is
what ``ssp frames`` and ``ssp synth`` write, is untouched, so the numbers are identical),
and the result is float32 numpy, not a torch tensor.

Both the ``ssp logmel`` stage (:mod:`ssp.preprocess.logmel`, which writes the patches to
disk) and :class:`ssp.data.datasets.AVSDataset` (which computes them in-process when no
stage output is given) use these functions. The VGGish network that reads the patches
is :mod:`ssp.models.vggish`.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

from ssp.errors import DataError

# --------------------------------------------------------------------------- log-mel


@dataclass(frozen=True)
class LogMelConfig:
    """VGGish's front end (vggish_params.py). Do not change it for pretrained VGGish."""

    sample_rate: int = 16_000
    window_samples: int = 400  # 25 ms
    hop_samples: int = 160  # 10 ms
    fft_length: int = 512  # next power of two >= window
    num_mel_bins: int = 64
    lower_edge_hertz: float = 125.0
    upper_edge_hertz: float = 7500.0
    log_offset: float = 0.01
    example_frames: int = 96  # 0.96 s per example
    example_hop_frames: int = 96  # non-overlapping examples


VGGISH_LOGMEL = LogMelConfig()


def frame(data: np.ndarray, window_length: int, hop_length: int) -> np.ndarray:
    """Split ``data`` (n, ...) into (num_frames, window_length, ...) frames, each starting
    ``hop_length`` after the previous; only frames that fit entirely are kept."""
    num_frames = 1 + (data.shape[0] - window_length) // hop_length
    if num_frames < 1:
        return np.zeros((0, window_length) + data.shape[1:], dtype=data.dtype)
    shape = (num_frames, window_length) + data.shape[1:]
    strides = (data.strides[0] * hop_length,) + data.strides
    return np.lib.stride_tricks.as_strided(data, shape=shape, strides=strides, writeable=False)


def periodic_hann(window_length: int) -> np.ndarray:
    """Hann window of period ``window_length`` (Matlab's "periodic"; np.hanning is the
    symmetric one, of period window_length - 1)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi / window_length * np.arange(window_length))


def hertz_to_mel(frequencies_hertz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log(1.0 + np.asarray(frequencies_hertz, dtype=np.float64) / 700.0)


def mel_weight_matrix(
    num_mel_bins: int,
    num_spectrogram_bins: int,
    sample_rate: int,
    lower_edge_hertz: float,
    upper_edge_hertz: float,
) -> np.ndarray:
    """(num_spectrogram_bins, num_mel_bins) matrix M such that mel = spectrogram @ M.

    Band i has lower edge, centre and upper edge at ``edges[i], edges[i+1], edges[i+2]``
    where ``edges`` are num_mel_bins + 2 points evenly spaced in mel; the weight of a bin
    is the triangle (linear in mel) evaluated at the bin's mel frequency, clipped at 0.
    Spectrogram bins are at ``linspace(0, nyquist, num_spectrogram_bins)``; the DC bin
    always gets weight 0 (as in HTK).
    """
    nyquist = sample_rate / 2.0
    if not 0.0 <= lower_edge_hertz < upper_edge_hertz <= nyquist:
        raise ValueError(f"mel band edges must satisfy 0 <= {lower_edge_hertz} < {upper_edge_hertz} <= {nyquist}")
    bins_mel = hertz_to_mel(np.linspace(0.0, nyquist, num_spectrogram_bins))
    edges_mel = np.linspace(hertz_to_mel(lower_edge_hertz), hertz_to_mel(upper_edge_hertz), num_mel_bins + 2)
    lower, centre, upper = edges_mel[:-2], edges_mel[1:-1], edges_mel[2:]
    rising = (bins_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bins_mel[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


def _to_mono_float(waveform: np.ndarray) -> np.ndarray:
    data = np.asarray(waveform, dtype=np.float64)
    if data.ndim == 2:  # (samples, channels), as soundfile returns it
        data = data.mean(axis=1)
    elif data.ndim != 1:
        raise ValueError(f"waveform must be (samples,) or (samples, channels), got shape {data.shape}")
    return data


def resample(waveform: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited polyphase resampling (scipy); identity when the rates agree."""
    if sample_rate == target_rate:
        return waveform
    # only audio that is not at 16 kHz yet (``ssp frames`` and ``ssp synth`` write 16 kHz)
    from scipy.signal import resample_poly  # noqa: PLC0415  (optional path: resampling only; scipy.signal takes ~1.5 s to import)

    g = gcd(int(sample_rate), int(target_rate))
    return resample_poly(waveform, target_rate // g, sample_rate // g)


def log_mel_spectrogram(waveform: np.ndarray, sample_rate: int, config: LogMelConfig = VGGISH_LOGMEL) -> np.ndarray:
    """(num_frames, num_mel_bins) log-mel spectrogram, one row per 10 ms frame."""
    data = resample(_to_mono_float(waveform), sample_rate, config.sample_rate)
    frames = frame(data, config.window_samples, config.hop_samples)
    spectrogram = np.abs(np.fft.rfft(frames * periodic_hann(config.window_samples), config.fft_length))
    weights = mel_weight_matrix(
        config.num_mel_bins,
        spectrogram.shape[1],
        config.sample_rate,
        config.lower_edge_hertz,
        config.upper_edge_hertz,
    )
    return np.log(spectrogram @ weights + config.log_offset)


def logmel(waveform: np.ndarray, sample_rate: int, config: LogMelConfig = VGGISH_LOGMEL) -> np.ndarray:
    """VGGish input examples: (num_examples, 96, 64) float32, as
    ``vggish_input.waveform_to_examples`` (without the channel axis)."""
    spectrogram = log_mel_spectrogram(waveform, sample_rate, config)
    examples = frame(spectrogram, config.example_frames, config.example_hop_frames)
    return np.ascontiguousarray(examples, dtype=np.float32)


def samples_needed(num_examples: int, config: LogMelConfig = VGGISH_LOGMEL) -> int:
    """Smallest number of samples (at config.sample_rate) that yields num_examples examples."""
    if num_examples <= 0:
        return 0
    frames = config.example_hop_frames * (num_examples - 1) + config.example_frames
    return config.window_samples + config.hop_samples * (frames - 1)


def logmel_per_second(
    waveform: np.ndarray,
    sample_rate: int,
    num_seconds: int,
    pad: bool = False,
    source: str | Path = "<waveform>",
    config: LogMelConfig = VGGISH_LOGMEL,
) -> np.ndarray:
    """One 96 x 64 patch per second: the first ``num_seconds`` VGGish examples,
    (num_seconds, 96, 64) float32.

    Audio too short for ``num_seconds`` examples is a :class:`DataError` naming
    ``source``, unless ``pad``: then it is padded with zeros (silence) at the end.
    """
    data = resample(_to_mono_float(waveform), sample_rate, config.sample_rate)
    needed = samples_needed(num_seconds, config)
    if data.shape[0] < needed:
        if not pad:
            raise DataError(
                source,
                f"audio is {data.shape[0] / config.sample_rate:.3f} s long; {num_seconds} one-second "
                f"log-mel patches need at least {needed / config.sample_rate:.3f} s "
                "(pass pad=True / --pad-short-audio to pad with silence)",
            )
        data = np.concatenate([data, np.zeros(needed - data.shape[0])])
    examples = logmel(data, config.sample_rate, config)
    return examples[:num_seconds]


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode an audio file with soundfile as float64 in [-1, 1]. PCM16 files are read
    as int16 / 32768, exactly as torchvggish's ``wavfile_to_examples``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "audio file is missing")
    try:
        info = sf.info(str(path))
        if info.subtype == "PCM_16":
            data, sr = sf.read(str(path), dtype="int16")
            return data / 32768.0, int(sr)
        data, sr = sf.read(str(path), dtype="float64")
        return data, int(sr)
    except (RuntimeError, sf.LibsndfileError, ValueError) as e:  # LibsndfileError is a RuntimeError
        raise DataError(path, f"cannot decode audio ({e})") from None


def logmel_from_wav(path: str | Path, num_seconds: int, pad: bool = False) -> np.ndarray:
    """(num_seconds, 96, 64) float32 log-mel patches of an audio file."""
    data, sr = read_wav(path)
    if data.size == 0:
        raise DataError(path, "audio file has no samples")
    return logmel_per_second(data, sr, num_seconds, pad=pad, source=path)
