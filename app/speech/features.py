"""DeepSpeech's acoustic features in NumPy: TF-exact MFCCs, 19-frame context windows, and streaming buffers.

The release models were trained on TensorFlow's `AudioSpectrogram` + `Mfcc` ops (core/kernels/spectrogram.cc,
mfcc.cc, mfcc_mel_filterbank.cc, mfcc_dct.cc) with DeepSpeech's arguments, so this module reproduces those
kernels rather than a textbook MFCC. Serving code: NumPy only, TensorFlow is never imported here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SAMPLE_RATE = 16000  # DeepSpeech: 16 kHz mono, float = int16 / 32768
WINDOW_SAMPLES = 512  # 32 ms analysis window
HOP_SAMPLES = 320  # 20 ms hop = one model time step
N_MFCC = 26  # n_input
N_CONTEXT = 9  # frames of context on each side
WINDOW_FRAMES = 2 * N_CONTEXT + 1  # 19 frames per context window
STEP_SECONDS = HOP_SAMPLES / SAMPLE_RATE  # 0.02 s per time step (token start_time = timestep * 0.02)

# DeepSpeech's Mfcc arguments: 40 channels from 20 Hz up to sample_rate / 2 (TF's own default would be 4000).
_FILTERBANK_CHANNELS = 40
_LOWER_HZ = 20.0
_UPPER_HZ = SAMPLE_RATE / 2
# spectrogram.cc: FFT length = next power of two of the window (512), 1 + N/2 output bins.
_FFT_BINS = WINDOW_SAMPLES // 2 + 1
_LOG_FLOOR = 1e-12  # mfcc.cc: kFilterbankFloor
# Frames per vectorized pass: keeps the temporaries cache-sized (~130 KB); one pass over a long file's frames
# measured slower than TensorFlow, blocks of 32 measured faster.
_BLOCK_FRAMES = 32


class _Tables(NamedTuple):
    window: np.ndarray  # (512,) float64 periodic Hann
    first_bin: int  # first FFT bin the filterbank reads
    last_bin: int  # last FFT bin the filterbank reads (inclusive)
    filterbank: np.ndarray  # (last_bin - first_bin + 1, 40) triangular weights on FFT magnitudes
    dct: np.ndarray  # (40, 26) DCT-II cosines, input channel on rows


def _mel(hz: float | np.ndarray) -> np.ndarray:
    """Mel scale of mfcc_mel_filterbank.cc (FreqToMel), needed to place the same band edges as TF."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


@functools.cache
def _tables() -> _Tables:
    """Build the window, filterbank and DCT tables once: they depend only on DeepSpeech's fixed arguments."""
    # spectrogram.cc GetPeriodicHann: 0.5 - 0.5 cos(2 pi i / N), in double.
    i = np.arange(WINDOW_SAMPLES, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * math.pi * i / WINDOW_SAMPLES)

    # mfcc_mel_filterbank.cc Initialize: 41 equally spaced mel points above mel(lower); the last one is the
    # upper edge of the top triangle. Bin spacing is nyquist / (n_bins - 1); DC is always excluded (HTK), so
    # the bins read are int(1.5 + lower / hz_per_bin) .. int(upper / hz_per_bin) = 2 .. 256 here.
    mel_low = float(_mel(_LOWER_HZ))
    mel_high = float(_mel(_UPPER_HZ))
    spacing = (mel_high - mel_low) / (_FILTERBANK_CHANNELS + 1)
    centers = mel_low + spacing * np.arange(1, _FILTERBANK_CHANNELS + 2, dtype=np.float64)
    hz_per_bin = 0.5 * SAMPLE_RATE / (_FFT_BINS - 1)
    first_bin = int(1.5 + _LOWER_HZ / hz_per_bin)
    last_bin = int(_UPPER_HZ / hz_per_bin)

    bins = np.arange(first_bin, last_bin + 1)
    bin_mel = _mel(bins * hz_per_bin)
    # band_mapper: a bin lies on the falling edge of channel (number of the first 40 centers below it) - 1 and
    # on the rising edge of the next channel; -1 means it only feeds channel 0's rising edge, and the rising
    # edge of a 41st channel is dropped.
    band = np.searchsorted(centers[:_FILTERBANK_CHANNELS], bin_mel, side="left") - 1
    upper = centers[band + 1]
    lower = np.where(band >= 0, centers[np.maximum(band, 0)], mel_low)
    falling = (upper - bin_mel) / (upper - lower)  # weights_[i]: 1 at a center, 0 at the next one
    filterbank = np.zeros((bins.size, _FILTERBANK_CHANNELS + 1))
    rows = np.arange(bins.size)
    on_falling = band >= 0
    filterbank[rows[on_falling], band[on_falling]] = falling[on_falling]
    filterbank[rows, band + 1] = 1.0 - falling  # Compute() adds spec - spec * weight to channel + 1
    filterbank = np.ascontiguousarray(filterbank[:, :_FILTERBANK_CHANNELS])

    # mfcc_dct.cc: cosines[i][j] = sqrt(2/N) cos(i * pi/N * (j + 0.5)), N = 40, first 26 rows kept.
    j = np.arange(_FILTERBANK_CHANNELS, dtype=np.float64)
    k = np.arange(N_MFCC, dtype=np.float64)
    arg = math.pi / _FILTERBANK_CHANNELS
    dct = math.sqrt(2.0 / _FILTERBANK_CHANNELS) * np.cos((k * arg)[None, :] * (j + 0.5)[:, None])

    for table in (window, filterbank, dct):
        table.setflags(write=False)
    return _Tables(window, first_bin, last_bin, filterbank, dct)


