"""One utterance recognized chunk by chunk: online features -> model chunks -> greedy CTC text.

    stream = Stream(online_features(cfg), step, chunk_samples=2560, multiple=2, tokens=tokens)
    for samples in audio_chunks:
        partial = stream.accept(samples)      # the text so far (changes as words arrive)
    final = stream.finish()                   # flushes the last frames: the whole transcript

``step`` runs the model on the next frames and keeps its state: ``step(feats)`` takes ``(T, F)``
raw log-mel frames and returns ``(T', V)`` log-probs. The PyTorch step is in
``slimasr.streaming.recognizer``, the onnxruntime one in ``slimasr.runtime.streaming``; this module
knows neither (nor any training code).

The model runs once per ``chunk_samples`` of audio received (the chunk size: 160 ms is 2560
samples at 16 kHz), on every frame complete by then, rounded down to a multiple of the model's
subsampling (so each chunk ends where an output frame ends); the rest, and the last frames, which
only the end of the audio completes, run in ``finish``.

Greedy decoding carries the previous frame's best token across chunks, so the text equals greedy
decoding of the whole utterance's log-probs.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from slimasr.decode.greedy import BLANK_ID, WORD_SEP, ids_to_text
from slimasr.errors import ConfigError
from slimasr.runtime.recognizer import checked_audio
from slimasr.streaming.features import OnlineFeatures

Step = Callable[[np.ndarray], np.ndarray]  # (T, F) raw fbank -> (T', V) log-probs, state kept inside
DEFAULT_CHUNK_MS = 160  # audio between two model runs: 16 frames of 10 ms (8 output frames at x2)


def chunk_samples_for(chunk_ms: float, sampling_rate: int) -> int:
    """Audio samples between two model runs (``chunk_ms`` > 0, else a ConfigError)."""
    if not chunk_ms > 0:
        raise ConfigError(f"--chunk-ms must be positive, got {chunk_ms:g}")
    return max(1, round(chunk_ms / 1000.0 * sampling_rate))


def chunk_frames_for(chunk_ms: float, frame_shift: float, multiple: int) -> int:
    """Feature frames in ``chunk_ms``, rounded up to a multiple of the subsampling (the fixed chunk
    sherpa-onnx feeds the streaming graph)."""
    chunk_samples_for(chunk_ms, 1000)  # the same check
    frames = max(1, round(chunk_ms / 1000.0 / frame_shift))
    return multiple * math.ceil(frames / multiple)


class Stream:
    """One utterance: ``accept`` audio as it arrives, ``finish`` at its end (see module doc)."""

    def __init__(self, features: OnlineFeatures, step: Step, chunk_samples: int, multiple: int,
                 tokens: Sequence[str], word_sep: str = WORD_SEP, keep_log_probs: bool = False):
        self.features = features
        self.step = step
        self.chunk_samples = chunk_samples  # audio between two model runs
        self.multiple = multiple  # the model's subsampling: every chunk but the last is a multiple
        self.unrun_samples = 0  # audio received since the model last ran
        self.tokens = list(tokens)
        self.word_sep = word_sep
        self.pending: list[np.ndarray] = []  # feature frames not yet given to the model
        self.pending_frames = 0
        self.ids: list[int] = []  # greedy token ids so far (repeats merged, blanks dropped)
        self.previous = BLANK_ID  # best token of the last output frame (merges repeats across chunks)
        self.chunks: list[np.ndarray] | None = [] if keep_log_probs else None
        self.frames_out = 0  # output frames so far
        self.finished = False

    @property
    def text(self) -> str:
        """The transcript so far (the final one after ``finish``)."""
        return ids_to_text(self.ids, self.tokens, self.word_sep)

    @property
    def log_probs(self) -> np.ndarray:
        """``(T', V)``: every output frame so far (needs ``keep_log_probs``)."""
        if self.chunks is None:
            raise ValueError("this stream does not keep log-probs (create it with keep_log_probs=True)")
        return np.concatenate(self.chunks) if self.chunks else np.zeros((0, 0), dtype=np.float32)

    def accept(self, samples: np.ndarray) -> str:
        """Feed the next samples (float in [-1, 1] at the model's rate); returns the text so far."""
        if self.finished:
            raise ValueError("the stream is finished; start a new one")
        samples = checked_audio(samples)  # NaN would poison the state for the rest of the stream
        self._queue(self.features.accept(samples))
        self.unrun_samples += len(samples)
        if self.unrun_samples >= self.chunk_samples and self.pending_frames >= self.multiple:
            self.unrun_samples = 0
            self._run(self._take(self.pending_frames - self.pending_frames % self.multiple))
        return self.text

    def finish(self) -> str:
        """The end of the audio: the last frames (and the last, shorter chunk) run; the final text."""
        if not self.finished:
            self.finished = True
            self._queue(self.features.finish())
            if self.pending_frames > 0:
                self._run(self._take(self.pending_frames))
        return self.text

    def _queue(self, frames: np.ndarray) -> None:
        if frames.shape[0]:
            self.pending.append(frames)
            self.pending_frames += frames.shape[0]

    def _take(self, count: int) -> np.ndarray:
        frames = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        chunk, rest = frames[:count], frames[count:]
        self.pending = [rest] if rest.shape[0] else []
        self.pending_frames = rest.shape[0]
        return chunk

    def _run(self, frames: np.ndarray) -> None:
        log_probs = self.step(frames)
        if self.chunks is not None:
            self.chunks.append(log_probs)
        self.frames_out += log_probs.shape[0]
        for best in log_probs.argmax(axis=-1).tolist():
            if best != BLANK_ID and best != self.previous:
                self.ids.append(best)
            self.previous = best


def stream_array(stream: Stream, audio: np.ndarray, chunk_ms: float, sampling_rate: int) -> str:
    """Feed ``audio`` to ``stream`` in pieces of ``chunk_ms``; the final text."""
    piece = max(1, round(chunk_ms / 1000.0 * sampling_rate))
    for start in range(0, len(audio), piece):
        stream.accept(audio[start:start + piece])
    return stream.finish()
