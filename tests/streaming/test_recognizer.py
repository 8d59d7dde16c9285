"""Streaming a causal model gives its offline output: on every utterance of the corpus, at several
chunk sizes and in any audio pieces, the log-probs within 1e-4 and the greedy text identical."""

from __future__ import annotations

import numpy as np
import pytest

from slimasr.data.audio import load_audio
from slimasr.data.features import FeatureConfig, num_frames
from slimasr.errors import DataError
from slimasr.recognize import Recognizer
from slimasr.streaming import StreamingRecognizer, stream_array
from tests.streaming.helpers import CHUNK_MS, dev_audio


@pytest.fixture(scope="module")
def offline(causal):
    """(audio, offline log-probs (T', V), offline text) of every dev utterance."""
    recognizer = Recognizer(causal)
    out = []
    for path in dev_audio(causal):
        audio = load_audio(path)
        out.append((audio, recognizer.log_probs(audio).numpy(), recognizer.transcribe(audio)))
    return out


@pytest.mark.parametrize("chunk_ms", CHUNK_MS)
def test_streaming_equals_offline_on_every_utterance(causal, offline, chunk_ms):
    recognizer = StreamingRecognizer(causal, chunk_ms=chunk_ms)
    assert recognizer.chunk_samples == {80: 1280, 160: 2560, 320: 5120, 130: 2080}[chunk_ms]
    for audio, log_probs, text in offline:
        stream = recognizer.stream(keep_log_probs=True)
        assert stream_array(stream, audio, chunk_ms, 16000) == text != ""
        assert stream.log_probs.shape == log_probs.shape
        assert np.abs(stream.log_probs - log_probs).max() <= 1e-4


def test_audio_in_pieces_of_any_size_gives_the_same_output(causal, offline):
    recognizer = StreamingRecognizer(causal, chunk_ms=160)
    rng = np.random.default_rng(0)
    for audio, log_probs, text in offline[:5]:
        stream = recognizer.stream(keep_log_probs=True)
        start = 0
        while start < len(audio):
            size = int(rng.integers(1, 3000))
            stream.accept(audio[start:start + size])
            start += size
        assert stream.finish() == text
        assert np.abs(stream.log_probs - log_probs).max() <= 1e-4


def test_the_model_runs_once_per_chunk_on_every_frame_complete_by_then(causal, offline):
    """No frame waits for a later chunk than it must: after each chunk of audio, fewer frames than
    one output frame needs (the subsampling, 2) are left waiting."""
    recognizer = StreamingRecognizer(causal, chunk_ms=80)
    audio = offline[0][0]
    stream = recognizer.stream()
    runs = []
    stream.step = lambda feats, step=stream.step: runs.append(len(feats)) or step(feats)
    for start in range(0, len(audio), 320):  # 20 ms pieces: the model runs on every fourth
        stream.accept(audio[start:start + 320])
        if (start // 320) % 4 == 3:
            assert stream.pending_frames < 2 and len(runs) == (start // 320 + 1) // 4
    stream.finish()
    # at 80 ms frames 0-6 are complete (frame 7's window ends at 87.5 ms): 6 run, 1 waits; then
    # each 80 ms completes 8 more; finish() runs the rest, the last two frames included
    assert runs[:-1] == [6] + [8] * (len(runs) - 2)
    assert sum(runs) == num_frames(len(audio), FeatureConfig())


def test_partial_texts_grow_into_the_final_text(causal, offline):
    recognizer = StreamingRecognizer(causal, chunk_ms=80)
    for audio, _, text in offline[:5]:
        stream = recognizer.stream()
        partials = [stream.accept(audio[i:i + 1280]) for i in range(0, len(audio), 1280)]
        assert stream.finish() == text
        assert all(text.startswith(p) for p in partials)
        assert len(set(partials)) > 2  # the text appears while the audio still arrives


def test_kaldi_native_fbank_front_end_gives_the_same_transcripts(causal, offline):
    """sherpa-onnx's fbank agrees with lhotse's to float32 precision only (test_features.py), so
    only the transcripts are compared here."""
    recognizer = StreamingRecognizer(causal, chunk_ms=160, features="kaldi-native-fbank")
    for audio, _, text in offline:
        assert recognizer.transcribe(audio) == text


def test_a_finished_stream_takes_no_more_audio(causal, offline):
    stream = StreamingRecognizer(causal).stream()
    stream.accept(offline[0][0])
    assert stream.finish() == stream.finish() == offline[0][2]
    with pytest.raises(ValueError, match="finished"):
        stream.accept(offline[0][0])


def test_non_finite_audio_is_refused_before_it_reaches_the_state(causal, offline):
    stream = StreamingRecognizer(causal).stream()
    stream.accept(offline[0][0][:1000])
    with pytest.raises(DataError, match="NaN"):
        stream.accept(np.array([0.1, np.nan], dtype=np.float32))
    stream.accept(offline[0][0][1000:])
    assert stream.finish() == offline[0][2]


def test_a_bidirectional_model_is_refused_in_one_line(bidirectional):
    with pytest.raises(DataError) as error:
        StreamingRecognizer(bidirectional)
    assert str(error.value) == (
        f"{bidirectional / 'config.json'}: cannot stream this model: its backward recurrent layers "
        "read the whole utterance before the first output (a streamable CRNN is trained with "
        "model.config.bidirectional=false)")