def frame_count(n_samples: int) -> int:
    """Number of MFCC frames for n samples: AudioSpectrogram only emits whole 512-sample windows."""
    return 0 if n_samples < WINDOW_SAMPLES else 1 + (n_samples - WINDOW_SAMPLES) // HOP_SAMPLES


def mfcc(samples: np.ndarray) -> np.ndarray:
    """MFCCs (frames, 26) float32 of 16 kHz samples, matching the TF ops the release models learned from."""
    x = np.asarray(samples, dtype=np.float32)  # the TF graph feeds float32 samples
    if x.ndim != 1:
        raise ValueError(f"mfcc expects 1-D samples, got shape {x.shape}")
    n_frames = frame_count(x.size)
    if n_frames == 0:
        return np.zeros((0, N_MFCC), dtype=np.float32)
    frames = sliding_window_view(x, WINDOW_SAMPLES)[::HOP_SAMPLES][:n_frames]  # a view: no copy of the audio
    out = np.empty((n_frames, N_MFCC), dtype=np.float32)
    for start in range(0, n_frames, _BLOCK_FRAMES):
        out[start : start + _BLOCK_FRAMES] = _mfcc_frames(frames[start : start + _BLOCK_FRAMES])
    return out


def _mfcc_frames(frames: np.ndarray) -> np.ndarray:
    t = _tables()
    # spectrogram.cc: samples times the window in double, 512-point real FFT, power re^2 + im^2 in double
    # that the op stores as float32.
    spectrum = np.fft.rfft(frames * t.window, axis=1)
    pairs = spectrum.view(np.float64)[:, 2 * t.first_bin : 2 * (t.last_bin + 1)]  # (re, im) of the bins used
    np.multiply(pairs, pairs, out=pairs)
    power = np.empty((frames.shape[0], t.last_bin - t.first_bin + 1), dtype=np.float32)
    np.add(pairs[:, 0::2], pairs[:, 1::2], out=power)
    # mfcc_mel_filterbank.cc Compute: the Mfcc op reads the float32 power back as double and takes its square
    # root, so the triangles weight magnitudes.
    mel = np.sqrt(power, dtype=np.float64) @ t.filterbank
    # mfcc.cc: natural log with a floor of 1e-12 (digital silence gives log(1e-12) in every channel).
    np.maximum(mel, _LOG_FLOOR, out=mel)
    np.log(mel, out=mel)
    return mel @ t.dct


def _context_view(frames: np.ndarray) -> np.ndarray:
    f = np.asarray(frames, dtype=np.float32)
    if f.ndim != 2:
        raise ValueError(f"context_windows expects (frames, coefficients), got shape {f.shape}")
    n, width = f.shape
    if n == 0:
        return np.zeros((0, WINDOW_FRAMES, width), dtype=np.float32)
    # Upstream pads SAME with a conv1d over an identity filter: 9 zero frames before and after.
    padded = np.zeros((n + 2 * N_CONTEXT, width), dtype=np.float32)
    padded[N_CONTEXT : N_CONTEXT + n] = f
    return sliding_window_view(padded, (WINDOW_FRAMES, width))[:, 0]  # (T, 19, width), no copy


def context_windows(frames: np.ndarray) -> np.ndarray:
    """Whole-file model input (T, 19, 26), built as DeepSpeech does: 9 zero frames of context each side."""
    return np.ascontiguousarray(_context_view(frames))


