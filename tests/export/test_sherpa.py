"""sherpa-onnx (k2-fsa) runs the bundle unmodified through its offline CTC path and gets slimasr's
greedy transcripts on every dev utterance: its own fbank (kaldi-native-fbank), its own padding and
batching, its own greedy search and tokens.txt reader."""

from __future__ import annotations

import pytest

from slimasr.data.audio import load_audio
from slimasr.decode import greedy_decode
from slimasr.recognize import Recognizer
from slimasr.runtime import OnnxRecognizer
from tests.export.helpers import MEL_BINS, dev_audio

sherpa_onnx = pytest.importorskip("sherpa_onnx", reason="sherpa-onnx is in the dev extra")


def sherpa_recognizer(model):
    return sherpa_onnx.OfflineRecognizer.from_zipformer_ctc(
        model=str(model), tokens=str(model.parent / "tokens.txt"), num_threads=1, sample_rate=16000,
        feature_dim=MEL_BINS)


def slimasr_tokens(recognizer, audio) -> list[str]:
    """slimasr's greedy token sequence of one utterance, as symbols."""
    log_probs = recognizer.log_probs(audio)
    ids = greedy_decode(log_probs[None], log_probs.new_tensor([log_probs.shape[0]]).long())[0]
    return [recognizer.frontend.tokenizer.tokens[i] for i in ids]


def test_sherpa_onnx_gets_slimasr_greedy_transcripts_on_every_utterance(trained, bundle):
    audios = [load_audio(p) for p in dev_audio(trained)]
    sherpa = sherpa_recognizer(bundle / "model.onnx")
    streams = [sherpa.create_stream() for _ in audios]
    for stream, audio in zip(streams, audios):
        stream.accept_waveform(16000, audio)
    sherpa.decode_streams(streams)  # one padded batch, as a server would run it
    ours = Recognizer(trained)  # the PyTorch model
    for stream, audio in zip(streams, audios):
        assert stream.result.tokens == slimasr_tokens(ours, audio)  # sherpa maps "▁" back to " "
        assert " ".join(stream.result.text.split()) == ours.transcribe(audio) != ""


def test_sherpa_onnx_runs_the_int8_model_like_onnxruntime_does(trained, bundle):
    """int8 scales are computed per call over the whole batch, so compare at batch 1 (a device's
    case): sherpa-onnx and slimasr's runtime then agree on every utterance."""
    sherpa = sherpa_recognizer(bundle / "model.int8.onnx")
    ours = OnnxRecognizer(bundle / "model.int8.onnx")
    for path in dev_audio(trained):
        audio = load_audio(path)
        stream = sherpa.create_stream()
        stream.accept_waveform(16000, audio)
        sherpa.decode_stream(stream)
        assert stream.result.tokens == slimasr_tokens(ours, audio)
        assert " ".join(stream.result.text.split()) == ours.transcribe(audio) != ""
