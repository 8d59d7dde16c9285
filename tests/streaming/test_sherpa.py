"""sherpa-onnx (k2-fsa) streams the bundle's model.streaming.onnx unmodified, through its online CTC
path for streaming zipformer2 CTC models (it builds the states from the graph's metadata), and
gets slimasr's streaming transcripts on every dev utterance, one stream at a time and batched."""

from __future__ import annotations

import numpy as np
import pytest

from slimasr.data.audio import load_audio
from slimasr.runtime.streaming import OnnxStreamingRecognizer
from tests.streaming.helpers import MEL_BINS, dev_audio

sherpa_onnx = pytest.importorskip("sherpa_onnx", reason="sherpa-onnx is in the dev extra")

TAIL_PADDING = np.zeros(4800, dtype=np.float32)  # sherpa-onnx decodes whole chunks only: 0.3 s of
# silence after the audio (as its examples do) lets the last real frames through. slimasr gets the
# same samples: what a tiny test model emits on silence it never heard differs from CPU to CPU
# (seen: "on" + "o"), so both runtimes must hear the same signal.


def online(bundle, graph: str = "model.streaming.onnx"):
    return sherpa_onnx.OnlineRecognizer.from_zipformer2_ctc(
        tokens=str(bundle / "tokens.txt"), model=str(bundle / graph), num_threads=1, sample_rate=16000,
        feature_dim=MEL_BINS)


@pytest.fixture(scope="module")
def sherpa(causal_bundle):
    return online(causal_bundle)


def ours(causal_bundle, audio, int8: bool = False) -> tuple[str, list[str]]:
    """slimasr's streaming text and token symbols for ``audio`` + the tail sherpa-onnx gets."""
    recognizer = OnnxStreamingRecognizer(causal_bundle, int8=int8)
    audio = np.concatenate([audio, TAIL_PADDING])
    stream = recognizer.stream()
    for start in range(0, len(audio), 1600):
        stream.accept(audio[start:start + 1600])
    text = stream.finish()
    return text, [recognizer.bundle.tokens[i] for i in stream.ids]


def sherpa_stream(sherpa, audio):
    """sherpa-onnx's result on ``audio`` fed 100 ms at a time, decoding what is ready."""
    stream = sherpa.create_stream()
    for start in range(0, len(audio), 1600):
        stream.accept_waveform(16000, audio[start:start + 1600])
        while sherpa.is_ready(stream):
            sherpa.decode_stream(stream)
    stream.accept_waveform(16000, TAIL_PADDING)
    stream.input_finished()
    while sherpa.is_ready(stream):
        sherpa.decode_stream(stream)
    return sherpa.get_result_all(stream)


def test_sherpa_onnx_streams_the_graph_with_slimasr_transcripts(causal, causal_bundle, sherpa):
    for path in dev_audio(causal):
        audio = load_audio(path)
        text, tokens = ours(causal_bundle, audio)
        result = sherpa_stream(sherpa, audio)
        assert result.tokens == tokens  # sherpa-onnx maps "▁" back to " "
        assert " ".join(result.text.split()) == text != ""


def test_sherpa_onnx_streams_the_int8_graph_with_slimasr_transcripts(causal, causal_int8_bundle):
    """The quantized graph (DynamicQuantizeLSTM) runs in sherpa-onnx unmodified too;
    its activations are quantized per call, so both runners feed it the same chunks."""
    sherpa = online(causal_int8_bundle, "model.streaming.int8.onnx")
    for path in dev_audio(causal):
        audio = load_audio(path)
        text, tokens = ours(causal_int8_bundle, audio, int8=True)
        result = sherpa_stream(sherpa, audio)
        assert result.tokens == tokens
        assert " ".join(result.text.split()) == text != ""


def test_sherpa_onnx_batches_streams_with_the_graphs_state_layout(causal, causal_bundle, sherpa):
    audios = [load_audio(p) for p in dev_audio(causal)]
    streams = [sherpa.create_stream() for _ in audios]
    for stream, audio in zip(streams, audios):
        stream.accept_waveform(16000, np.concatenate([audio, TAIL_PADDING]))
        stream.input_finished()
    while ready := [s for s in streams if sherpa.is_ready(s)]:
        sherpa.decode_streams(ready)  # stacks every stream's states along their batch dims
    for stream, audio in zip(streams, audios):
        assert " ".join(sherpa.get_result(stream).split()) == ours(causal_bundle, audio)[0]