def context_window_blocks(frames: np.ndarray, block: int) -> Iterator[np.ndarray]:
    """The same windows as `context_windows`, `block` at a time: memory bounded by the block, not the file."""
    view = _context_view(frames)
    for start in range(0, len(view), block):
        yield np.ascontiguousarray(view[start : start + block])


def features_for_file(samples: np.ndarray) -> np.ndarray:
    """Model input for a whole file in one call: mfcc then context_windows."""
    return context_windows(mfcc(samples))


def int16_to_float(pcm: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """s16le PCM to float32 in [-1, 1): the native client's int16 / 32768 scaling."""
    if isinstance(pcm, bytes | bytearray | memoryview):
        raw = memoryview(pcm).cast("B")
        if raw.nbytes % 2:
            raise ValueError(f"s16le PCM needs an even number of bytes, got {raw.nbytes}")
        ints = np.frombuffer(raw, dtype="<i2")
    else:
        ints = np.asarray(pcm)
        if ints.dtype != np.int16:
            raise TypeError(f"int16_to_float expects int16 samples, got {ints.dtype}")
    # deepspeech.cc multiplies by 1 / (1 << 15): a power of two, so this is exact.
    return ints.astype(np.float32) * np.float32(1.0 / 32768.0)


def _no_windows() -> np.ndarray:
    return np.zeros((0, WINDOW_FRAMES, N_MFCC), dtype=np.float32)


class StreamingFeatures:
    """The native client's feature buffers (deepspeech.cc StreamingState): any chunk sizes in, windows out."""

    # Relation to the whole-file path, for n samples and k = frame_count(n): push()es + finish() give k + 1
    # windows, equal to features_for_file(audio zero-padded to 320 * k + 512 samples), whatever the chunking.
    # The extra tail frame takes the place of the file's first right-pad zero frame, so windows t < k - 9
    # equal features_for_file(audio)[t]; windows k-9 .. k-1 differ from it in row 9 + k - t only; window k
    # is extra.

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new stream: empty audio buffer, MFCC buffer primed with 9 zero frames of left context."""
        self._audio = np.zeros(0, dtype=np.float32)  # < 512 samples between calls
        # StreamingState starts its MFCC buffer with n_context zero frames; between calls it holds <= 18.
        self._mfcc = np.zeros((N_CONTEXT, N_MFCC), dtype=np.float32)
        self._finished = False

    @property
    def finished(self) -> bool:
        """Whether finish() has run; a finished stream accepts no more audio until reset()."""
        return self._finished

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed float32 samples of any length; returns the windows (k, 19, 26) they completed, k >= 0."""
        if self._finished:
            raise RuntimeError("push() after finish(): call reset() to start a new stream")
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"push expects 1-D samples, got shape {x.shape}")
        if x.size == 0:
            return _no_windows()
        audio = np.concatenate([self._audio, x])
        n_frames = frame_count(audio.size)
        if n_frames == 0:
            self._audio = audio
            return _no_windows()
        # Upstream computes one frame per full 512-sample buffer and shifts by 320; all frames of this push in
        # one call give the same frames, and the buffer keeps what the next frame starts with.
        frames = mfcc(audio[: (n_frames - 1) * HOP_SAMPLES + WINDOW_SAMPLES])
        self._audio = audio[n_frames * HOP_SAMPLES :].copy()
        return self._push_frames(frames)

    def finish(self) -> np.ndarray:
        """End the stream as the native client does; returns the last windows, including the tail's."""
        if self._finished:
            raise RuntimeError("finish() called twice: call reset() to start a new stream")
        self._finished = True
        # finalizeStream: one more frame from whatever is buffered (even nothing), zero-padded to 512 samples,
        # then n_context zero MFCC frames of right context.
        tail = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
        tail[: self._audio.size] = self._audio
        self._audio = np.zeros(0, dtype=np.float32)
        frames = np.concatenate([mfcc(tail), np.zeros((N_CONTEXT, N_MFCC), dtype=np.float32)])
        return self._push_frames(frames)

    def _push_frames(self, frames: np.ndarray) -> np.ndarray:
        # pushMfccBuffer: each time the buffer holds 19 frames it is copied out as a window and its first
        # frame dropped, so the windows are every 19-frame span of (buffer + new frames).
        buffered = np.concatenate([self._mfcc, frames])
        n_windows = buffered.shape[0] - (WINDOW_FRAMES - 1)
        if n_windows <= 0:
            self._mfcc = buffered
            return _no_windows()
        windows = np.ascontiguousarray(sliding_window_view(buffered, (WINDOW_FRAMES, N_MFCC))[:, 0])
        self._mfcc = buffered[n_windows:].copy()
        return windows
